//! JSON bodies for the refusals actix-http sends before any handler runs: a
//! request it cannot parse (400), a head too large (431), a head that did
//! not arrive in time (408). actix-http writes those with an empty body and
//! offers no hook to change them, so the connection's writes pass through
//! [`JsonRefusals`], which replaces such a response, and nothing else, with
//! the same status and headers plus the API's error body.
//!
//! It is recognised by its bytes: a write that is one whole response head
//! with one of those statuses and `content-length: 0`, and nothing after
//! it. No answer of this API has an empty body with those statuses (every
//! refusal of a handler carries JSON), and none of its bodies can hold a
//! raw CR LF (JSON escapes them), so nothing else matches. A refusal that
//! follows a pipelined answer in the same write keeps its empty body.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The response actix-http's own refusal becomes, if `written` is one:
/// the same status line and headers, a JSON `content-type` and
/// `content-length`, and the body.
pub fn rewrite(written: &[u8]) -> Option<Vec<u8>> {
    // Cheap tests first: this sees every write of every connection.
    if written.len() > MAX_REFUSAL_HEAD || !written.ends_with(b"\r\n\r\n") {
        return None;
    }
    let status = written.strip_prefix(b"HTTP/1.1 ")?.get(..3)?;
    let (message, code) = match status {
        b"400" => ("the request could not be parsed as HTTP", "bad_request"),
        b"408" => ("the request head did not arrive in time", "request_timeout"),
        b"431" => (
            "the request head (line and headers) is too large",
            "headers_too_large",
        ),
        _ => return None,
    };
    let head = &written[..written.len() - 4];
    if find(head, b"\r\n\r\n").is_some() {
        // More than one head.
        return None;
    }
    let mut lines = head
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let status_line = lines.next()?;
    let mut empty = false;
    let mut others = Vec::new();
    for line in lines {
        let lower = line.to_ascii_lowercase();
        if lower.starts_with(b"content-length:") {
            empty = lower[b"content-length:".len()..].trim_ascii() == b"0";
            if !empty {
                return None;
            }
        } else if lower.starts_with(b"content-type:") {
            return None;
        } else {
            others.push(line);
        }
    }
    if !empty {
        return None;
    }
    let body = serde_json::json!({"error": message, "field": null, "code": code}).to_string();
    let mut out = Vec::with_capacity(written.len() + 64 + body.len());
    out.extend_from_slice(status_line);
    out.extend_from_slice(b"\r\ncontent-type: application/json\r\n");
    out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    for line in others {
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
    Some(out)
}

/// Longer than any head actix-http writes for its refusals (a status
/// line and three headers).
const MAX_REFUSAL_HEAD: usize = 512;

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A connection whose written refusals from actix-http get JSON bodies
/// ([`rewrite`]); reads pass through.
pub struct JsonRefusals<T> {
    io: T,
    /// A replacement being written, and how much of it has gone out. The
    /// write it replaces was reported written in full.
    pending: Option<(Vec<u8>, usize)>,
}

impl<T> JsonRefusals<T> {
    pub fn new(io: T) -> Self {
        JsonRefusals { io, pending: None }
    }
}

impl<T: AsyncWrite + Unpin> JsonRefusals<T> {
    /// Writes out what is pending; ready once nothing is.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, sent)) = &mut self.pending {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &bytes[*sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *sent += n;
            if *sent == bytes.len() {
                self.pending = None;
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonRefusals<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JsonRefusals<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        if let Some(replacement) = rewrite(buf) {
            this.pending = Some((replacement, 0));
            // Taken: what is left goes out on the next write or flush.
            if let Poll::Ready(Err(e)) = this.poll_pending(cx) {
                return Poll::Ready(Err(e));
            }
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REFUSAL: &[u8] =
        b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\ndate: Tue, 01 Dec 2026 14:29:48 GMT\r\n\r\n";

    #[test]
    fn an_empty_refusal_gets_a_json_body_and_keeps_its_headers() {
        let out = String::from_utf8(rewrite(REFUSAL).expect("rewritten")).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
        assert!(
            head.contains("\r\ncontent-type: application/json\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
        assert!(head.contains("\r\ndate: "), "{head}");
        assert!(head.contains(&format!("\r\ncontent-length: {}\r\n", body.len())));
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["code"], "bad_request");
        for (status, code) in [
            ("408 Request Timeout", "request_timeout"),
            ("431 Request Header Fields Too Large", "headers_too_large"),
        ] {
            let refusal = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
            let out = String::from_utf8(rewrite(refusal.as_bytes()).unwrap()).unwrap();
            assert!(out.contains(&format!("\"code\":\"{code}\"")), "{out}");
        }
    }

    #[test]
    fn nothing_else_is_touched() {
        for written in [
            // The API's own refusals carry JSON already.
            &b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\ncontent-type: application/json\r\n\r\n{\"error\":1}\n"[..],
            // A HEAD answer: a length, no body.
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 57\r\n\r\n",
            // Other statuses, empty.
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            // More than one head in the write, or a partial one.
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\nHTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n",
            // A body.
            b"{\"HTTP/1.1 400 Bad Request\": 1}",
        ] {
            assert!(rewrite(written).is_none(), "{}", String::from_utf8_lossy(written));
        }
    }

    #[tokio::test]
    async fn a_refusal_written_through_a_slow_socket_arrives_whole() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // A pipe that takes 7 bytes at a time.
        let (client, server) = tokio::io::duplex(7);
        let mut writer = JsonRefusals::new(server);
        let expected = rewrite(REFUSAL).unwrap();
        let reader = tokio::spawn(async move {
            let mut client = client;
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        });
        writer.write_all(REFUSAL).await.unwrap();
        writer.shutdown().await.unwrap();
        drop(writer);
        assert_eq!(reader.await.unwrap(), expected);
    }
}
