//! The subcommands: argument plumbing between the CLI grammar and `wasmvm_loader`.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use anyhow::{Context, Result, bail};
use wasmvm_abi::ABI_VERSION;
use wasmvm_abi::bundle::{env_key, with_env};
use wasmvm_loader::host::volume;
use wasmvm_loader::image::elf::Elf;
use wasmvm_loader::image::pack::{DirSpec, PackOptions, check_env, pack_module};
use wasmvm_loader::image::{self, Image, module};
use wasmvm_loader::reference::HostMode;
use wasmvm_loader::{Backend, Control, RunIo, RunOptions};

use crate::KERNELS;
use crate::cli::{
    AppArgs, BackendChoice, Cli, Command, ImageCommand, KeyCommand, RunArgs, VolumeCommand,
};
use crate::output::{self, Output};

pub fn dispatch(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Pack {
            module,
            output,
            dirs,
            sign,
            app,
        } => pack(&module, &output, &app, &dirs, sign.as_deref()),
        Command::Run(args) => run_command(args),
        Command::Fleet(command) => crate::fleet::dispatch(command),
        Command::Inspect { image, json } => inspect(&image, json),
        Command::Doctor => doctor(),
        Command::Key {
            command: KeyCommand::Generate { output },
        } => crate::keys::generate(&output),
        Command::Image {
            command:
                ImageCommand::Export {
                    image,
                    output,
                    format,
                    tag,
                    libvirt,
                    name,
                    firmware,
                    memory,
                    network,
                },
        } => crate::export::export(
            &image,
            &output,
            format,
            tag.as_deref(),
            libvirt.then_some(crate::export::LibvirtArgs {
                name,
                firmware,
                memory,
                network,
            }),
        ),
        Command::Image {
            command:
                ImageCommand::RunConfig {
                    output,
                    env,
                    argv0,
                    args,
                },
        } => write_run_config(&output, &env, argv0, &args),
        Command::Volume {
            command: VolumeCommand::Create { image, size },
        } => {
            volume::create(&image, size)?;
            println!(
                "created {} ({} MiB FAT volume)",
                image.display(),
                size >> 20
            );
            Ok(0)
        }
    }
}

/// `wasmvm run`: options converted once (`RunArgs::options`), the image verified if asked,
/// then the run in the foreground or handed to a supervisor (`-d`).
fn run_command(args: RunArgs) -> Result<i32> {
    let opts = args.options().map_err(anyhow::Error::msg)?;
    let backend = args.backend().map_err(anyhow::Error::msg)?;
    // `--verify`: boot a private copy of exactly the bytes that were verified
    // (`signing::verified_bytes`), never the file again; it lives until the run ends.
    let (verified, _registered) = match &args.verify {
        Some(pubkey) => {
            let (copy, registered) = crate::keys::verified_image(&args.image, pubkey)?;
            (Some(copy), Some(registered))
        }
        None => (None, None),
    };
    // `-d`: a supervisor replays this command line in the background (and verifies again at
    // every start); a bad image has been refused here, in the foreground.
    if args.detach.wanted() {
        drop(verified);
        return crate::fleet::run_detached(&args.detach, &args.image, &args.app.args);
    }
    let image = verified
        .as_ref()
        .map_or(args.image.clone(), |v| v.path().to_path_buf());
    let backend: Box<dyn Backend> = match backend {
        BackendChoice::Builtin(b) => Box::new(b),
        BackendChoice::Qemu(q) => Box::new(q),
        BackendChoice::Host => Box::new(HostMode),
    };
    run(&image, &args.app, opts, &*backend, args.verbose)
}

fn bytes(s: &OsString) -> Vec<u8> {
    s.clone().into_vec()
}

fn env_list(app: &AppArgs) -> Result<Vec<Vec<u8>>> {
    let mut list = Vec::new();
    for file in &app.env_files {
        for entry in read_env_file(file)? {
            check_env(&entry).map_err(|e| anyhow::anyhow!("--env-file {}: {e}", file.display()))?;
            if env_key(&entry).iter().any(u8::is_ascii_whitespace) {
                bail!(
                    "--env-file {}: `{}`: a key cannot contain spaces (no `export`)",
                    file.display(),
                    String::from_utf8_lossy(&entry)
                );
            }
            list.push(entry);
        }
    }
    // --env over the files.
    for v in &app.env {
        let v = bytes(v);
        check_env(&v).map_err(|e| anyhow::anyhow!("--env {e}"))?;
        list.push(v);
    }
    // A later setting of a key wins.
    Ok(with_env(Vec::new(), list))
}

