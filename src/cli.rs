//! The command-line grammar (docs/cli.md is its prose twin; tests pin both).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::builder::TypedValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};
use wasmvm_abi::net::Listen;
use wasmvm_loader::image::pack::DirSpec;
use wasmvm_loader::run::network::{NetworkMode, Publish};
use wasmvm_loader::{RunOptions, ShareSpec, VolumeSpec};

#[derive(Debug, Parser)]
#[command(
    name = "wasmvm",
    version,
    about = "Turn a wasm32-wasip1 program into its own micro-VM"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a module and pack it with the kernel into one bootable image.
    Pack {
        /// The wasm32-wasip1 module.
        module: PathBuf,
        /// Where to write the image.
        #[arg(short, long)]
        output: PathBuf,
        /// Copy a host directory into the image and preopen it as GUEST (default: the same
        /// path; repeatable). Writes stay in guest memory and vanish when the VM ends.
        #[arg(long = "dir", value_name = "HOST[::GUEST]", value_parser = dir_parser())]
        dirs: Vec<DirSpec>,
        /// Sign the image with this Ed25519 private key (from `wasmvm key generate`).
        #[arg(long, value_name = "KEY")]
        sign: Option<PathBuf>,
        #[command(flatten)]
        app: AppArgs,
    },
    /// Boot an image (or pack a module in memory and boot it) and run the app.
    Run(RunArgs),
    // ps, logs, stop, rm: the VMs of `run -d` (src/fleet).
    #[command(flatten)]
    Fleet(crate::fleet::FleetCommand),
    /// Show what an image holds: kernel and ABI version, module, imports, exports, args, env.
    Inspect {
        image: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check this machine: /dev/kvm, QEMU and the embedded kernel.
    Doctor,
    /// Turn an image into a bootable cloud disk (GPT, BIOS and UEFI) for OpenStack,
    /// CloudStack, Proxmox or libvirt.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Manage persistent volumes (FAT disk images that `run --volume` gives to apps).
    Volume {
        #[command(subcommand)]
        command: VolumeCommand,
    },
    /// Manage the Ed25519 keys that sign images (`pack --sign`, `run --verify`).
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
}

