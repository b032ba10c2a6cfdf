//! Just enough DER to find a certificate's SubjectPublicKeyInfo: the
//! fingerprint of a node is the SHA-256 of that structure, so a node keeps
//! its identity as long as it keeps its key, whatever certificate it
//! wraps the key in.
//!
//! Bounded: it reads only the lengths and tags of the outer structure of
//! a certificate a peer presented, and refuses anything malformed.

/// One DER element: its tag, and where its content starts and ends.
struct Element {
    tag: u8,
    start: usize,
    content: usize,
    end: usize,
}

fn element(der: &[u8], at: usize) -> Option<Element> {
    let tag = *der.get(at)?;
    let first = *der.get(at + 1)?;
    let (length, content) = if first < 0x80 {
        (usize::from(first), at + 2)
    } else {
        let bytes = usize::from(first & 0x7f);
        if bytes == 0 || bytes > 4 {
            return None;
        }
        let mut length = 0usize;
        for i in 0..bytes {
            length = (length << 8) | usize::from(*der.get(at + 2 + i)?);
        }
        (length, at + 2 + bytes)
    };
    let end = content.checked_add(length)?;
    (end <= der.len()).then_some(Element {
        tag,
        start: at,
        content,
        end,
    })
}

const SEQUENCE: u8 = 0x30;
/// `[0] EXPLICIT`: the certificate's version.
const VERSION: u8 = 0xa0;

/// The DER of the SubjectPublicKeyInfo of an X.509 certificate, or `None`
/// if `certificate` is not one.
pub fn subject_public_key_info(certificate: &[u8]) -> Option<&[u8]> {
    let outer = element(certificate, 0)?;
    if outer.tag != SEQUENCE || outer.end != certificate.len() {
        return None;
    }
    let tbs = element(certificate, outer.content)?;
    if tbs.tag != SEQUENCE {
        return None;
    }
    // version (optional), serialNumber, signature, issuer, validity,
    // subject, subjectPublicKeyInfo.
    let mut at = tbs.content;
    let first = element(certificate, at)?;
    if first.tag == VERSION {
        at = first.end;
    }
    for _ in 0..5 {
        at = element(certificate, at)?.end;
        if at > tbs.end {
            return None;
        }
    }
    let spki = element(certificate, at)?;
    (spki.tag == SEQUENCE && spki.end <= tbs.end).then(|| &certificate[spki.start..spki.end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_not_a_certificate() {
        assert_eq!(subject_public_key_info(b""), None);
        assert_eq!(subject_public_key_info(b"\x30\x84\xff\xff\xff\xff"), None);
        assert_eq!(subject_public_key_info(b"\x30\x03\x30\x01\x00"), None);
        assert_eq!(subject_public_key_info(&[0x30; 64]), None);
    }
}