/// The entries of an `--env-file`: NUL-terminated if the file holds a NUL byte (so values
/// may contain newlines; what the containerd shim writes), else one per line, skipping
/// blank lines and `#` comments (docker's format).
fn read_env_file(path: &Path) -> Result<Vec<Vec<u8>>> {
    /// Far above any real environment; a mistaken path to a large file fails at once.
    const LIMIT: u64 = 16 << 20;
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot read --env-file {}", path.display()))?;
    let mut text = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file, LIMIT + 1), &mut text)
        .with_context(|| format!("cannot read --env-file {}", path.display()))?;
    if text.len() as u64 > LIMIT {
        bail!("--env-file {}: larger than 16 MiB", path.display());
    }
    Ok(split_env_file(&text))
}

fn split_env_file(text: &[u8]) -> Vec<Vec<u8>> {
    if text.contains(&0) {
        return text
            .split(|&b| b == 0)
            .filter(|e| !e.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
    }
    let text = text.strip_prefix(b"\xef\xbb\xbf").unwrap_or(text);
    text.split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .map(|l| l.trim_ascii_start())
        .filter(|l| !l.is_empty() && !l.starts_with(b"#"))
        .map(<[u8]>::to_vec)
        .collect()
}

fn pack_options(module: &Path, app: &AppArgs, dirs: &[DirSpec]) -> Result<PackOptions> {
    let module_name = module
        .file_name()
        .map(|n| n.as_bytes().to_vec())
        .unwrap_or_else(|| b"app.wasm".to_vec());
    Ok(PackOptions {
        module_name,
        argv0: app.argv0.as_ref().map(bytes),
        args: app.args.iter().map(bytes).collect(),
        env: env_list(app)?,
        dirs: dirs.to_vec(),
        invoke: app.invoke.clone(),
        stub_imports: app.stub_imports,
        listens: app.listens.clone(),
        engine: app.engine.map(|e| e.engine()),
    })
}

fn read_module(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

fn pack(
    module: &Path,
    output: &Path,
    app: &AppArgs,
    dirs: &[DirSpec],
    sign: Option<&Path>,
) -> Result<i32> {
    let opts = pack_options(module, app, dirs)?;
    let key = crate::keys::signing_key(sign)?;
    let wasm = read_module(module)?;
    let image = pack_with_progress(module, &wasm, &opts)
        .with_context(|| format!("cannot pack {}", module.display()))?;
    let image = crate::keys::sign_if(image, key.as_ref())?;
    write_atomically(output, &image)?;
    Ok(0)
}

/// Packs `wasm` (read from `path`), saying on stderr which engine `pack` chose by itself and
/// why, and, on a terminal, how long compiling has taken so far (a large module takes
/// seconds).
pub fn pack_with_progress(path: &Path, wasm: &[u8], opts: &PackOptions) -> Result<Vec<u8>> {
    let progress = crate::progress::Progress::start(format!(
        "packing {} ({} KiB)",
        path.display(),
        wasm.len() / 1024
    ));
    let packed = pack_module(KERNELS, wasm, opts);
    progress.finish();
    let packed = packed?;
    if let Some(reason) = packed.engine_reason {
        eprintln!(
            "wasmvm: {}: using the {} engine: {reason}",
            path.display(),
            packed.engine.name()
        );
    }
    Ok(packed.image)
}

/// The directory `path` is in (`.` for a bare file name): where a file that is renamed to
/// `path` once complete is written first.
pub(crate) fn directory_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Writes through a temporary file in the same directory, so a failed write never leaves a
/// half image (or archive) behind.
pub(crate) fn write_atomically(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = directory_of(path);
    let (mut tmp, _registered) =
        crate::signals::make_temporary(|| tempfile::NamedTempFile::new_in(dir))
            .with_context(|| format!("cannot write {}", path.display()))?;
    // Images are ordinary files others may boot: rw-r--r-- (tempfile starts at 0600).
    use std::os::unix::fs::PermissionsExt;
    tmp.write_all(data)
        .and_then(|()| {
            tmp.as_file()
                .set_permissions(std::fs::Permissions::from_mode(0o644))
        })
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn is_wasm(path: &Path) -> Result<bool> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    // Only a regular file of bounded size: a FIFO would block and /dev/zero never end.
    let (mut f, _) = wasmvm_loader::image::file::open(path)?;
    let n = f.read(&mut magic).unwrap_or(0);
    Ok(n == 4 && &magic == b"\0asm")
}

fn run(
    target: &Path,
    app: &AppArgs,
    mut opts: RunOptions,
    backend: &dyn Backend,
    verbose: bool,
) -> Result<i32> {
    // A module is packed in memory (with the options as pack-time settings); an image takes
    // them as run-time overrides.
    let (_packed, _registered);
    let image_path = if is_wasm(target)? {
        let wasm = read_module(target)?;
        let packed_bytes = pack_with_progress(target, &wasm, &pack_options(target, app, &[])?)
            .with_context(|| format!("cannot run {}", target.display()))?;
        let tmp;
        (tmp, _registered) =
            crate::signals::temporary_file("wasmvm-image-", &packed_bytes, "a temporary image")?;
        let path = tmp.path().to_path_buf();
        _packed = tmp;
        path
    } else {
        if app.invoke.is_some() || app.stub_imports || app.engine.is_some() {
            bail!(
                "--invoke, --stub-imports and --engine are packing options: give them to `wasmvm pack`, or run the .wasm module directly"
            );
        }
        opts.argv0 = app.argv0.as_ref().map(bytes);
        if !app.args.is_empty() {
            opts.args = Some(app.args.iter().map(bytes).collect());
        }
        opts.env = env_list(app)?;
        if !app.listens.is_empty() {
            opts.listens = Some(app.listens.clone());
        }
        target.to_path_buf()
    };

    let control = Control::default();
    // The user's streams, behind queues of their own: a reader that never reads cannot
    // hold a stopped run (see `output`).
    let (out, err) = (
        Output::new(output::unbuffered_stdout()),
        Output::new(std::io::stderr()),
    );
    let give_up = GiveUp::new(&out, &err);
    // With --timeout the whole command is bounded, output included.
    if let Some(timeout) = opts.timeout {
        give_up.after(timeout + output::GRACE);
    }

    let (mut stdout, mut stderr) = (out.clone(), err.clone());
    let mut log = |line: &str| {
        if verbose {
            eprintln!("[wasmvm] {line}");
        }
    };
    // The app's stdio are terminals where ours are (its `isatty`, colours and prompts).
    opts.stdio_terminals = [
        std::io::stdin().is_terminal(),
        std::io::stdout().is_terminal(),
        std::io::stderr().is_terminal(),
    ]
    .iter()
    .enumerate()
    .fold(0, |mask, (i, &tty)| mask | (u8::from(tty) << i));
    let io = RunIo {
        stdin: Box::new(std::io::stdin()),
        stdout: &mut stdout,
        stderr: &mut stderr,
        log: &mut log,
        verbose,
        process_stdio: true,
    };
    // SIGINT, SIGTERM and SIGHUP stop the run cleanly, whatever the backend; the reader
    // then has `output::GRACE` to take the rest of the output.
    let stopper = control.stopper();
    let stop = move |reason| {
        stopper.stop(reason);
        give_up.after(output::GRACE);
    };
    let ending = crate::signals::while_running(stop, || {
        wasmvm_loader::run::run(backend, &image_path, &opts, io, control)
    });
    // Everything the app wrote reaches the reader before our own last words; after a stop
    // or timeout, only what the reader takes within the grace period.
    out.drain();
    err.drain();
    // A refused image is named as the user gave it (not the temporary copy the run booted);
    // errors about the file itself name it already.
    let ending = ending.map_err(|e| match e {
        wasmvm_loader::RunError::Image(_) => {
            anyhow::Error::new(e).context(target.display().to_string())
        }
        e => e.into(),
    })?;
    if let Some(message) = ending.describe() {
        eprintln!("wasmvm: {message}");
    }
    Ok(ending.status())
}

/// Drops the output a stopped run's reader will not take, once the reader has had its
/// grace period: armed by a stop request or by `--timeout`.
#[derive(Clone)]
struct GiveUp {
    outputs: [Output; 2],
}

impl GiveUp {
    fn new(out: &Output, err: &Output) -> GiveUp {
        GiveUp {
            outputs: [out.clone(), err.clone()],
        }
    }

    /// Abandons the outputs after `delay` (a detached timer: the process may end first).
    fn after(&self, delay: std::time::Duration) {
        let this = self.clone();
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            for o in &this.outputs {
                o.abandon();
            }
        });
    }
}

