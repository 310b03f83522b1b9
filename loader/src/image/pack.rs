//! `wasmvm pack`: check a module, then write it with its options into an image.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use thiserror::Error;
use wasmvm_abi::bundle::{Engine, FsNode, FsNodeKind, Manifest};

use crate::image::compile::{self, CompileError};
use crate::image::module;
use crate::image::{self, ImageError};

/// The two kernel flavours an image can carry: one per engine, from one source (an image
/// carries only the engine it uses).
#[derive(Debug, Clone, Copy)]
pub struct Kernels<'a> {
    pub wasmi: &'a [u8],
    pub wasmtime: &'a [u8],
}

/// A packed image, and the engine it runs on.
#[derive(Debug, Clone)]
pub struct Packed {
    pub image: Vec<u8>,
    pub engine: Engine,
    /// Why `pack` chose that engine by itself (users are told on stderr).
    pub engine_reason: Option<&'static str>,
}

/// What the user asked `pack` to record.
#[derive(Debug, Clone, Default)]
pub struct PackOptions {
    /// The module's file name (the default argv[0]).
    pub module_name: Vec<u8>,
    pub argv0: Option<Vec<u8>>,
    pub args: Vec<Vec<u8>>,
    /// `KEY=VALUE` entries.
    pub env: Vec<Vec<u8>>,
    /// Host directories copied into the image and preopened at the guest path.
    pub dirs: Vec<DirSpec>,
    /// Reactor mode: the export to call after `_initialize`.
    pub invoke: Option<String>,
    /// Link unknown function imports as stubs returning zeros.
    pub stub_imports: bool,
    /// Listening TCP sockets preopened after the directories (`--listen`).
    pub listens: Vec<wasmvm_abi::net::Listen>,
    /// `--engine`; `None` chooses wasmi unless the module needs the compiled engine.
    pub engine: Option<Engine>,
}

/// `--dir HOST[::GUEST]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirSpec {
    pub host: PathBuf,
    pub guest: Vec<u8>,
}

impl DirSpec {
    /// Parses `HOST[::GUEST]`; GUEST defaults to HOST.
    pub fn parse(spec: &std::ffi::OsStr) -> Result<DirSpec, String> {
        let bytes = spec.as_bytes();
        let (host, guest) = match bytes.windows(2).position(|w| w == b"::") {
            Some(i) => (&bytes[..i], &bytes[i + 2..]),
            None => (bytes, bytes),
        };
        if host.is_empty() || guest.is_empty() {
            return Err(format!(
                "`{}` is not of the form HOST[::GUEST]",
                spec.to_string_lossy()
            ));
        }
        if std::str::from_utf8(guest).is_err() {
            return Err(format!(
                "guest path of `{}` is not UTF-8",
                spec.to_string_lossy()
            ));
        }
        Ok(DirSpec {
            host: PathBuf::from(std::ffi::OsStr::from_bytes(host)),
            guest: guest.to_vec(),
        })
    }
}

