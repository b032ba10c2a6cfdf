//! Join tokens. A member makes one (`granary token create`): a random
//! secret, an expiry, and the fingerprints of the members to pin. The
//! member keeps only the SHA-256 of the secret and the expiry, in
//! `<data_dir>/tokens.json`; a joining node pins the member's key from the
//! token before it sends anything, then presents the secret, which the
//! member compares in constant time.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::keys::Fingerprint;

const FILE: &str = "tokens.json";
/// The token's text starts with this (and a version).
const PREFIX: &str = "granary1";
/// Most tokens a member keeps (expired ones are dropped first).
const MAX_TOKENS: usize = 1_000;

/// A token as a joining node holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub secret: String,
    pub expires_unix: u64,
    pub members: Vec<Fingerprint>,
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let members: Vec<String> = self.members.iter().map(ToString::to_string).collect();
        write!(
            f,
            "{PREFIX}:{}:{}:{}",
            self.secret,
            self.expires_unix,
            members.join(",")
        )
    }
}

impl std::str::FromStr for JoinToken {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || "not a join token (granary1:SECRET:EXPIRY:FINGERPRINTS)".to_owned();
        let mut parts = text.trim().split(':');
        if parts.next() != Some(PREFIX) {
            return Err(bad());
        }
        let secret = parts.next().ok_or_else(bad)?;
        if secret.len() != 64 || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let expires_unix = parts.next().and_then(|e| e.parse().ok()).ok_or_else(bad)?;
        let members = parts
            .next()
            .ok_or_else(bad)?
            .split(',')
            .map(|f| f.parse::<Fingerprint>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| bad())?;
        if members.is_empty() || parts.next().is_some() {
            return Err(bad());
        }
        Ok(JoinToken {
            secret: secret.to_owned(),
            expires_unix,
            members,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    /// SHA-256 of the secret, hex.
    hash: String,
    expires_unix: u64,
    /// Admits one node only: the first whose key presents it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    single_use: bool,
    /// The key a single-use token was first presented by (it may present
    /// it again: a joiner asks until the config admitting it arrives).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    used_by: Option<String>,
}

/// The tokens a member made: only hashes and expiries.
pub struct Tokens {
    path: PathBuf,
    entries: Mutex<Vec<Entry>>,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn hash(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Compares without an early exit, so the time taken says nothing about
/// how much matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Tokens {
    pub fn open(data_dir: &Path) -> anyhow::Result<Tokens> {
        let path = data_dir.join(FILE);
        let entries = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is damaged", path.display()))?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
        };
        Ok(Tokens {
            path,
            entries: Mutex::new(entries),
        })
    }

    /// Makes a token valid for `ttl_seconds`, pinning `members`; with
    /// `single_use`, it admits the first node that presents it only.
    pub fn create(
        &self,
        ttl_seconds: u64,
        members: Vec<Fingerprint>,
        single_use: bool,
    ) -> anyhow::Result<JoinToken> {
        // 32 random bytes from the operating system's generator (two v4
        // UUIDs: 244 random bits).
        let secret: String = [uuid::Uuid::new_v4(), uuid::Uuid::new_v4()]
            .iter()
            .flat_map(|u| *u.as_bytes())
            .map(|b| format!("{b:02x}"))
            .collect();
        let expires_unix = now_unix().saturating_add(ttl_seconds);
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let now = now_unix();
        entries.retain(|e| e.expires_unix > now);
        if entries.len() >= MAX_TOKENS {
            anyhow::bail!("{MAX_TOKENS} tokens are still valid; let some expire first");
        }
        entries.push(Entry {
            hash: hash(&secret),
            expires_unix,
            single_use,
            used_by: None,
        });
        self.save(&entries)?;
        Ok(JoinToken {
            secret,
            expires_unix,
            members,
        })
    }

    /// Whether `secret` belongs to a token this member made that has not
    /// expired and, if it is single-use, was not presented by another key
    /// than `presenter`'s (the first presenter is recorded on disk before
    /// the answer). Every stored hash is compared, in constant time.
    pub fn verify(&self, secret: &str, presenter: &Fingerprint) -> bool {
        let presented = hash(secret);
        let now = now_unix();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let found = entries
            .iter()
            .enumerate()
            .fold(None, |found, (index, entry)| {
                let matches = constant_time_eq(entry.hash.as_bytes(), presented.as_bytes());
                if matches & (entry.expires_unix > now) {
                    Some(index)
                } else {
                    found
                }
            });
        let Some(index) = found else {
            return false;
        };
        let presenter = presenter.to_string();
        let entry = &mut entries[index];
        if !entry.single_use {
            return true;
        }
        match &entry.used_by {
            Some(first) => *first == presenter,
            None => {
                entry.used_by = Some(presenter);
                // Not recorded, not admitted: a restart must not let a
                // second key use the token.
                let recorded = self.save(&entries);
                if let Err(err) = &recorded {
                    tracing::error!(error = %format!("{err:#}"), "cannot record a single-use token's use");
                    entries[index].used_by = None;
                }
                recorded.is_ok()
            }
        }
    }

    fn save(&self, entries: &[Entry]) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec_pretty(entries)?;
        let tmp = self.path.with_extension("tmp");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::io::Write::write_all(&mut file, &bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("cannot write {}", self.path.display()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fingerprint(byte: u8) -> Fingerprint {
        Fingerprint([byte; 32])
    }

    #[test]
    fn a_token_reads_back_from_its_text_and_verifies_where_it_was_made() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = Tokens::open(dir.path()).unwrap();
        let token = tokens
            .create(3600, vec![fingerprint(1), fingerprint(2)], false)
            .unwrap();
        let parsed: JoinToken = token.to_string().parse().unwrap();
        assert_eq!(parsed, token);
        assert!(tokens.verify(&token.secret, &fingerprint(7)));
        // Kept across a restart, as a hash only; any number of nodes.
        let again = Tokens::open(dir.path()).unwrap();
        assert!(again.verify(&token.secret, &fingerprint(8)));
        let stored = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
        assert!(
            !stored.contains(&token.secret),
            "the secret itself is stored"
        );
    }

    #[test]
    fn wrong_and_expired_secrets_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = Tokens::open(dir.path()).unwrap();
        let token = tokens.create(3600, vec![fingerprint(1)], false).unwrap();
        let mut wrong = token.secret.clone();
        wrong.replace_range(0..1, if wrong.starts_with('0') { "1" } else { "0" });
        let joiner = fingerprint(7);
        assert!(!tokens.verify(&wrong, &joiner));
        assert!(!tokens.verify("", &joiner));
        let expired = tokens.create(0, vec![fingerprint(1)], true).unwrap();
        assert!(!tokens.verify(&expired.secret, &joiner));
    }

    #[test]
    fn a_single_use_token_admits_the_first_key_only_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = Tokens::open(dir.path()).unwrap();
        let token = tokens.create(3600, vec![fingerprint(1)], true).unwrap();
        let (first, second) = (fingerprint(7), fingerprint(8));
        assert!(tokens.verify(&token.secret, &first));
        // The first node asks again until it is admitted: still good.
        assert!(tokens.verify(&token.secret, &first));
        assert!(!tokens.verify(&token.secret, &second));
        // The use is on disk.
        let again = Tokens::open(dir.path()).unwrap();
        assert!(!again.verify(&token.secret, &second));
        assert!(again.verify(&token.secret, &first));
        // Other tokens are untouched.
        let other = again.create(3600, vec![fingerprint(1)], true).unwrap();
        assert!(again.verify(&other.secret, &second));
    }

    #[test]
    fn malformed_token_text_is_refused() {
        for text in [
            "",
            "granary1",
            "granary1:abc:1:00",
            "other:..",
            &format!("granary1:{}:x:{}", "a".repeat(64), "b".repeat(64)),
        ] {
            assert!(text.parse::<JoinToken>().is_err(), "{text:?}");
        }
    }
}