fn inspect(path: &Path, json: bool) -> Result<i32> {
    let bytes = wasmvm_loader::image::file::read(path)?;
    let image =
        Image::parse(&bytes).with_context(|| format!("cannot inspect {}", path.display()))?;
    let entry = module::Entry {
        invoke: image
            .manifest
            .invoke
            .as_deref()
            .and_then(|b| std::str::from_utf8(b).ok()),
        stub_imports: image.manifest.stub_imports,
        engine: Some(image.bundle.header.engine),
    };
    let info =
        module::check(image.bundle.module, entry).map_err(|p| anyhow::anyhow!(p.join("; ")))?;
    let engine = image.bundle.header.engine;
    let engine_text = match (&image.manifest.engine_id, image.bundle.artifact) {
        (Some(id), Some(artifact)) => format!(
            "{} (compiled for {}; {} KiB of code)",
            engine.name(),
            String::from_utf8_lossy(id),
            artifact.len() / 1024
        ),
        _ => format!("{} (interpreted)", engine.name()),
    };
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let (signature, signature_text) = crate::keys::describe_signature(&bytes);
    let m = &image.manifest;
    let preopens: Vec<_> = m
        .preopens
        .iter()
        .enumerate()
        .map(|(i, guest)| {
            let nodes = m.fs_nodes.iter().filter(|n| n.preopen == i as u32);
            serde_json::json!({
                "guest_path": text(guest),
                "entries": nodes.clone().count(),
                "bytes": nodes.map(|n| n.contents.len()).sum::<usize>(),
            })
        })
        .collect();
    let value = serde_json::json!({
        "kernel_version": image.kernel.version,
        "abi_version": image.kernel.abi_version,
        "engine": {
            "name": engine.name(),
            "id": image.manifest.engine_id.as_deref().map(text),
            "artifact_size": image.bundle.artifact.map(<[u8]>::len),
        },
        "image_size": bytes.len(),
        "module": {
            "name": text(&m.module_name),
            "size": image.bundle.module.len(),
            "sha256": image::hex(&image.bundle.header.module_sha256),
            "min_memory": m.min_memory,
            "imports": info.imports,
            "exports": info.exports,
        },
        "argv0": m.argv0.as_deref().map(text),
        "args": m.args.iter().map(|a| text(a)).collect::<Vec<_>>(),
        "env": m.env.iter().map(|a| text(a)).collect::<Vec<_>>(),
        "preopens": preopens,
        "invoke": m.invoke.as_deref().map(text),
        "stub_imports": m.stub_imports,
        "listens": m.listens.iter().map(|l| l.to_string()).collect::<Vec<_>>(),
        "signature": signature,
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(0);
    }
    println!("image:          {} ({} bytes)", path.display(), bytes.len());
    println!("signature:      {signature_text}");
    println!("engine:         {engine_text}");
    println!(
        "kernel:         wasmvm-kernel {} (ABI version {})",
        image.kernel.version,
        image
            .kernel
            .abi_version
            .map_or("unknown".to_string(), |v| v.to_string())
    );
    println!(
        "module:         {} ({} bytes)",
        text(&m.module_name),
        image.bundle.module.len()
    );
    println!(
        "sha256:         {}",
        image::hex(&image.bundle.header.module_sha256)
    );
    println!("min memory:     {} KiB", m.min_memory / 1024);
    if let Some(a) = &m.argv0 {
        println!("argv0:          {}", text(a));
    }
    println!(
        "args:           {:?}",
        m.args.iter().map(|a| text(a)).collect::<Vec<_>>()
    );
    println!(
        "env:            {:?}",
        m.env.iter().map(|a| text(a)).collect::<Vec<_>>()
    );
    if !m.listens.is_empty() {
        println!(
            "listens:        {}",
            m.listens
                .iter()
                .map(|l| l.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!("imports ({}):", info.imports.len());
    for i in &info.imports {
        println!("  {i}");
    }
    println!("exports ({}):", info.exports.len());
    for e in &info.exports {
        println!("  {e}");
    }
    Ok(0)
}

fn doctor() -> Result<i32> {
    let mut ok = true;
    let mut report = |good: bool, what: &str, detail: String| {
        ok &= good;
        println!("[{}] {what}: {detail}", if good { " ok " } else { "FAIL" });
    };
    for (engine, kernel) in [("wasmi", KERNELS.wasmi), ("wasmtime", KERNELS.wasmtime)] {
        let what = format!("kernel ({engine})");
        match Elf::parse(kernel) {
            Ok(elf) => {
                let v = image::kernel_version(&elf);
                let good = v.abi_version == Some(ABI_VERSION);
                report(
                    good,
                    &what,
                    format!(
                        "wasmvm-kernel {} ({} bytes, ABI {:?}, this wasmvm speaks {ABI_VERSION})",
                        v.version,
                        kernel.len(),
                        v.abi_version
                    ),
                );
            }
            Err(e) => report(
                false,
                &what,
                format!("the embedded kernel is broken: {e}; rebuild wasmvm"),
            ),
        }
    }
    match wasmvm_loader::run::prepare::check_kvm() {
        Ok(()) => report(true, "kvm", "/dev/kvm is usable".to_string()),
        Err(e) => report(
            false,
            "kvm",
            format!("{e} (or use `wasmvm run --accel tcg`)"),
        ),
    }
    let qemu = wasmvm_loader::qemu::Qemu::default().binary;
    match std::process::Command::new(&qemu).arg("--version").output() {
        Ok(out) if out.status.success() => {
            let first = String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string();
            report(true, "qemu", first);
        }
        Ok(out) => report(
            false,
            "qemu",
            format!("`{} --version` failed: {}", qemu.display(), out.status),
        ),
        Err(_) => report(
            false,
            "qemu",
            format!(
                "`{}` not found: apt-get install qemu-system-x86 (or set WASMVM_QEMU)",
                qemu.display()
            ),
        ),
    }
    // passt is only needed for the built-in VMM's network: its absence is a warning.
    let passt = wasmvm_loader::vmm::Builtin::default().passt;
    match std::process::Command::new(&passt).arg("--version").output() {
        Ok(out) => {
            let version = String::from_utf8_lossy(&out.stdout);
            let version = version.lines().next().unwrap_or("").trim();
            println!(
                "[ ok ] passt: {}",
                if version.is_empty() {
                    "installed"
                } else {
                    version
                }
            );
        }
        Err(_) => println!(
            "[warn] passt: `{}` not found: apt-get install passt (the network of apps that use sockets on the built-in VMM; or set WASMVM_PASST)",
            passt.display()
        ),
    }
    // GRUB and qemu-img are only needed by `image export`: warnings too.
    match wasmvm_loader::export::disk::Grub::find() {
        Ok(grub) => println!(
            "[ ok ] GRUB: {} (BIOS and UEFI, for `image export`)",
            grub.mkimage.display()
        ),
        Err(e) => println!("[warn] GRUB: {e}"),
    }
    match wasmvm_loader::export::disk::find_in_path("qemu-img") {
        Some(path) => println!("[ ok ] qemu-img: {} (qcow2 export)", path.display()),
        None => println!(
            "[warn] qemu-img: not found: apt-get install qemu-utils (for `image export` to qcow2)"
        ),
    }
    if !ok {
        bail!("some checks failed (see above)");
    }
    Ok(0)
}

/// `wasmvm image run-config`: the run configuration other VMMs hand over as the initrd.
/// No entropy seed (a file reused across boots must not carry one: the guest then seeds
/// from `rdrand`) and no clock (the guest reads kvmclock).
fn write_run_config(
    output: &Path,
    env: &[OsString],
    argv0: Option<OsString>,
    args: &[OsString],
) -> Result<i32> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = |s: &OsString| s.as_bytes().to_vec();
    for e in env {
        if !e.as_bytes().contains(&b'=') {
            anyhow::bail!("--env {}: expected KEY=VALUE", e.to_string_lossy());
        }
    }
    let config = wasmvm_abi::bundle::RunConfig {
        argv0: argv0.as_ref().map(bytes),
        args: (!args.is_empty()).then(|| args.iter().map(bytes).collect()),
        env: env.iter().map(bytes).collect(),
        ..Default::default()
    };
    std::fs::write(output, config.encode())
        .with_context(|| format!("cannot write {}", output.display()))?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::split_env_file;

    #[test]
    fn env_files_split_on_nul_or_lines() {
        assert_eq!(
            split_env_file(b"\xef\xbb\xbfA=1\n\n  # comment\r\n  B=two words\r\n  \n"),
            [b"A=1".to_vec(), b"B=two words".to_vec()]
        );
        assert_eq!(
            split_env_file(b"PEM=-----BEGIN\nabc\n-----END\0X=\0"),
            [b"PEM=-----BEGIN\nabc\n-----END".to_vec(), b"X=".to_vec()]
        );
    }
}
