//! Signed images: Ed25519 keys (`wasmvm key generate`), signing (`wasmvm pack --sign`) and
//! verification (`wasmvm run --verify`, `wasmvm inspect`). The trailer's byte layout is
//! `wasmvm_abi::signature_trailer`; this module is the cryptography around it, all of it from
//! `ed25519-dalek` (RFC 8032 Ed25519, keys as PKCS#8 and SPKI PEM, the formats OpenSSL
//! reads and writes).
//!
//! A key's *fingerprint* is the lower-case hex SHA-256 of its raw 32-byte public key, e.g.
//! `openssl pkey -pubin -in KEY.pub -outform DER | tail -c 32 | sha256sum`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::spki::der::zeroize::Zeroizing;
use ed25519_dalek::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, KeypairBytes,
};
use ed25519_dalek::{Signature, Signer as _};
pub use ed25519_dalek::{SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use thiserror::Error;
use wasmvm_abi::DecodeError;
use wasmvm_abi::signature_trailer::{PUBLIC_KEY_LEN, Trailer, split};

use crate::image::hex;

#[derive(Debug, Error)]
pub enum SigningError {
    #[error("{}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(transparent)]
    ImageFile(#[from] crate::image::file::ImageFileError),
    #[error("{} already exists: wasmvm never overwrites a key (choose another -o PREFIX)", .0.display())]
    KeyExists(PathBuf),
    #[error("{}: not an Ed25519 private key in PKCS#8 PEM ({why})", path.display())]
    BadPrivateKey { path: PathBuf, why: String },
    #[error("{}: not an Ed25519 public key in SPKI PEM ({why})", path.display())]
    BadPublicKey { path: PathBuf, why: String },
    #[error("cannot encode the private key: {0}")]
    Encode(String),
    #[error("the image is already signed")]
    AlreadySigned,
    #[error(
        "it is a WebAssembly module, not an image: there is no signature to verify (pack it with `wasmvm pack --sign KEY`, then run the image)"
    )]
    Module,
    #[error("the image is not signed (sign it with `wasmvm pack --sign KEY`)")]
    NotSigned,
    #[error("the image's signature trailer is corrupt ({0}): the image was changed after signing")]
    Corrupt(DecodeError),
    #[error("the image is signed by key {signer}, not by the trusted key {trusted}")]
    WrongKey { signer: String, trusted: String },
    #[error(
        "the image's signature does not match its contents: the image was changed after signing"
    )]
    Tampered,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> SigningError + '_ {
    move |cause| SigningError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

/// The fingerprint of a raw public key: lower-case hex SHA-256.
pub fn fingerprint(public_key: &[u8; PUBLIC_KEY_LEN]) -> String {
    hex(&Sha256::digest(public_key))
}

/// A fresh key from the operating system's CSPRNG (`getrandom`).
pub fn generate() -> SigningKey {
    SigningKey::generate(&mut rand_core::OsRng)
}

/// The private key as unencrypted PKCS#8 v1 PEM (`-----BEGIN PRIVATE KEY-----`), exactly as
/// `openssl genpkey -algorithm ed25519` writes it.
pub fn private_key_pem(key: &SigningKey) -> Result<Zeroizing<String>, SigningError> {
    let bytes = KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    };
    bytes
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| SigningError::Encode(e.to_string()))
}

/// The public key as SPKI PEM (`-----BEGIN PUBLIC KEY-----`), as `openssl pkey -pubout`
/// writes it.
pub fn public_key_pem(key: &VerifyingKey) -> String {
    key.to_public_key_pem(LineEnding::LF)
        .expect("an Ed25519 public key always encodes")
}

/// Where [`write_key_pair`] put the keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFiles {
    /// `PREFIX`: the private key, mode 0600.
    pub private: PathBuf,
    /// `PREFIX.pub`: the public key.
    pub public: PathBuf,
}

