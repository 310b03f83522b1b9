//! The `wasmvm run` command line for an app: the entrypoint found inside the container's
//! root file system, the environment in a file (never on a command line, which every host
//! user can read), and the spec's shares, memory and network.

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use crate::options::Settings;
use crate::spec::{App, Network};

/// `wasmvm` beside the shim, and the arguments that run `app` from `rootfs`; the
/// environment goes to `env_file` (written here, mode 0600).
pub fn wasmvm_args(
    app: &App,
    network: &Network,
    rootfs: &Path,
    env_file: &Path,
    settings: &Settings,
) -> Result<(PathBuf, Vec<OsString>), String> {
    let wasmvm = wasmvm_binary()?;
    let entry = resolve_in_root(rootfs, &app.entry)?;
    if let Some(key) = &settings.verify_key
        && is_wasm_module(&entry)
    {
        return Err(format!(
            "/{} is a plain .wasm module, which carries no signature, and this runtime requires images signed by {}",
            app.entry.display(),
            key.display()
        ));
    }
    write_env_file(env_file, &app.env)
        .map_err(|e| format!("cannot write {}: {e}", env_file.display()))?;
    let mut args: Vec<OsString> = vec!["run".into(), "--argv0".into(), (&app.argv0).into()];
    args.push("--env-file".into());
    args.push(env_file.into());
    if let Some(mib) = app.memory_mib {
        args.push("--memory".into());
        args.push(format!("{mib}M").into());
    }
    if let Some(key) = &settings.verify_key {
        args.push("--verify".into());
        args.push(key.into());
    }
    for share in &app.shares {
        args.push(if share.read_only { "--dir-ro" } else { "--dir" }.into());
        let mut spec = share.host.clone().into_os_string();
        spec.push("::");
        spec.push(&share.guest);
        args.push(spec);
    }
    match network {
        Network::None => {
            args.push("--network".into());
            args.push("none".into());
        }
        // The app's listeners on the same ports of the namespace's addresses: a pod's IP
        // (or the host's, with host networking) reaches the app as it would a process.
        Network::Host | Network::Join(_) => args.push("--publish-all".into()),
    }
    args.push(entry.into());
    args.push("--".into());
    args.extend(app.args.iter().map(OsString::from));
    Ok((wasmvm, args))
}

/// `wasmvm` in the shim's own directory: the two are installed together.
fn wasmvm_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the shim binary: {e}"))?;
    // After an upgrade in place the running shim's path ends in " (deleted)": the file
    // name is replaced either way.
    let wasmvm = exe.with_file_name("wasmvm");
    if !wasmvm.is_file() {
        return Err(format!(
            "{} is missing: install wasmvm beside containerd-shim-wasmvm-v1",
            wasmvm.display()
        ));
    }
    Ok(wasmvm)
}

/// NUL-terminated `KEY=VALUE` entries (`wasmvm run --env-file`); entries without `=`
/// are dropped, as a runtime passes them on unnoticed and wasmvm refuses them.
fn write_env_file(path: &Path, env: &[String]) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    let mut text = Vec::new();
    for var in env.iter().filter(|v| v.contains('=') && !v.contains('\0')) {
        text.extend_from_slice(var.as_bytes());
        text.push(0);
    }
    // A NUL marks the format even for an empty environment.
    if text.is_empty() {
        text.push(0);
    }
    file.write_all(&text)
}

/// Follows `entry` inside `root` as the container would see it: `..` stops at the root,
/// and symlinks, absolute ones too, resolve against the root, never the host's `/`.
/// Returns the host path of the regular file it names.
pub fn resolve_in_root(root: &Path, entry: &Path) -> Result<PathBuf, String> {
    let shown = format!("/{}", entry.display());
    let missing = || {
        format!(
            "the entrypoint {shown} is not in the image: it needs a wasm module or wasmvm image there"
        )
    };
    let mut resolved = PathBuf::new();
    let mut pending: Vec<std::ffi::OsString> = entry
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p.to_os_string()),
            _ => None,
        })
        .collect();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        if part == "." {
            continue;
        }
        let candidate = resolved.join(&part);
        let meta = std::fs::symlink_metadata(root.join(&candidate)).map_err(|_| missing())?;
        if meta.file_type().is_symlink() {
            links += 1;
            if links > 40 {
                return Err(format!("the entrypoint {shown} has too many symlinks"));
            }
            let target = std::fs::read_link(root.join(&candidate)).map_err(|_| missing())?;
            if target.is_absolute() {
                resolved = PathBuf::new();
            }
            for c in target.components().rev() {
                match c {
                    Component::Normal(p) => pending.push(p.to_os_string()),
                    Component::ParentDir => pending.push("..".into()),
                    _ => {}
                }
            }
        } else {
            resolved = candidate;
        }
    }
    let file = root.join(&resolved);
    match std::fs::symlink_metadata(&file) {
        Ok(m) if m.is_file() => Ok(file),
        Ok(_) => Err(format!("the entrypoint {shown} is not a file")),
        Err(_) => Err(missing()),
    }
}

fn is_wasm_module(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok()
        && magic == *b"\0asm"
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn entrypoints_resolve_inside_the_root_even_through_absolute_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        std::fs::create_dir_all(root.join("opt/app")).unwrap();
        std::fs::write(root.join("opt/app/app.wasm"), b"\0asm").unwrap();
        symlink("/opt/app/app.wasm", root.join("app.wasm")).unwrap();
        symlink("../../../../../etc/passwd", root.join("escape")).unwrap();
        symlink("/etc/passwd", root.join("abs-escape")).unwrap();
        symlink("loop", root.join("loop")).unwrap();
        let r = |p: &str| resolve_in_root(&root, Path::new(p));
        assert_eq!(r("app.wasm").unwrap(), root.join("opt/app/app.wasm"));
        assert_eq!(
            r("opt/app/app.wasm").unwrap(),
            root.join("opt/app/app.wasm")
        );
        // Out of the root is the root's own /etc/passwd, which is not there.
        assert!(r("escape").unwrap_err().contains("not in the image"));
        assert!(r("abs-escape").unwrap_err().contains("not in the image"));
        assert!(r("loop").unwrap_err().contains("too many symlinks"));
        assert!(r("opt").unwrap_err().contains("not a file"));
    }

    #[test]
    fn the_environment_file_is_private_and_nul_terminated() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("env");
        write_env_file(&f, &["A=1".into(), "PEM=x\ny".into(), "NOEQUALS".into()]).unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"A=1\0PEM=x\ny\0");
        assert_eq!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
        write_env_file(&f, &[]).unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"\0");
    }
}