#[derive(Debug, Error)]
pub enum PackError {
    #[error("the module cannot run in wasmvm:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Module(Vec<String>),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("--dir {path}: {why}")]
    Dir { path: PathBuf, why: String },
    #[error(transparent)]
    Compile(#[from] CompileError),
}

/// Copies the tree under `root` into `out` as nodes of preopen `index`, in a stable order.
fn collect_dir(root: &Path, index: u32, out: &mut Vec<FsNode>) -> Result<(), PackError> {
    let err = |path: &Path, why: String| PackError::Dir {
        path: path.to_path_buf(),
        why,
    };
    let meta = std::fs::metadata(root).map_err(|e| err(root, e.to_string()))?;
    if !meta.is_dir() {
        return Err(err(root, "not a directory".to_string()));
    }
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .map_err(|e| err(&dir, e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| err(&dir, e.to_string()))?;
        entries.sort_by_key(|e| e.file_name());
        // Depth-first with parents before children; reversed so the sorted order is kept.
        let mut subdirs = Vec::new();
        for entry in entries {
            let rel_path = rel.join(entry.file_name());
            let host_path = entry.path();
            let ty = entry
                .file_type()
                .map_err(|e| err(&host_path, e.to_string()))?;
            let (kind, contents) = if ty.is_dir() {
                subdirs.push(rel_path.clone());
                (FsNodeKind::Dir, Vec::new())
            } else if ty.is_symlink() {
                let target =
                    std::fs::read_link(&host_path).map_err(|e| err(&host_path, e.to_string()))?;
                (FsNodeKind::Symlink, target.as_os_str().as_bytes().to_vec())
            } else if ty.is_file() {
                let data = std::fs::read(&host_path).map_err(|e| err(&host_path, e.to_string()))?;
                (FsNodeKind::File, data)
            } else {
                return Err(err(
                    &host_path,
                    "not a regular file, directory or symlink".to_string(),
                ));
            };
            out.push(FsNode {
                preopen: index,
                kind,
                path: rel_path.as_os_str().as_bytes().to_vec(),
                contents,
            });
        }
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(())
}

/// Checks `wasm`, compiles it if it runs on the compiled engine, and packs it with the
/// kernel of its engine into image bytes.
pub fn pack_module(kernels: Kernels, wasm: &[u8], opts: &PackOptions) -> Result<Packed, PackError> {
    let entry = module::Entry {
        invoke: opts.invoke.as_deref(),
        stub_imports: opts.stub_imports,
        engine: opts.engine,
    };
    let info = module::check(wasm, entry).map_err(PackError::Module)?;
    let mut fs_nodes = Vec::new();
    for (i, dir) in opts.dirs.iter().enumerate() {
        collect_dir(&dir.host, i as u32, &mut fs_nodes)?;
    }
    let manifest = Manifest {
        module_name: opts.module_name.clone(),
        argv0: opts.argv0.clone(),
        args: opts.args.clone(),
        env: opts.env.clone(),
        min_memory: info.min_memory,
        preopens: opts.dirs.iter().map(|d| d.guest.clone()).collect(),
        fs_nodes,
        invoke: opts.invoke.as_ref().map(|s| s.as_bytes().to_vec()),
        stub_imports: opts.stub_imports,
        listens: opts.listens.clone(),
        engine_id: (info.engine == Engine::Wasmtime)
            .then(|| wasmvm_engine::compiled::ENGINE_ID.as_bytes().to_vec()),
    };
    let image = match info.engine {
        Engine::Wasmi => image::pack(kernels.wasmi, wasm, &manifest, None)?,
        Engine::Wasmtime => {
            let artifact = compile::compile(wasm)?;
            image::pack(kernels.wasmtime, wasm, &manifest, Some(&artifact))?
        }
    };
    Ok(Packed {
        image,
        engine: info.engine,
        engine_reason: info.engine_reason,
    })
}

/// Checks that `KEY=VALUE` has a non-empty key without `=` or NUL.
pub fn check_env(var: &[u8]) -> Result<(), String> {
    let shown = String::from_utf8_lossy(var);
    match var.iter().position(|&b| b == b'=') {
        Some(0) | None => Err(format!("`{shown}` is not of the form KEY=VALUE")),
        Some(_) if var.contains(&0) => Err(format!("`{shown}` contains a NUL byte")),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn dir_specs() {
        let d = DirSpec::parse(OsStr::new("./data::/srv")).unwrap();
        assert_eq!(
            (d.host, d.guest),
            (PathBuf::from("./data"), b"/srv".to_vec())
        );
        let d = DirSpec::parse(OsStr::new("/tmp")).unwrap();
        assert_eq!((d.host, d.guest), (PathBuf::from("/tmp"), b"/tmp".to_vec()));
        assert!(DirSpec::parse(OsStr::new("::/x")).is_err());
        assert!(DirSpec::parse(OsStr::new("x::")).is_err());
    }

    #[test]
    fn trees_are_collected_in_a_stable_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("b/c")).unwrap();
        std::fs::write(dir.path().join("b/c/f"), b"deep").unwrap();
        std::fs::write(dir.path().join("a"), b"top").unwrap();
        std::os::unix::fs::symlink("b/c/f", dir.path().join("l")).unwrap();
        let mut nodes = Vec::new();
        collect_dir(dir.path(), 2, &mut nodes).unwrap();
        let paths: Vec<_> = nodes
            .iter()
            .map(|n| String::from_utf8_lossy(&n.path).into_owned())
            .collect();
        assert_eq!(paths, ["a", "b", "l", "b/c", "b/c/f"]);
        assert_eq!(nodes[2].contents, b"b/c/f");
        assert!(nodes.iter().all(|n| n.preopen == 2));
        let missing = collect_dir(&dir.path().join("nope"), 0, &mut nodes).unwrap_err();
        assert!(missing.to_string().contains("nope"), "{missing}");
    }
}