/// `wasmvm run`'s arguments; [`RunArgs::options`] turns them into the loader's terms.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// An image from `wasmvm pack`, or a .wasm module.
    pub image: PathBuf,
    /// Boot the image only if it is signed by this Ed25519 public key (PREFIX.pub from
    /// `wasmvm key generate`) and unchanged since.
    #[arg(long, value_name = "PUBKEY")]
    pub verify: Option<PathBuf>,
    /// Share a live host directory with the app, preopened as GUEST (default: the same
    /// path; repeatable): the app reads the host's files and the host sees its writes.
    #[arg(long = "dir", value_name = "HOST[::GUEST]", value_parser = dir_parser())]
    pub dirs: Vec<DirSpec>,
    /// Like --dir, but the app may not change anything in it.
    #[arg(long = "dir-ro", value_name = "HOST[::GUEST]", value_parser = dir_parser())]
    pub dirs_ro: Vec<DirSpec>,
    /// Give the app a persistent volume (from `wasmvm volume create`) as directory GUEST
    /// (repeatable); its files are written back when the VM ends.
    #[arg(long = "volume", value_name = "IMAGE::GUEST", value_parser = volume_parser())]
    pub volumes: Vec<VolumeSpec>,
    /// Forward a host port to a port of the app (repeatable; TCP unless /udp). The host
    /// address defaults to every interface (0.0.0.0).
    #[arg(
        short = 'p',
        long = "publish",
        value_name = "[HOST_ADDR:]HOST_PORT:GUEST_PORT[/tcp|/udp]",
        value_parser = parse_publish
    )]
    pub publish: Vec<Publish>,
    /// Publish every TCP port the app listens on (packed, or given with `--listen`) on the
    /// same host port, on every interface: what a container runtime wants for a pod's
    /// address.
    #[arg(short = 'P', long = "publish-all")]
    pub publish_all: bool,
    /// The VM's network: user (user-mode, unprivileged), none, or tap:IFNAME (an
    /// existing tap device). Default: user if the app listens, -p is given or the module
    /// imports socket functions; otherwise none.
    #[arg(long, value_name = "user|none|tap:IFNAME", value_parser = parse_network)]
    pub network: Option<NetworkMode>,
    /// With --network tap: the app's static address (default: ask DHCP).
    #[arg(long, value_name = "ADDR/PREFIX", value_parser = parse_cidr, requires = "gateway")]
    pub ip: Option<(std::net::Ipv4Addr, u8)>,
    /// With --ip: the default gateway (also used as DNS server).
    #[arg(long, value_name = "ADDR", requires = "ip")]
    pub gateway: Option<std::net::Ipv4Addr>,
    #[command(flatten)]
    pub app: AppArgs,
    /// Stop the VM after this long (e.g. 500ms, 30s, 2m; a bare number is seconds).
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<std::time::Duration>,
    /// Guest RAM (e.g. 256M, 1G; a bare number is MiB). Default: from the module's needs.
    #[arg(long, value_parser = parse_memory)]
    pub memory: Option<u64>,
    /// Which virtual machine monitor runs the image [default: builtin; qemu with
    /// --accel tcg].
    #[arg(long, value_enum)]
    pub vmm: Option<Vmm>,
    /// Acceleration: kvm, or tcg (QEMU's software emulation, for hosts without /dev/kvm).
    #[arg(long, value_enum, default_value_t = AccelArg::Kvm)]
    pub accel: AccelArg,
    /// Print boot timings and kernel log lines to stderr.
    #[arg(short, long)]
    pub verbose: bool,
    /// Back guest RAM with 4 KiB pages only (built-in VMM): ~4-5 MiB less resident memory
    /// per VM, ~10 ms slower start on a nested host.
    #[arg(long)]
    pub no_huge_pages: bool,
    /// How the built-in VMM enters the kernel (for tests of the PVH path).
    #[arg(long, value_enum, default_value_t = BootArg::Direct, hide = true)]
    pub boot: BootArg,
    // -d, --name, --restart: run in the background (src/fleet, docs/cli.md).
    #[command(flatten)]
    pub detach: crate::fleet::DetachArgs,
}

/// Which backend a run asked for, with its own settings.
pub enum BackendChoice {
    Builtin(wasmvm_loader::vmm::Builtin),
    Qemu(wasmvm_loader::qemu::Qemu),
    Host,
}

impl RunArgs {
    /// The run options every backend honours, converted and checked here and nowhere else.
    /// Per-image settings (argv, env, listeners) are added by the caller, which knows
    /// whether the target is an image or a module.
    pub fn options(&self) -> Result<RunOptions, String> {
        let shares = self
            .dirs
            .iter()
            .map(|d| (d, false))
            .chain(self.dirs_ro.iter().map(|d| (d, true)))
            .map(|(d, read_only)| ShareSpec {
                host: d.host.clone(),
                guest: d.guest.clone(),
                read_only,
            })
            .collect();
        let tap_config = match (self.ip, self.gateway) {
            (Some((addr, prefix_len)), Some(gateway)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(prefix_len))
                    .unwrap_or(0);
                if u32::from(addr) & mask != u32::from(gateway) & mask {
                    return Err(format!(
                        "--gateway {gateway} is not in the network of --ip {addr}/{prefix_len}"
                    ));
                }
                Some(wasmvm_abi::net::NetConfig {
                    addr: addr.octets(),
                    prefix_len,
                    gateway: gateway.octets(),
                    dns: gateway.octets(),
                    mtu: wasmvm_loader::run::network::TAP_MTU,
                })
            }
            _ => None,
        };
        Ok(RunOptions {
            memory_mib: self.memory,
            timeout: self.timeout,
            shares,
            volumes: self.volumes.clone(),
            network: self.network.clone(),
            publish: self.publish.clone(),
            publish_all: self.publish_all,
            tap_config,
            // Set by a fleet supervisor for its VMM (see fleet::supervisor).
            flush_mark: std::env::var_os(crate::fleet::FLUSH_MARK_ENV).map(PathBuf::from),
            ..RunOptions::default()
        })
    }

    /// The backend `--vmm`, `--accel`, `--boot` and `--no-huge-pages` ask for.
    pub fn backend(&self) -> Result<BackendChoice, String> {
        use wasmvm_loader::qemu::{Accel, Qemu};
        use wasmvm_loader::vmm::{BootPath, Builtin};
        let vmm = self.vmm.unwrap_or(match self.accel {
            AccelArg::Kvm => Vmm::Builtin,
            AccelArg::Tcg => Vmm::Qemu,
        });
        if self.no_huge_pages && vmm != Vmm::Builtin {
            return Err("--no-huge-pages is for the built-in VMM's guest RAM".into());
        }
        Ok(match vmm {
            Vmm::Builtin if self.accel == AccelArg::Tcg => {
                return Err("--accel tcg is QEMU's software emulation; the built-in VMM needs KVM (use --vmm qemu --accel tcg)".into());
            }
            Vmm::Builtin => BackendChoice::Builtin(Builtin {
                // The CLI confines the VMM's threads; embedders choose.
                seccomp: true,
                boot: match self.boot {
                    BootArg::Direct => BootPath::Best,
                    BootArg::Pvh => BootPath::Pvh,
                },
                huge_pages: !self.no_huge_pages,
                ..Builtin::default()
            }),
            Vmm::Qemu => BackendChoice::Qemu(Qemu {
                accel: match self.accel {
                    AccelArg::Kvm => Accel::Kvm,
                    AccelArg::Tcg => Accel::Tcg,
                },
                ..Qemu::default()
            }),
            Vmm::Host => BackendChoice::Host,
        })
    }
}

