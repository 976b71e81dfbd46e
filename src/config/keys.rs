//! Ed25519 keys named in config files: the control plane's signing key (`signing_key`, PKCS#8
//! PEM, as `openssl genpkey -algorithm ed25519` writes it) and the public keys a node verifies
//! snapshots with (`control.verify_keys`, SPKI PEM, as `openssl pkey -pubout` writes it).

use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey};
pub use ed25519_dalek::{SigningKey, VerifyingKey};
use std::path::Path;

/// Read a private key (PKCS#8 PEM); the error says what is wrong, without the key.
pub fn read_signing_key(path: &Path) -> Result<SigningKey, String> {
    let text = read_pem(path)?;
    SigningKey::from_pkcs8_pem(&text).map_err(|e| {
        format!(
            "{}: not an Ed25519 private key in PKCS#8 PEM ({e})",
            path.display()
        )
    })
}

/// Read a public key (SPKI PEM, `-----BEGIN PUBLIC KEY-----`).
pub fn read_verifying_key(path: &Path) -> Result<VerifyingKey, String> {
    let text = read_pem(path)?;
    VerifyingKey::from_public_key_pem(&text)
        .map_err(|e| format!("{}: not an Ed25519 public key in PEM ({e})", path.display()))
}

fn read_pem(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::pkcs8::{spki::der::pem::LineEnding, EncodePrivateKey, EncodePublicKey};

    #[test]
    fn the_demo_pair_made_by_openssl_reads_and_matches() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/control");
        let private = read_signing_key(&dir.join("dev-signing.key")).unwrap();
        let public = read_verifying_key(&dir.join("dev-signing.pub")).unwrap();
        assert_eq!(private.verifying_key(), public);
    }

    #[test]
    fn keys_read_from_pem_and_garbage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let private = dir.path().join("sign.pem");
        let public = dir.path().join("verify.pem");
        std::fs::write(
            &private,
            key.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes(),
        )
        .unwrap();
        std::fs::write(
            &public,
            key.verifying_key()
                .to_public_key_pem(LineEnding::LF)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            read_signing_key(&private).unwrap().to_bytes(),
            key.to_bytes()
        );
        assert_eq!(read_verifying_key(&public).unwrap(), key.verifying_key());
        let e = read_verifying_key(&private).unwrap_err();
        assert!(e.contains("not an Ed25519 public key"), "{e}");
        let e = read_signing_key(&public).unwrap_err();
        assert!(e.contains("not an Ed25519 private key"), "{e}");
        assert!(!e.contains("BEGIN"), "no key material in errors: {e}");
        let e = read_signing_key(&dir.path().join("none.pem")).unwrap_err();
        assert!(e.contains("none.pem"), "{e}");
    }
}
