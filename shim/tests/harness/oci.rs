//! Hand-made OCI image layout tarballs, for images wasmvm does not export: CRI's pause
//! image (linux/amd64) and plain `.wasm` images as other tools build them.

use std::path::Path;

use sha2::{Digest, Sha256};

fn digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Writes to `out` an image `tag` for `os`/`arch` with one layer holding `files` (mode
/// 0755) and `entrypoint`.
pub fn write_image(
    out: &Path,
    tag: &str,
    (os, arch): (&str, &str),
    files: &[(&str, &[u8])],
    entrypoint: &[&str],
) {
    let mut layer = tar::Builder::new(Vec::new());
    for (name, bytes) in files {
        let mut header = tar::Header::new_ustar();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o755);
        header.set_mtime(0);
        layer.append_data(&mut header, name, *bytes).unwrap();
    }
    let layer = layer.into_inner().unwrap();
    let layer_digest = digest(&layer);
    let entry = serde_json::to_string(entrypoint).unwrap();
    let config = format!(
        r#"{{"architecture":"{arch}","os":"{os}","config":{{"Entrypoint":{entry}}},"rootfs":{{"type":"layers","diff_ids":["{layer_digest}"]}}}}"#
    );
    let config_digest = digest(config.as_bytes());
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer_digest}","size":{}}}]}}"#,
        config.len(),
        layer.len()
    );
    let manifest_digest = digest(manifest.as_bytes());
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{manifest_digest}","size":{},"platform":{{"architecture":"{arch}","os":"{os}"}},"annotations":{{"io.containerd.image.name":"{tag}","org.opencontainers.image.ref.name":"{tag}"}}}}]}}"#,
        manifest.len()
    );
    let mut tarball = tar::Builder::new(std::fs::File::create(out).unwrap());
    let mut add = |name: &str, bytes: &[u8]| {
        let mut header = tar::Header::new_ustar();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        tarball.append_data(&mut header, name, bytes).unwrap();
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    add("index.json", index.as_bytes());
    for (d, bytes) in [
        (&layer_digest, &layer[..]),
        (&config_digest, config.as_bytes()),
        (&manifest_digest, manifest.as_bytes()),
    ] {
        add(&format!("blobs/sha256/{}", &d["sha256:".len()..]), bytes);
    }
    tarball.into_inner().unwrap();
}