/// `PREFIX.pub`.
pub fn public_key_path(prefix: &Path) -> PathBuf {
    let mut p = prefix.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

/// Writes `key` as `prefix` (private, PKCS#8 PEM, mode 0600) and `prefix.pub` (public, SPKI
/// PEM). Never overwrites: an existing file of either name is an error, and nothing is
/// written then.
pub fn write_key_pair(key: &SigningKey, prefix: &Path) -> Result<KeyFiles, SigningError> {
    let files = KeyFiles {
        private: prefix.to_path_buf(),
        public: public_key_path(prefix),
    };
    for path in [&files.private, &files.public] {
        if path.symlink_metadata().is_ok() {
            return Err(SigningError::KeyExists(path.clone()));
        }
    }
    let private = private_key_pem(key)?;
    // `create_new` (O_EXCL) also closes the race with another writer, and refuses to follow
    // a symlink planted at the path.
    write_new(&files.private, private.as_bytes(), 0o600)?;
    if let Err(e) = write_new(
        &files.public,
        public_key_pem(&key.verifying_key()).as_bytes(),
        0o644,
    ) {
        // Only the private key we have just created goes: no half pair is left behind.
        let _ = std::fs::remove_file(&files.private);
        return Err(e);
    }
    Ok(files)
}

fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), SigningError> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => SigningError::KeyExists(path.to_path_buf()),
            _ => io_error(path)(e),
        })?;
    let written = file.write_all(data).and_then(|()| file.sync_all());
    if let Err(e) = written {
        drop(file);
        let _ = std::fs::remove_file(path);
        return Err(io_error(path)(e));
    }
    Ok(())
}

/// Reads a private key: PKCS#8 PEM (v1, or v2 with its public key), as written by
/// [`write_key_pair`] or `openssl genpkey -algorithm ed25519`.
pub fn read_signing_key(path: &Path) -> Result<SigningKey, SigningError> {
    let pem = std::fs::read_to_string(path).map_err(io_error(path))?;
    SigningKey::from_pkcs8_pem(&pem).map_err(|e| SigningError::BadPrivateKey {
        path: path.to_path_buf(),
        why: if pem.contains("PUBLIC KEY-----") {
            "this is a public key; signing needs the private key, PREFIX without .pub".into()
        } else {
            e.to_string()
        },
    })
}

/// Reads a public key: SPKI PEM, as written by [`write_key_pair`] or `openssl pkey -pubout`.
pub fn read_verifying_key(path: &Path) -> Result<VerifyingKey, SigningError> {
    let pem = std::fs::read_to_string(path).map_err(io_error(path))?;
    VerifyingKey::from_public_key_pem(&pem).map_err(|e| SigningError::BadPublicKey {
        path: path.to_path_buf(),
        why: if pem.contains("PRIVATE KEY-----") {
            "this is a private key; verifying takes the public key, PREFIX.pub".into()
        } else {
            e.to_string()
        },
    })
}

/// Signs an (unsigned) image: appends the trailer with an Ed25519 signature over the whole
/// image and the trailer's head (`wasmvm_abi::signature_trailer`). Deterministic, like packing: the
/// same image and key give the same bytes.
pub fn sign(mut image: Vec<u8>, key: &SigningKey) -> Result<Vec<u8>, SigningError> {
    if !matches!(split(&image), Ok(None)) {
        return Err(SigningError::AlreadySigned);
    }
    let head = Trailer::head(image.len() as u64, key.verifying_key().as_bytes());
    image.extend_from_slice(&head);
    let signature = key.sign(&image);
    image.extend_from_slice(&signature.to_bytes());
    Ok(image)
}

