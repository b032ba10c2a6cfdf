//! A node's key pair and self-signed certificate, made at first start and
//! kept in its data directory (`node.key`, mode 0600, and `node.crt`).
//! Its fingerprint, the SHA-256 of the SubjectPublicKeyInfo, is what other
//! nodes pin: a node is its key.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::Context;
use rcgen::PublicKeyData;
use sha2::{Digest, Sha256};

use super::der;

const KEY_FILE: &str = "node.key";
const CERT_FILE: &str = "node.crt";

/// SHA-256 of a SubjectPublicKeyInfo, shown as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    pub fn of_public_key(spki_der: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(spki_der).into())
    }

    /// The fingerprint of the key in an X.509 certificate, or `None` if
    /// the bytes are not a certificate.
    pub fn of_certificate(certificate_der: &[u8]) -> Option<Fingerprint> {
        der::subject_public_key_info(certificate_der).map(Fingerprint::of_public_key)
    }
}

impl fmt::Display for Fingerprint {
    /// Lower-case hex, written at once (a forwarded call names its link by
    /// it: one `write!` per byte was a measurable part of the call).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = [0u8; 64];
        for (pair, byte) in text.chunks_exact_mut(2).zip(self.0) {
            pair[0] = HEX[usize::from(byte >> 4)];
            pair[1] = HEX[usize::from(byte & 0x0f)];
        }
        f.write_str(std::str::from_utf8(&text).expect("hex is ASCII"))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl FromStr for Fingerprint {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("a fingerprint is 64 hex digits (SHA-256)".into());
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
                .map_err(|_| "a fingerprint is 64 hex digits (SHA-256)".to_owned())?;
        }
        Ok(Fingerprint(bytes))
    }
}

/// This node's key pair and certificate.
pub struct NodeKeys {
    /// PKCS#8 DER of the private key.
    pub key_der: Vec<u8>,
    /// DER of the self-signed certificate.
    pub certificate_der: Vec<u8>,
    pub fingerprint: Fingerprint,
}

impl NodeKeys {
    /// Reads an existing key (and certificate) from `data_dir`; an error
    /// if there is none (for tools that act as an existing node).
    pub fn load(data_dir: &Path) -> anyhow::Result<NodeKeys> {
        if !data_dir.join(KEY_FILE).exists() {
            anyhow::bail!(
                "no node key in {}: give the data directory of a member (--data-dir)",
                data_dir.display()
            );
        }
        Self::load_or_create(data_dir)
    }

    /// Reads the key (and certificate) from `data_dir`, making them on
    /// first start. A missing certificate is made again from the key: the
    /// identity is the key.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<NodeKeys> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
        let key_path = data_dir.join(KEY_FILE);
        let cert_path = data_dir.join(CERT_FILE);
        let key_pair = match std::fs::read_to_string(&key_path) {
            Ok(pem) => rcgen::KeyPair::from_pem(&pem).with_context(|| {
                format!(
                    "{} does not hold a private key; restore it (or remove it to give this node a new identity)",
                    key_path.display()
                )
            })?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let key_pair = rcgen::KeyPair::generate().context("cannot make a key pair")?;
                write_private(&key_path, key_pair.serialize_pem().as_bytes())?;
                let _ = std::fs::remove_file(&cert_path);
                key_pair
            }
            Err(err) => {
                return Err(err).with_context(|| format!("cannot read {}", key_path.display()));
            }
        };
        let fingerprint = Fingerprint::of_public_key(&key_pair.subject_public_key_info());
        let certificate_der = match read_certificate(&cert_path) {
            Some(der) if Fingerprint::of_certificate(&der) == Some(fingerprint) => der,
            _ => {
                let params = rcgen::CertificateParams::new(vec!["granary-node".to_owned()])
                    .context("cannot describe the certificate")?;
                let certificate = params
                    .self_signed(&key_pair)
                    .context("cannot sign the certificate")?;
                write_file(&cert_path, certificate.pem().as_bytes(), 0o644)?;
                certificate.der().to_vec()
            }
        };
        Ok(NodeKeys {
            key_der: key_pair.serialize_der(),
            certificate_der,
            fingerprint,
        })
    }
}

fn read_certificate(path: &PathBuf) -> Option<Vec<u8>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_file(path)
        .ok()
        .map(|der| der.to_vec())
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    write_file(path, bytes, 0o600)
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename) with
/// the given permissions from the start.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restarted_node_keeps_its_key_and_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let first = NodeKeys::load_or_create(dir.path()).unwrap();
        let again = NodeKeys::load_or_create(dir.path()).unwrap();
        assert_eq!(first.fingerprint, again.fingerprint);
        assert_eq!(first.key_der, again.key_der);
        assert_eq!(
            Fingerprint::of_certificate(&again.certificate_der),
            Some(first.fingerprint)
        );
        // The certificate is only a wrapper: made again, same identity.
        std::fs::remove_file(dir.path().join(CERT_FILE)).unwrap();
        let rewrapped = NodeKeys::load_or_create(dir.path()).unwrap();
        assert_eq!(rewrapped.fingerprint, first.fingerprint);
    }

    #[cfg(unix)]
    #[test]
    fn the_private_key_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        NodeKeys::load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn two_nodes_have_two_identities() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        assert_ne!(
            NodeKeys::load_or_create(a.path()).unwrap().fingerprint,
            NodeKeys::load_or_create(b.path()).unwrap().fingerprint
        );
    }

    #[test]
    fn fingerprints_read_back_from_text() {
        let dir = tempfile::tempdir().unwrap();
        let fingerprint = NodeKeys::load_or_create(dir.path()).unwrap().fingerprint;
        assert_eq!(fingerprint.to_string().parse(), Ok(fingerprint));
        // Lower-case hex, two digits a byte, as `sha256sum` prints it.
        let known = Fingerprint(std::array::from_fn(|i| (i * 7 + 3) as u8));
        let expected: String = (0..32).map(|i| format!("{:02x}", i * 7 + 3)).collect();
        assert_eq!(known.to_string(), expected);
        assert!("abc".parse::<Fingerprint>().is_err());
        assert!("zz".repeat(32).parse::<Fingerprint>().is_err());
    }

    #[test]
    fn a_damaged_key_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(KEY_FILE), "garbage").unwrap();
        let err = NodeKeys::load_or_create(dir.path())
            .err()
            .expect("an error");
        assert!(format!("{err:#}").contains("node.key"), "{err:#}");
    }
}
