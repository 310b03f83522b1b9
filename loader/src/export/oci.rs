//! OCI images: a packed image as an OCI image layout, in one tarball (`wasmvm image export
//! --format oci`), for registries and containerd (`ctr images import`, `skopeo copy
//! oci-archive:...`).
//!
//! The image is one ordinary tar layer holding the packed image as `/app.img` (signed if it
//! was: the bytes are unchanged), with `/app.img` as the entrypoint, for the platform
//! `wasip1/wasm`. A raw-blob layer would be smaller, but containerd 1.6 refuses to run an
//! image whose layers are not archives ("mismatched image rootfs and manifest layers").
//!
//! Everything is deterministic: tar headers carry no time, owner or user name, JSON keys come
//! in a fixed order and no creation time is recorded, so the same image always gives the
//! same digests (a registry then stores it once, and a rebuild can be checked bit for bit).

use sha2::{Digest, Sha256};
use std::io;

/// Where the packed image sits in the container's filesystem, and its entrypoint.
pub const IMAGE_PATH: &str = "app.img";
pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// A blob: its bytes and digest (`sha256:HEX`).
struct Blob {
    bytes: Vec<u8>,
    digest: String,
}

impl Blob {
    fn new(bytes: Vec<u8>) -> Blob {
        let digest = format!("sha256:{:x}", Sha256::digest(&bytes));
        Blob { bytes, digest }
    }

    fn hex(&self) -> &str {
        &self.digest["sha256:".len()..]
    }

    /// A descriptor of it (without the closing brace, so fields can follow).
    fn descriptor(&self, media_type: &str) -> String {
        format!(
            r#"{{"mediaType":"{media_type}","digest":"{}","size":{}"#,
            self.digest,
            self.bytes.len()
        )
    }
}

/// `s` as a JSON string.
fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A tar archive of `entries` (path, bytes; a path ending in `/` is a directory), with no
/// times, owners or names: the same entries always give the same bytes.
fn tarball(entries: &[(&str, &[u8])]) -> io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, bytes) in entries {
        let mut header = tar::Header::new_ustar();
        header.set_path(path)?;
        if path.ends_with('/') {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
        } else {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(0o644);
            header.set_size(bytes.len() as u64);
        }
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_cksum();
        builder.append(&header, *bytes)?;
    }
    builder.into_inner()
}

/// Checks an image reference (`NAME[:TAG]`, as `docker.io/library/app:1`) enough that the
/// tools reading it accept it, and splits off the tag (`latest` by default).
pub fn parse_reference(reference: &str) -> Result<(String, String), String> {
    let valid = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/:".contains(c))
    };
    // A colon after the last slash starts the tag (one before it is a registry's port).
    let (name, tag) = match reference.rfind(':') {
        Some(i) if !reference[i..].contains('/') => (&reference[..i], &reference[i + 1..]),
        _ => (reference, "latest"),
    };
    // In the name a colon only separates a registry's host from its port: digits, then `/`.
    let port_ok = name.match_indices(':').all(|(i, _)| {
        let rest = &name[i + 1..];
        rest.find('/')
            .is_some_and(|end| end > 0 && rest[..end].bytes().all(|b| b.is_ascii_digit()))
    });
    if !valid(name)
        || !valid(tag)
        || !port_ok
        || tag.contains(['/', ':'])
        || name.starts_with(['/', '-'])
    {
        return Err(format!(
            "{reference:?} is not an image reference (NAME[:TAG] in lower case, as app:1 or registry.example/team/app:1)"
        ));
    }
    Ok((name.to_string(), tag.to_string()))
}

/// The OCI image layout tarball of the packed `image`, named `reference` (`NAME[:TAG]`).
pub fn archive(image: &[u8], reference: &str) -> Result<Vec<u8>, String> {
    let (name, tag) = parse_reference(reference)?;
    let io = |e: io::Error| e.to_string();
    let layer = Blob::new(tarball(&[(IMAGE_PATH, image)]).map_err(io)?);
    let config = Blob::new(
        format!(
            r#"{{"architecture":"wasm","config":{{"Entrypoint":["/{IMAGE_PATH}"]}},"os":"wasip1","rootfs":{{"diff_ids":["{}"],"type":"layers"}}}}"#,
            layer.digest
        )
        .into_bytes(),
    );
    let manifest = Blob::new(
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{MEDIA_MANIFEST}","config":{}}},"layers":[{}}}]}}"#,
            config.descriptor(MEDIA_CONFIG),
            layer.descriptor(MEDIA_LAYER),
        )
        .into_bytes(),
    );
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{MEDIA_INDEX}","manifests":[{},"platform":{{"architecture":"wasm","os":"wasip1"}},"annotations":{{"io.containerd.image.name":{},"org.opencontainers.image.ref.name":{}}}}}]}}"#,
        manifest.descriptor(MEDIA_MANIFEST),
        json_string(&format!("{name}:{tag}")),
        json_string(&tag),
    );
    let blob_path = |b: &Blob| format!("blobs/sha256/{}", b.hex());
    let (config_path, layer_path, manifest_path) =
        (blob_path(&config), blob_path(&layer), blob_path(&manifest));
    tarball(&[
        ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
        ("index.json", index.as_bytes()),
        ("blobs/", b""),
        ("blobs/sha256/", b""),
        (&config_path, &config.bytes),
        (&layer_path, &layer.bytes),
        (&manifest_path, &manifest.bytes),
    ])
    .map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_checked_and_tagged() {
        assert_eq!(
            parse_reference("app").unwrap(),
            ("app".into(), "latest".into())
        );
        assert_eq!(
            parse_reference("registry.example:5000/team/app:1.2").unwrap(),
            ("registry.example:5000/team/app".into(), "1.2".into())
        );
        for bad in ["", "App", "app:", "a b", "-app", "app:x/y", "\"app"] {
            assert!(parse_reference(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_same_image_gives_the_same_archive() {
        let a = archive(b"image bytes", "app:1").unwrap();
        assert_eq!(a, archive(b"image bytes", "app:1").unwrap());
        assert_ne!(a, archive(b"other bytes", "app:1").unwrap());
        // The layout's files, in order, each once.
        let mut names = Vec::new();
        let mut tar = tar::Archive::new(&a[..]);
        for entry in tar.entries().unwrap() {
            let entry = entry.unwrap();
            assert_eq!(entry.header().mtime().unwrap(), 0);
            names.push(entry.path().unwrap().to_string_lossy().into_owned());
        }
        assert_eq!(
            names[..4],
            ["oci-layout", "index.json", "blobs/", "blobs/sha256/"]
        );
        assert_eq!(names.len(), 7);
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("a\"b\\c\n"), r#""a\"b\\c\u000a""#);
    }
}