/// Checks that `file` (a whole image file) is signed by `trusted` and unchanged since: every
/// byte before the signature. Returns the image without its trailer.
pub fn verify<'a>(file: &'a [u8], trusted: &VerifyingKey) -> Result<&'a [u8], SigningError> {
    let signed = split(file)
        .map_err(SigningError::Corrupt)?
        .ok_or(SigningError::NotSigned)?;
    if signed.trailer.public_key != *trusted.as_bytes() {
        return Err(SigningError::WrongKey {
            signer: fingerprint(&signed.trailer.public_key),
            trusted: fingerprint(trusted.as_bytes()),
        });
    }
    // Strict: no small-order keys, no malleable (non-canonical) signatures.
    trusted
        .verify_strict(
            signed.signed,
            &Signature::from_bytes(&signed.trailer.signature),
        )
        .map_err(|_| SigningError::Tampered)?;
    Ok(signed.image)
}

/// Who signed an image, for `inspect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureInfo {
    pub public_key: [u8; PUBLIC_KEY_LEN],
    pub fingerprint: String,
    /// The signature matches the image and the key in the trailer. That says nothing about
    /// whether the key is one to trust: `run --verify` checks that.
    pub valid: bool,
}

/// The signer named in `file`'s trailer; `Ok(None)` for an unsigned image, an error for a
/// corrupt trailer.
pub fn signer(file: &[u8]) -> Result<Option<SignatureInfo>, SigningError> {
    let Some(signed) = split(file).map_err(SigningError::Corrupt)? else {
        return Ok(None);
    };
    let public_key = signed.trailer.public_key;
    let valid = VerifyingKey::from_bytes(&public_key).is_ok_and(|key| verify(file, &key).is_ok());
    Ok(Some(SignatureInfo {
        public_key,
        fingerprint: fingerprint(&public_key),
        valid,
    }))
}