/// `--dir HOST[::GUEST]`, on raw bytes (paths need not be UTF-8).
fn dir_parser() -> impl TypedValueParser<Value = DirSpec> {
    clap::builder::OsStringValueParser::new().try_map(|s: OsString| DirSpec::parse(&s))
}

/// `--volume IMAGE::GUEST`, on raw bytes.
fn volume_parser() -> impl TypedValueParser<Value = VolumeSpec> {
    clap::builder::OsStringValueParser::new().try_map(|s: OsString| parse_volume(&s))
}

pub fn parse_volume(spec: &std::ffi::OsStr) -> Result<VolumeSpec, String> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = spec.as_bytes();
    let at = bytes
        .windows(2)
        .position(|w| w == b"::")
        .filter(|&i| i > 0 && i + 2 < bytes.len());
    let Some(at) = at else {
        return Err(format!(
            "`{}` is not of the form IMAGE::GUEST",
            spec.to_string_lossy()
        ));
    };
    Ok(VolumeSpec {
        image: std::ffi::OsStr::from_bytes(&bytes[..at]).into(),
        guest: bytes[at + 2..].to_vec(),
    })
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Generate a key pair: PREFIX (private, PKCS#8 PEM, mode 0600) and PREFIX.pub (public,
    /// SPKI PEM); prints the public key's fingerprint. Never overwrites.
    Generate {
        /// Where to write the keys: PREFIX and PREFIX.pub.
        #[arg(short, long, value_name = "PREFIX", default_value = "wasmvm-key")]
        output: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Export IMAGE (or a .wasm module, packed first) to a cloud disk or an OCI image. A disk
    /// (raw, qcow2) is what PC firmware boots: GRUB (from Debian's packages) loads the
    /// unchanged image, the app's output goes to the serial console and the VM powers off
    /// when it ends. An OCI image (`--format oci`) is an image layout tarball for
    /// containerd (`ctr images import`), skopeo and registries, platform wasip1/wasm.
    Export {
        /// An image from `wasmvm pack`, or a .wasm module.
        image: PathBuf,
        /// Where to write the disk.
        #[arg(short, long)]
        output: PathBuf,
        /// Output format [default: qcow2 if OUTPUT ends in .qcow2, else raw; an OUTPUT ending
        /// in .tar needs it said].
        #[arg(long, value_enum)]
        format: Option<ExportFormatArg>,
        /// With --format oci: the image's reference, NAME[:TAG] [default: OUTPUT's file stem,
        /// tag `latest`].
        #[arg(long, value_name = "NAME[:TAG]")]
        tag: Option<String>,
        /// Also print a libvirt domain XML for the disk (for `virsh define`) to stdout.
        #[arg(long)]
        libvirt: bool,
        /// With --libvirt: the domain's name [default: the output's file stem].
        #[arg(long, requires = "libvirt")]
        name: Option<String>,
        /// With --libvirt: the firmware that boots the disk.
        #[arg(long, value_enum, default_value_t = FirmwareArg::Bios, requires = "libvirt")]
        firmware: FirmwareArg,
        /// With --libvirt: guest RAM (e.g. 256M, 1G) [default: what the app needs plus
        /// room for firmware, at least 256 MiB].
        #[arg(long, value_parser = parse_memory, requires = "libvirt")]
        memory: Option<u64>,
        /// With --libvirt: attach a virtio NIC to this libvirt network (the app gets its
        /// address by DHCP) [default: `default` if the app listens, else none]. `none`
        /// for no NIC.
        #[arg(long, value_name = "NETWORK", requires = "libvirt")]
        network: Option<String>,
    },
    /// Write a run configuration (arguments, environment, argv[0]) as the file another VMM
    /// passes to the image as its initrd (Firecracker's `initrd_path`, Cloud Hypervisor's
    /// `--initramfs`): the app then gets these instead of its packed ones.
    RunConfig {
        /// Where to write it.
        #[arg(short, long)]
        output: PathBuf,
        /// Set an environment variable for the app (repeatable).
        #[arg(long = "env", value_name = "KEY=VALUE")]
        env: Vec<OsString>,
        /// argv[0] as the app sees it.
        #[arg(long, value_name = "NAME")]
        argv0: Option<OsString>,
        /// Arguments for the app, after `--` (replacing the packed ones).
        #[arg(last = true, value_name = "ARGS")]
        args: Vec<OsString>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormatArg {
    /// A raw disk.
    Raw,
    /// A qcow2 disk.
    Qcow2,
    /// An OCI image layout tarball.
    Oci,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FirmwareArg {
    /// SeaBIOS (libvirt's default).
    Bios,
    /// OVMF.
    Uefi,
}

#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Create an empty volume (a sparse FAT image any host can read, e.g. with mtools).
    Create {
        /// Where to write it; never overwritten.
        image: PathBuf,
        /// Capacity (e.g. 64M, 1G; 1M to 2T).
        #[arg(long, value_parser = parse_size)]
        size: u64,
    },
}

/// Options recorded in the image by `pack`, or overriding them at `run`.
#[derive(Debug, Args, Clone)]
pub struct AppArgs {
    /// Set an environment variable for the app (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<OsString>,
    /// Read environment variables from FILE: KEY=VALUE lines (blank lines and lines
    /// starting with # skipped), or NUL-terminated entries if the file holds a NUL byte
    /// (values with newlines); before any --env (repeatable)
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_files: Vec<PathBuf>,
    /// argv[0] as the app sees it (default: the module's file name).
    #[arg(long, value_name = "NAME")]
    pub argv0: Option<OsString>,
    /// Run a reactor module: call `_initialize` (if exported), then EXPORT; an i32 result
    /// becomes the exit status.
    #[arg(long, value_name = "EXPORT")]
    pub invoke: Option<String>,
    /// Link function imports wasmvm does not provide as stubs that return zero values.
    #[arg(long)]
    pub stub_imports: bool,
    /// The engine that runs the module: wasmi (interpreted; the default) or wasmtime (compiled
    /// with Cranelift now, run natively in the VM). Default: wasmi, unless the module needs
    /// the compiled engine (exception handling).
    #[arg(long, value_enum, value_name = "wasmi|wasmtime")]
    pub engine: Option<EngineArg>,
    /// Give the app a listening TCP socket on [ADDR:]PORT in the VM (repeatable; preopened
    /// after the directories). At `run`, replaces the image's listeners.
    #[arg(long = "listen", value_name = "[ADDR:]PORT", value_parser = parse_listen)]
    pub listens: Vec<Listen>,
    /// Arguments for the app, after `--`.
    #[arg(last = true, value_name = "ARGS")]
    pub args: Vec<OsString>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EngineArg {
    /// The wasmi interpreter: no compile step.
    Wasmi,
    /// wasmtime's runtime on code Cranelift compiled at pack time: native speed, and
    /// exception handling.
    Wasmtime,
}

impl EngineArg {
    pub fn engine(self) -> wasmvm_abi::bundle::Engine {
        match self {
            EngineArg::Wasmi => wasmvm_abi::bundle::Engine::Wasmi,
            EngineArg::Wasmtime => wasmvm_abi::bundle::Engine::Wasmtime,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Vmm {
    /// wasmvm's own KVM micro-VMM: no QEMU needed, starts in milliseconds.
    Builtin,
    /// QEMU `-M microvm` on KVM (or TCG with `--accel tcg`), the compatibility backend.
    Qemu,
    /// No VM: the same image on the host with wasmi and wasi-common, the reference
    /// behaviour the VM is tested against. Ignores --accel and --memory.
    Host,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BootArg {
    /// The 64-bit CPL-3 entry (`wasmvm_abi::direct`), falling back to PVH.
    Direct,
    /// The 32-bit PVH entry QEMU uses.
    Pvh,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AccelArg {
    Kvm,
    Tcg,
}

/// `[ADDR:]PORT` of `--listen`.
pub fn parse_listen(s: &str) -> Result<Listen, String> {
    Listen::parse(s).map_err(|why| format!("`{s}`: {why}"))
}

/// `-p/--publish`.
pub fn parse_publish(s: &str) -> Result<Publish, String> {
    Publish::parse(s)
}

/// `--network`.
pub fn parse_network(s: &str) -> Result<NetworkMode, String> {
    NetworkMode::parse(s)
}

/// `--ip ADDR/PREFIX`.
pub fn parse_cidr(s: &str) -> Result<(std::net::Ipv4Addr, u8), String> {
    wasmvm_loader::run::network::parse_cidr(s)
}

/// A byte count: `512K`, `64M`, `1G`, `2T`, or a bare number of bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let upper = s.to_ascii_uppercase();
    let trimmed = upper.trim_end_matches("IB").trim_end_matches('B');
    let (num, shift) = match trimmed.chars().last() {
        Some('K') => (&trimmed[..trimmed.len() - 1], 10),
        Some('M') => (&trimmed[..trimmed.len() - 1], 20),
        Some('G') => (&trimmed[..trimmed.len() - 1], 30),
        Some('T') => (&trimmed[..trimmed.len() - 1], 40),
        _ => (trimmed, 0),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("`{s}` is not a size like 64M or 1G"))
}

/// `500ms`, `30s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 30s or 500ms"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (use ms, s, m or h)")),
    };
    if !secs.is_finite() || secs <= 0.0 || secs > 1e9 {
        return Err(format!("`{s}` is not a positive duration"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// `256M`, `1G`, `65536K`, or a bare number of MiB; returns MiB.
pub fn parse_memory(s: &str) -> Result<u64, String> {
    let upper = s.to_ascii_uppercase();
    let trimmed = upper.trim_end_matches("IB").trim_end_matches('B');
    let (num, mul_kib) = match trimmed.chars().last() {
        Some('K') => (&trimmed[..trimmed.len() - 1], 1u64),
        Some('M') => (&trimmed[..trimmed.len() - 1], 1024),
        Some('G') => (&trimmed[..trimmed.len() - 1], 1024 * 1024),
        _ => (trimmed, 1024),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size like 512M or 1G"))?;
    let mib = n.saturating_mul(mul_kib) / 1024;
    if !(16..=3072).contains(&mib) {
        return Err(format!("`{s}`: guest memory must be between 16M and 3G"));
    }
    Ok(mib)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("big").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5y").is_err());
        assert!(parse_duration("0s").is_err());
    }

    #[test]
    fn network_flags() {
        use clap::Parser;
        let cli = Cli::try_parse_from([
            "wasmvm",
            "run",
            "a.img",
            "-p",
            "8080:80",
            "--publish",
            "127.0.0.1:53:53/udp",
            "--listen",
            "80",
            "--network",
            "user",
        ])
        .unwrap();
        let Command::Run(run) = cli.command else {
            panic!("not run");
        };
        assert_eq!(run.publish.len(), 2);
        assert_eq!(run.network, Some(NetworkMode::User));
        assert_eq!(run.app.listens, [Listen::parse("80").unwrap()]);
        for (bad, says) in [
            (&["-p", "80"][..], "`80`"),
            (&["--listen", "99999"], "`99999`"),
            (&["--network", "bridge"], "`bridge`"),
            (&["--ip", "10.1.1.2/24"], "--gateway"),
        ] {
            let e = Cli::try_parse_from(["wasmvm", "run", "a.img"].iter().chain(bad))
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
        let cli = Cli::try_parse_from([
            "wasmvm",
            "pack",
            "a.wasm",
            "-o",
            "a.img",
            "--listen",
            "1.2.3.4:8",
        ])
        .unwrap();
        let Command::Pack { app, .. } = cli.command else {
            panic!("not pack");
        };
        assert_eq!(app.listens[0].to_string(), "1.2.3.4:8");
    }

    fn run_args(extra: &[&str]) -> Result<RunArgs, String> {
        use clap::Parser;
        let cli = Cli::try_parse_from(["wasmvm", "run", "a.img"].iter().chain(extra))
            .map_err(|e| e.to_string())?;
        match cli.command {
            Command::Run(run) => Ok(run),
            _ => panic!("not run"),
        }
    }

    #[test]
    fn run_arguments_are_converted_in_one_place() {
        let run = run_args(&[
            "--dir",
            "/srv::/data",
            "--dir-ro",
            "/etc/app",
            "--volume",
            "v.img::/v",
            "--network",
            "tap:tap0",
            "--ip",
            "10.1.1.2/24",
            "--gateway",
            "10.1.1.1",
        ])
        .unwrap();
        let opts = run.options().unwrap();
        let shares: Vec<_> = opts
            .shares
            .iter()
            .map(|s| (s.host.to_str().unwrap(), &s.guest[..], s.read_only))
            .collect();
        assert_eq!(
            shares,
            [
                ("/srv", &b"/data"[..], false),
                ("/etc/app", b"/etc/app", true)
            ]
        );
        assert_eq!(opts.volumes[0].image, std::path::Path::new("v.img"));
        assert_eq!(opts.volumes[0].guest, b"/v");
        let tap = opts.tap_config.unwrap();
        assert_eq!((tap.addr, tap.prefix_len), ([10, 1, 1, 2], 24));

        let bad = run_args(&["--ip", "10.1.1.2/24", "--gateway", "10.9.9.9"]).unwrap();
        assert!(bad.options().unwrap_err().contains("not in the network"));
        for (bad, says) in [
            (&["--volume", "v.img"][..], "IMAGE::GUEST"),
            (&["--volume", "::/v"], "IMAGE::GUEST"),
            (&["--dir", "::"], "HOST[::GUEST]"),
        ] {
            let e = run_args(bad).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }

    #[test]
    fn run_arguments_choose_the_backend() {
        let choice = |extra: &[&str]| run_args(extra).unwrap().backend();
        assert!(matches!(choice(&[]), Ok(BackendChoice::Builtin(b)) if b.seccomp));
        assert!(matches!(
            choice(&["--accel", "tcg"]),
            Ok(BackendChoice::Qemu(_))
        ));
        assert!(matches!(
            choice(&["--vmm", "host"]),
            Ok(BackendChoice::Host)
        ));
        let e = choice(&["--vmm", "builtin", "--accel", "tcg"])
            .err()
            .unwrap();
        assert!(e.contains("needs KVM"), "{e}");
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("512M"), Ok(512));
        assert_eq!(parse_memory("1G"), Ok(1024));
        assert_eq!(parse_memory("1GiB"), Ok(1024));
        assert_eq!(parse_memory("256"), Ok(256));
        assert_eq!(parse_memory("65536K"), Ok(64));
        assert!(parse_memory("4G").is_err());
        assert!(parse_memory("lots").is_err());
    }
}
