//! Identity and transport security between members (issue 5, first part).
//!
//! - `keys.rs`: a node's key pair and self-signed certificate, made at
//!   first start (`node.key` mode 0600, `node.crt`); its fingerprint is the
//!   SHA-256 of the SubjectPublicKeyInfo.
//! - `tls.rs`: mutual TLS with pinned fingerprints (no CA), the accept loop
//!   with its pre-authentication bounds, revocation of live connections,
//!   and the connector for outgoing channels.
//! - `der.rs`: the few DER steps that find a certificate's public key.
//!
//! Not wired into the node yet: inter-node traffic is still plaintext, and
//! join tokens, `granary node remove` and `--insecure-cluster` are to come.

mod der;
pub mod keys;
pub mod tls;
pub mod tokens;

pub use keys::{Fingerprint, NodeKeys};
pub use tls::{Admission, Limits, PeerConnection, PeerIdentity, Trust};