/// `wasmvm run --verify`: reads the image at `path` once and verifies those bytes against
/// `trusted`; the caller writes them to a private temporary file (mode 0600, a fresh name
/// under `$TMPDIR`) and boots that instead of `path`.
///
/// Why a copy: the built-in VMM maps the image file, and a private mapping still shows later
/// writes to the file in pages not yet copied, QEMU reopens the file by name, and host mode
/// reads it again; verifying `path` and then booting `path` would leave a window in which
/// someone who may write `path` (but not our temporary file) swaps in other bytes. The copy
/// holds exactly the verified bytes, trailer included, and only this user (who could as well
/// change `wasmvm` itself) can change it.
pub fn verified_bytes(path: &Path, trusted: &VerifyingKey) -> Result<Vec<u8>, SigningError> {
    let bytes = crate::image::file::read(path)?;
    if bytes.starts_with(b"\0asm") {
        return Err(SigningError::Module);
    }
    verify(&bytes, trusted)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    /// Stands in for an image: signing does not look inside.
    fn image() -> Vec<u8> {
        (0..5000u32).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn signed_images_verify_and_tampering_is_caught() {
        let k = key(1);
        let signed = sign(image(), &k).unwrap();
        assert_eq!(signed.len(), 5000 + 120);
        assert_eq!(&signed[..5000], image().as_slice());
        assert_eq!(verify(&signed, &k.verifying_key()).unwrap(), image());
        // Deterministic.
        assert_eq!(sign(image(), &k).unwrap(), signed);

        // Any flipped byte before the signature (image, trailer head) or in it is refused.
        for at in [
            0, 2500, 4999, 5000, 5008, 5012, 5016, 5023, 5024, 5055, 5056, 5119,
        ] {
            let mut bad = signed.clone();
            bad[at] ^= 0x40;
            let e = verify(&bad, &k.verifying_key()).unwrap_err();
            let expected = match at {
                // The magic: no longer a signed image.
                5000 => matches!(e, SigningError::NotSigned),
                // Version, trailer length, image length.
                5008..5024 => matches!(e, SigningError::Corrupt(_)),
                // The key in the trailer.
                5024..5056 => matches!(e, SigningError::WrongKey { .. }),
                _ => matches!(e, SigningError::Tampered),
            };
            assert!(expected, "byte {at}: {e}");
        }
        assert!(matches!(
            verify(&signed[..5119], &k.verifying_key()),
            Err(SigningError::NotSigned)
        ));
        assert!(matches!(
            verify(&image(), &k.verifying_key()),
            Err(SigningError::NotSigned)
        ));
        let e = verify(&signed, &key(2).verifying_key()).unwrap_err();
        assert!(matches!(e, SigningError::WrongKey { .. }), "{e}");
        assert!(
            e.to_string()
                .contains(&fingerprint(k.verifying_key().as_bytes())),
            "{e}"
        );
        assert!(matches!(sign(signed, &k), Err(SigningError::AlreadySigned)));
    }

    #[test]
    fn inspect_sees_the_signer() {
        let k = key(3);
        let signed = sign(image(), &k).unwrap();
        let s = signer(&signed).unwrap().unwrap();
        assert_eq!(s.public_key, *k.verifying_key().as_bytes());
        assert_eq!(s.fingerprint.len(), 64);
        assert!(s.valid);
        let mut bad = signed.clone();
        bad[10] ^= 1;
        assert!(!signer(&bad).unwrap().unwrap().valid);
        assert_eq!(signer(&image()).unwrap(), None);
        bad[5016] ^= 1;
        assert!(matches!(signer(&bad), Err(SigningError::Corrupt(_))));
    }

    #[test]
    fn key_files_round_trip_and_are_never_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("k");
        let k = generate();
        let files = write_key_pair(&k, &prefix).unwrap();
        assert_eq!(files.public, dir.path().join("k.pub"));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&files.private), 0o600);
        let private = std::fs::read_to_string(&files.private).unwrap();
        assert!(
            private.starts_with("-----BEGIN PRIVATE KEY-----\n"),
            "{private}"
        );
        let public = std::fs::read_to_string(&files.public).unwrap();
        assert!(
            public.starts_with("-----BEGIN PUBLIC KEY-----\n"),
            "{public}"
        );
        assert_eq!(read_signing_key(&files.private).unwrap(), k);
        assert_eq!(
            read_verifying_key(&files.public).unwrap(),
            k.verifying_key()
        );

        // Either file existing refuses the whole pair, and changes nothing.
        let e = write_key_pair(&generate(), &prefix).unwrap_err();
        assert!(matches!(e, SigningError::KeyExists(_)), "{e}");
        assert_eq!(std::fs::read_to_string(&files.private).unwrap(), private);
        let other = dir.path().join("other");
        std::fs::write(public_key_path(&other), "x").unwrap();
        assert!(matches!(
            write_key_pair(&generate(), &other),
            Err(SigningError::KeyExists(_))
        ));
        assert!(!other.exists());

        // PKCS#8 v2 (with the public key, `ed25519-dalek`'s own encoding) is read too.
        let v2 = dir.path().join("v2.pem");
        std::fs::write(&v2, k.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes()).unwrap();
        assert_ne!(std::fs::read_to_string(&v2).unwrap(), private);
        assert_eq!(read_signing_key(&v2).unwrap(), k);

        // The wrong half of a pair is named as such.
        let e = read_signing_key(&files.public).unwrap_err().to_string();
        assert!(e.contains("this is a public key"), "{e}");
        let e = read_verifying_key(&files.private).unwrap_err().to_string();
        assert!(e.contains("this is a private key"), "{e}");
    }

    #[test]
    fn known_answer() {
        // RFC 8032 section 7.1, TEST 1: the empty message.
        let secret: [u8; 32] =
            hex_bytes("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
        let k = SigningKey::from_bytes(&secret);
        assert_eq!(
            hex(k.verifying_key().as_bytes()),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
        assert_eq!(
            hex(&k.sign(b"").to_bytes()),
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155\
             5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        );
    }

    fn hex_bytes<const N: usize>(s: &str) -> [u8; N] {
        core::array::from_fn(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
    }
}
