//! Signed images: the trailer `wasmvm pack --sign` appends to an image.
//!
//! The trailer is the last [`TRAILER_LEN`] bytes of the file, after everything the image
//! holds. No program header points at it, so ELF and PVH loaders (QEMU `-kernel`, the
//! built-in VMM, host mode) never look at it, and the unsigned image is the same file
//! without it.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `WASMVMS\0` |
//! | 8 | 4 | [`ABI_VERSION`](crate::ABI_VERSION) |
//! | 12 | 4 | trailer length (120) |
//! | 16 | 8 | image length `L`: the bytes before the trailer (its file offset) |
//! | 24 | 32 | the signer's Ed25519 public key (RFC 8032 encoding) |
//! | 56 | 64 | Ed25519 signature (RFC 8032, pure Ed25519) |
//!
//! The signature covers every byte of the file before it: the whole image (kernel, bundle,
//! program headers) and the trailer's first [`SIGNED_HEAD_LEN`] bytes (magic, version,
//! lengths and public key), i.e. `file[..L + 56]`. A file is `L + 120` bytes long.
//!
//! This module is the layout only; the cryptography lives on the host (`wasmvm_loader`).

use crate::{ABI_VERSION, DecodeError, le_u32, le_u64};

pub const SIGNATURE_MAGIC: [u8; 8] = *b"WASMVMS\0";
/// Length of the whole trailer.
pub const TRAILER_LEN: usize = 120;
/// Length of an Ed25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// The trailer's bytes before the signature, which the signature covers with the image.
pub const SIGNED_HEAD_LEN: usize = TRAILER_LEN - SIGNATURE_LEN;

/// A decoded trailer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    /// Bytes of the image before the trailer.
    pub image_len: u64,
    pub public_key: [u8; PUBLIC_KEY_LEN],
    pub signature: [u8; SIGNATURE_LEN],
}

impl Trailer {
    /// The trailer's first [`SIGNED_HEAD_LEN`] bytes for an image of `image_len` bytes
    /// signed by `public_key`: a signer appends them to the image, signs the result and
    /// appends the signature.
    pub fn head(image_len: u64, public_key: &[u8; PUBLIC_KEY_LEN]) -> [u8; SIGNED_HEAD_LEN] {
        let mut b = [0u8; SIGNED_HEAD_LEN];
        b[..8].copy_from_slice(&SIGNATURE_MAGIC);
        b[8..12].copy_from_slice(&ABI_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(TRAILER_LEN as u32).to_le_bytes());
        b[16..24].copy_from_slice(&image_len.to_le_bytes());
        b[24..56].copy_from_slice(public_key);
        b
    }

    pub fn encode(&self) -> [u8; TRAILER_LEN] {
        let mut b = [0u8; TRAILER_LEN];
        b[..SIGNED_HEAD_LEN].copy_from_slice(&Self::head(self.image_len, &self.public_key));
        b[SIGNED_HEAD_LEN..].copy_from_slice(&self.signature);
        b
    }

    /// Decodes the trailer at the start of `bytes` (exactly [`TRAILER_LEN`] of them are read).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let bytes = bytes.get(..TRAILER_LEN).ok_or(DecodeError::Truncated)?;
        if bytes[..8] != SIGNATURE_MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let version = le_u32(bytes, 8)?;
        if version != ABI_VERSION {
            return Err(DecodeError::VersionMismatch { found: version });
        }
        if le_u32(bytes, 12)? as usize != TRAILER_LEN {
            return Err(DecodeError::Malformed("signature trailer length"));
        }
        let mut public_key = [0u8; PUBLIC_KEY_LEN];
        public_key.copy_from_slice(&bytes[24..SIGNED_HEAD_LEN]);
        let mut signature = [0u8; SIGNATURE_LEN];
        signature.copy_from_slice(&bytes[SIGNED_HEAD_LEN..]);
        Ok(Trailer {
            image_len: le_u64(bytes, 16)?,
            public_key,
            signature,
        })
    }
}

/// A signed file, split at its trailer.
#[derive(Debug, Clone, Copy)]
pub struct Signed<'a> {
    pub trailer: Trailer,
    /// The image: the file before the trailer.
    pub image: &'a [u8],
    /// What the signature covers: the image and the trailer's head.
    pub signed: &'a [u8],
}

