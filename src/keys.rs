//! Signed images on the command line: `wasmvm key generate`, `pack --sign`, `run --verify`
//! and the signature line of `inspect`. The work is `wasmvm_loader::image::signing`.

use std::path::Path;

use anyhow::{Context, Result};
use wasmvm_loader::image::hex;
use wasmvm_loader::image::signing::{self, SigningKey};

/// `wasmvm key generate [-o PREFIX]`.
pub fn generate(prefix: &Path) -> Result<i32> {
    let key = signing::generate();
    let files = signing::write_key_pair(&key, prefix).context("cannot generate a key")?;
    println!(
        "private key: {} (keep it secret; `wasmvm pack --sign` takes it)",
        files.private.display()
    );
    println!(
        "public key:  {} (`wasmvm run --verify` takes it)",
        files.public.display()
    );
    println!(
        "fingerprint: {}",
        signing::fingerprint(key.verifying_key().as_bytes())
    );
    Ok(0)
}

/// `pack --sign KEY`: the key, read before anything is packed.
pub fn signing_key(path: Option<&Path>) -> Result<Option<SigningKey>> {
    path.map(|p| signing::read_signing_key(p).context("--sign"))
        .transpose()
}

/// Signs freshly packed image bytes when `pack --sign` was given.
pub fn sign_if(image: Vec<u8>, key: Option<&SigningKey>) -> Result<Vec<u8>> {
    match key {
        Some(key) => Ok(signing::sign(image, key).context("cannot sign the image")?),
        None => Ok(image),
    }
}

/// `run --verify PUBKEY TARGET`: a private copy of TARGET's bytes, verified against PUBKEY,
/// which `run` boots instead of TARGET (see `signing::verified_bytes` for why a copy), and
/// the guard that removes it if a signal ends the command.
pub fn verified_image(
    target: &Path,
    pubkey: &Path,
) -> Result<(tempfile::NamedTempFile, crate::signals::Temporary)> {
    let trusted = signing::read_verifying_key(pubkey).context("--verify")?;
    let bytes = signing::verified_bytes(target, &trusted)
        .with_context(|| format!("refusing to run {}", target.display()))?;
    crate::signals::temporary_file("wasmvm-verified-", &bytes, "the verified copy")
}

/// The signature of an image file for `inspect`: its JSON value (`null` when unsigned) and
/// its text line.
pub fn describe_signature(file: &[u8]) -> (serde_json::Value, String) {
    match signing::signer(file) {
        Ok(None) => (serde_json::Value::Null, "none".to_string()),
        Ok(Some(s)) => (
            serde_json::json!({
                "algorithm": "ed25519",
                "key_fingerprint": s.fingerprint,
                "public_key": hex(&s.public_key),
                "valid": s.valid,
            }),
            format!(
                "ed25519, key {} ({})",
                s.fingerprint,
                if s.valid {
                    "valid"
                } else {
                    "INVALID: the image was changed after signing"
                }
            ),
        ),
        Err(e) => (
            serde_json::json!({
                "algorithm": "ed25519",
                "key_fingerprint": null,
                "public_key": null,
                "valid": false,
                "problem": e.to_string(),
            }),
            format!("INVALID: {e}"),
        ),
    }
}
