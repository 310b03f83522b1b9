//! `wasmvm image export --format oci`: an OCI image layout tarball that skopeo (and
//! containerd) read, the same bytes for the same image, holding the packed image unchanged.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn export(args: &[&str]) -> std::process::Output {
    wasmvm()
        .args(["image", "export"])
        .args(args)
        .output()
        .unwrap()
}

/// `skopeo ARGS`, or `None` without skopeo (a failure under CI, which installs it).
fn skopeo(args: &[&str]) -> Option<String> {
    match Command::new("skopeo").args(args).output() {
        Ok(o) => {
            assert!(o.status.success(), "skopeo {args:?}: {}", stderr(&o));
            Some(stdout(&o))
        }
        Err(_) => {
            assert!(
                std::env::var("WASMVM_REQUIRE_TOOLCHAINS").as_deref() != Ok("1"),
                "skopeo is required"
            );
            eprintln!("note: skopeo not installed; skipping its checks");
            None
        }
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn an_oci_export_is_deterministic_and_holds_the_image_unchanged() {
    let dir = scratch();
    let img = dir.path().join("hello.img");
    pack(&sample("hello"), &img, &[]);
    let a = dir.path().join("a.tar");
    let b = dir.path().join("b.tar");
    for (out, tag) in [(&a, "hello:1"), (&b, "hello:1")] {
        let o = export(&[s(&img), "-o", s(out), "--format", "oci", "--tag", tag]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("OCI image hello:1, platform wasip1/wasm"),
            "{}",
            stderr(&o)
        );
    }
    assert!(
        std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
        "the same image gave different archives"
    );
    // The one layer holds the packed image, byte for byte.
    let unpacked = dir.path().join("unpacked");
    std::fs::create_dir(&unpacked).unwrap();
    let untar = |archive: &Path, into: &Path| {
        let st = Command::new("tar")
            .arg("-xf")
            .arg(archive)
            .arg("-C")
            .arg(into)
            .status()
            .unwrap();
        assert!(st.success());
    };
    untar(&a, &unpacked);
    let index: String = std::fs::read_to_string(unpacked.join("index.json")).unwrap();
    assert!(
        index.contains(r#""io.containerd.image.name":"hello:1""#),
        "{index}"
    );
    assert!(
        index.contains(r#""platform":{"architecture":"wasm","os":"wasip1"}"#),
        "{index}"
    );
    let layer = std::fs::read_dir(unpacked.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let layer_dir = dir.path().join("layer");
    std::fs::create_dir(&layer_dir).unwrap();
    untar(&layer, &layer_dir);
    assert!(
        std::fs::read(layer_dir.join("app.img")).unwrap() == std::fs::read(&img).unwrap(),
        "the layer's app.img is not the packed image"
    );

    if let Some(info) = skopeo(&["inspect", &format!("oci-archive:{}", s(&a))]) {
        assert!(info.contains(r#""Architecture": "wasm""#), "{info}");
        assert!(info.contains(r#""Os": "wasip1""#), "{info}");
        let config = skopeo(&["inspect", "--config", &format!("oci-archive:{}", s(&a))]).unwrap();
        assert!(config.contains("/app.img"), "{config}");
        // Copying checks every blob against its digest.
        let copy = dir.path().join("copy");
        skopeo(&[
            "copy",
            &format!("oci-archive:{}", s(&a)),
            &format!("oci:{}:hello", s(&copy)),
        ])
        .unwrap();
    }
}

#[test]
fn a_module_is_packed_first_and_export_mistakes_are_named() {
    let dir = scratch();
    let out = dir.path().join("app.tar");
    let hello = sample("hello");
    // Each mistake: refused (253) with its reason, and nothing written.
    let refused = |extra: &[&str], reason: &str| {
        let mut args = vec![s(&hello), "-o", s(&out)];
        args.extend_from_slice(extra);
        let o = export(&args);
        assert_eq!(o.status.code(), Some(253), "{extra:?}");
        assert!(stderr(&o).contains(reason), "{extra:?}: {}", stderr(&o));
        assert!(!out.exists());
    };
    // A .tar name without a format: a question.
    refused(&[], "Say --format oci");
    refused(&["--format", "oci", "--libvirt"], "has no domain");
    refused(&["--tag", "x"], "needs --format oci");
    refused(
        &["--format", "oci", "--tag", "Bad Name"],
        "is not an image reference",
    );
    // A module: packed in memory, named after the output.
    let o = export(&[s(&sample("hello")), "-o", s(&out), "--format", "oci"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("OCI image app:latest"),
        "{}",
        stderr(&o)
    );
}