/// Splits a whole image file at its signature trailer. `Ok(None)`: the file does not end
/// with a trailer (an unsigned image). An error: it ends with one that is malformed or does
/// not match the file's length (the file was truncated or extended after signing).
pub fn split(file: &[u8]) -> Result<Option<Signed<'_>>, DecodeError> {
    let Some(at) = file.len().checked_sub(TRAILER_LEN) else {
        return Ok(None);
    };
    if file[at..at + 8] != SIGNATURE_MAGIC {
        return Ok(None);
    }
    let trailer = Trailer::decode(&file[at..])?;
    if trailer.image_len != at as u64 {
        return Err(DecodeError::Malformed(
            "the signature trailer's image length does not match the file",
        ));
    }
    Ok(Some(Signed {
        trailer,
        image: &file[..at],
        signed: &file[..at + SIGNED_HEAD_LEN],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trailer(image_len: u64) -> Trailer {
        Trailer {
            image_len,
            public_key: core::array::from_fn(|i| i as u8),
            signature: core::array::from_fn(|i| 0x80 | i as u8),
        }
    }

    #[test]
    fn trailer_layout_round_trips() {
        let t = trailer(0x1234_5678_9abc);
        let b = t.encode();
        assert_eq!(b.len(), 120);
        assert_eq!(&b[..8], b"WASMVMS\0");
        assert_eq!(b[8..12], ABI_VERSION.to_le_bytes());
        assert_eq!(b[12..16], 120u32.to_le_bytes());
        assert_eq!(b[16..24], 0x1234_5678_9abcu64.to_le_bytes());
        assert_eq!(b[24..56], t.public_key);
        assert_eq!(b[56..120], t.signature);
        assert_eq!(
            b[..SIGNED_HEAD_LEN],
            Trailer::head(t.image_len, &t.public_key)
        );
        assert_eq!(Trailer::decode(&b), Ok(t));
    }

    #[test]
    fn bad_trailers_are_refused() {
        let good = trailer(8).encode();
        assert_eq!(Trailer::decode(&good[..119]), Err(DecodeError::Truncated));
        let mut b = good;
        b[0] ^= 1;
        assert_eq!(Trailer::decode(&b), Err(DecodeError::BadMagic));
        let mut b = good;
        b[8] = 9;
        assert_eq!(
            Trailer::decode(&b),
            Err(DecodeError::VersionMismatch { found: 9 })
        );
        let mut b = good;
        b[12] = 121;
        assert!(matches!(
            Trailer::decode(&b),
            Err(DecodeError::Malformed(_))
        ));
    }

    /// A 40-byte image followed by its trailer (tests are alloc-free, like this module).
    fn signed_file() -> [u8; 40 + TRAILER_LEN] {
        let mut file = [7u8; 40 + TRAILER_LEN];
        file[40..].copy_from_slice(&trailer(40).encode());
        file
    }

    #[test]
    fn files_split_at_their_trailer() {
        let file = signed_file();
        let s = split(&file).unwrap().unwrap();
        assert_eq!(s.image, &[7u8; 40]);
        assert_eq!(s.signed.len(), 40 + SIGNED_HEAD_LEN);
        assert_eq!(s.signed, &file[..40 + 56]);
        assert_eq!(s.trailer, trailer(40));

        // No trailer: unsigned (short files too).
        assert!(split(&file[..40]).unwrap().is_none());
        assert!(split(&[]).unwrap().is_none());
        assert!(split(&file[..file.len() - 1]).unwrap().is_none());

        // A trailer whose image length is not its offset: the file was cut or extended.
        let mut longer = [0u8; 41 + TRAILER_LEN];
        longer[1..].copy_from_slice(&file);
        assert!(matches!(split(&longer), Err(DecodeError::Malformed(_))));
        assert!(matches!(split(&file[1..]), Err(DecodeError::Malformed(_))));
        let mut lying = file;
        lying[40 + 16] ^= 1;
        assert!(matches!(split(&lying), Err(DecodeError::Malformed(_))));
        let mut version = file;
        version[40 + 8] = 99;
        assert!(matches!(
            split(&version),
            Err(DecodeError::VersionMismatch { found: 99 })
        ));
    }
}
