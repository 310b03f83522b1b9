//! What a container's `config.json` asks for, turned once into what the shim will do: the
//! [`Plan`]. Everything a VM cannot give is refused here, with the sentence the container's
//! log then shows, so the rest of the shim never looks at the OCI spec again.

use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

/// The annotation CRI puts on a pod's sandbox (pause) container.
const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";

/// Memory the cgroup limit must leave beside guest RAM: the VMM process itself (its code,
/// heap, vCPU thread stacks and output queues, ~6 MiB), the KVM page tables charged to the
/// cgroup, passt when the VM has a network (~4 MiB), and headroom for page cache of shared
/// directories. docs/deploy.md names it; with it a limit never OOM-kills a healthy VM.
pub const VMM_OVERHEAD_MIB: u64 = 48;

/// Guest RAM bounds, as `wasmvm run --memory` takes them.
pub const MIN_GUEST_MIB: u64 = 16;
pub const MAX_GUEST_MIB: u64 = 3072;

/// What one container becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub role: Role,
    /// `linux.cgroupsPath`, when the container asks for one.
    pub cgroups_path: Option<String>,
    pub network: Network,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// A VM running the app.
    App(App),
    /// CRI's pod sandbox: a placeholder process that only waits to be stopped (the pod's
    /// network namespace is made by CRI itself, not held by this process).
    Placeholder,
    /// The container cannot run as a VM: at start it writes this to its stderr and exits
    /// with [`REFUSED_STATUS`], and the shim serves its other containers on.
    Refused(String),
}

/// The status of a refused container: the one `wasmvm run` gives its own refusals.
pub const REFUSED_STATUS: i32 = 253;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct App {
    /// The image or module, relative to the container's root file system.
    pub entry: PathBuf,
    pub argv0: String,
    pub args: Vec<String>,
    pub env: Vec<String>,
    /// Guest RAM, from the memory limit; `None` lets wasmvm size it.
    pub memory_mib: Option<u64>,
    /// Bind mounts of directories, shared live with the app.
    pub shares: Vec<Share>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    pub host: PathBuf,
    pub guest: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    /// No network namespace in the spec: the VMM stays in the shim's (`--net-host`).
    Host,
    /// A new, empty network namespace (`ctr run` without `--net-host`): the VM gets no
    /// network, as a runc container gets only a loopback that is down.
    None,
    /// Join this namespace (a CRI pod's, made by CRI and its CNI plugins).
    Join(PathBuf),
}

impl Plan {
    /// Reads what `spec` asks for. Never fails: what a VM cannot give becomes
    /// [`Role::Refused`], so that the container, not the shim, reports it.
    pub fn from_spec(spec: &Spec) -> Plan {
        let linux = spec.linux().as_ref();
        let cgroups_path = linux
            .and_then(|l| l.cgroups_path().as_ref())
            .map(|p| p.to_string_lossy().into_owned())
            .filter(|p| !p.is_empty());
        let network = network(spec);
        let placeholder = spec
            .annotations()
            .as_ref()
            .and_then(|a| a.get(CRI_CONTAINER_TYPE))
            .is_some_and(|t| t == "sandbox");
        let role = if placeholder {
            Role::Placeholder
        } else {
            match app(spec) {
                Ok(app) => Role::App(app),
                Err(why) => Role::Refused(why),
            }
        };
        Plan {
            role,
            cgroups_path,
            network,
        }
    }
}

fn network(spec: &Spec) -> Network {
    let namespaces = spec.linux().as_ref().and_then(|l| l.namespaces().as_ref());
    let Some(ns) = namespaces
        .into_iter()
        .flatten()
        .find(|ns| ns.typ() == LinuxNamespaceType::Network)
    else {
        return Network::Host;
    };
    match ns.path() {
        Some(path) if !path.as_os_str().is_empty() => Network::Join(path.clone()),
        _ => Network::None,
    }
}

fn app(spec: &Spec) -> Result<App, String> {
    let process = spec
        .process()
        .as_ref()
        .ok_or("the container has no process to run")?;
    if process.terminal().unwrap_or(false) {
        return Err(
            "a terminal (-t) is not supported: a wasmvm VM writes plain stdout and stderr".into(),
        );
    }
    // Before devices: privileged mode also passes every host device.
    if privileged(spec) {
        return Err("privileged mode is not supported: a wasmvm app runs in a VM and has no host capabilities to raise".into());
    }
    if let Some(linux) = spec.linux()
        && linux.devices().as_ref().is_some_and(|d| !d.is_empty())
    {
        return Err("devices cannot be given to a wasmvm VM (linux.devices)".into());
    }
    let args = process.args().clone().unwrap_or_default();
    let Some(first) = args.first() else {
        return Err(
            "the image names no module to run (no entrypoint or command in its config)".into(),
        );
    };
    let entry = entry_path(first)?;
    let mut env = process.env().clone().unwrap_or_default();
    // WASI preview1 has no working directory (relative paths resolve against the
    // preopened directories), so the spec's is passed on as PWD, as shells do.
    let cwd = process.cwd().to_string_lossy().into_owned();
    if cwd != "/" && !cwd.is_empty() && !env.iter().any(|e| e.starts_with("PWD=")) {
        env.push(format!("PWD={cwd}"));
    }
    Ok(App {
        argv0: first.clone(),
        entry,
        args: args[1..].to_vec(),
        env,
        memory_mib: memory_mib(spec)?,
        shares: shares(spec),
    })
}

/// The entrypoint as a path inside the root file system: absolute, without `..`.
fn entry_path(arg: &str) -> Result<PathBuf, String> {
    let path = Path::new(arg);
    if !path.is_absolute() {
        return Err(format!(
            "the entrypoint `{arg}` is not an absolute path to a wasm module or wasmvm image in the image"
        ));
    }
    let mut rel = PathBuf::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => rel.push(part),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(format!("the entrypoint `{arg}` leaves the image (`..`)"));
            }
        }
    }
    if rel.as_os_str().is_empty() {
        return Err(format!("the entrypoint `{arg}` names no file"));
    }
    Ok(rel)
}

/// `--privileged` (ctr) and a privileged CRI container both grant CAP_SYS_ADMIN.
fn privileged(spec: &Spec) -> bool {
    let caps = spec
        .process()
        .as_ref()
        .and_then(|p| p.capabilities().as_ref());
    caps.and_then(|c| c.bounding().as_ref())
        .is_some_and(|set| set.contains(&oci_spec::runtime::Capability::SysAdmin))
}

/// Guest RAM under the memory limit: the limit minus [`VMM_OVERHEAD_MIB`], at most what
/// wasmvm can give.
fn memory_mib(spec: &Spec) -> Result<Option<u64>, String> {
    let limit = spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit())
        .filter(|&l| l > 0);
    let Some(limit) = limit else {
        return Ok(None);
    };
    let limit_mib = limit as u64 >> 20;
    let guest = limit_mib.saturating_sub(VMM_OVERHEAD_MIB);
    if guest < MIN_GUEST_MIB {
        return Err(format!(
            "the memory limit ({limit_mib} MiB) is too small for a VM: it needs at least {} MiB ({MIN_GUEST_MIB} MiB of guest RAM and {VMM_OVERHEAD_MIB} MiB for the VMM)",
            MIN_GUEST_MIB + VMM_OVERHEAD_MIB
        ));
    }
    Ok(Some(guest.min(MAX_GUEST_MIB)))
}

/// Bind mounts of host directories (volumes, config maps, secrets) become live shares.
/// The rest is what every container gets and a VM has no use for: /proc, /sys, /dev, and
/// CRI's single-file binds (/etc/hosts, /etc/resolv.conf, /dev/termination-log).
fn shares(spec: &Spec) -> Vec<Share> {
    let mut out = Vec::new();
    for m in spec.mounts().iter().flatten() {
        let options = m.options().clone().unwrap_or_default();
        let bind = m.typ().as_deref() == Some("bind")
            || options.iter().any(|o| o == "bind" || o == "rbind");
        let Some(source) = m.source() else { continue };
        let guest = m.destination().to_string_lossy().into_owned();
        let system = ["/dev", "/proc", "/sys"]
            .iter()
            .any(|dir| m.destination().starts_with(dir));
        if !bind || !source.is_dir() || system {
            continue;
        }
        out.push(Share {
            host: source.clone(),
            guest,
            read_only: options.iter().any(|o| o == "ro"),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Spec {
        serde_json::from_str(json).unwrap()
    }

    fn refused(json: &str) -> String {
        match Plan::from_spec(&spec(json)).role {
            Role::Refused(why) => why,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn an_app_takes_args_env_cwd_memory_and_network_from_the_spec() {
        let plan = Plan::from_spec(&spec(
            r#"{"ociVersion":"1.0.2","process":{"cwd":"/srv","args":["/app.img","a","b"],"env":["K=V"],"user":{"uid":0,"gid":0}},
                "root":{"path":"rootfs"},
                "linux":{"cgroupsPath":"/default/c1","resources":{"memory":{"limit":134217728}},
                         "namespaces":[{"type":"pid"},{"type":"network","path":"/var/run/netns/cni-1"}]}}"#,
        ));
        assert_eq!(plan.cgroups_path.as_deref(), Some("/default/c1"));
        assert_eq!(plan.network, Network::Join("/var/run/netns/cni-1".into()));
        let Role::App(app) = plan.role else { panic!() };
        assert_eq!(app.entry, PathBuf::from("app.img"));
        assert_eq!(app.argv0, "/app.img");
        assert_eq!(app.args, ["a", "b"]);
        assert_eq!(app.env, ["K=V", "PWD=/srv"]);
        assert_eq!(app.memory_mib, Some(128 - VMM_OVERHEAD_MIB));
    }

    #[test]
    fn a_fresh_network_namespace_means_no_network_and_none_means_the_hosts() {
        let fresh = spec(
            r#"{"ociVersion":"1.0.2","process":{"cwd":"/","args":["/a.wasm"],"user":{"uid":0,"gid":0}},"linux":{"namespaces":[{"type":"network"}]}}"#,
        );
        assert_eq!(Plan::from_spec(&fresh).network, Network::None);
        let host = spec(
            r#"{"ociVersion":"1.0.2","process":{"cwd":"/","args":["/a.wasm"],"user":{"uid":0,"gid":0}},"linux":{"namespaces":[{"type":"pid"}]}}"#,
        );
        assert_eq!(Plan::from_spec(&host).network, Network::Host);
    }

    #[test]
    fn the_cri_sandbox_is_a_placeholder() {
        let plan = Plan::from_spec(&spec(
            r#"{"ociVersion":"1.0.2","process":{"cwd":"/","args":["/pause"],"user":{"uid":0,"gid":0}},
                "annotations":{"io.kubernetes.cri.container-type":"sandbox"}}"#,
        ));
        assert_eq!(plan.role, Role::Placeholder);
    }

    #[test]
    fn what_a_vm_cannot_give_is_refused_with_a_reason() {
        let base = |process: &str, linux: &str| {
            format!(
                r#"{{"ociVersion":"1.0.2","process":{{"cwd":"/","user":{{"uid":0,"gid":0}},{process}}},"linux":{{{linux}}}}}"#
            )
        };
        assert!(refused(&base(r#""args":["/a.wasm"],"terminal":true"#, "")).contains("terminal"));
        assert!(
            refused(&base(
                r#""args":["/a.wasm"]"#,
                r#""devices":[{"path":"/dev/fuse","type":"c","major":10,"minor":229}]"#
            ))
            .contains("devices")
        );
        assert!(
            refused(&base(
                r#""args":["/a.wasm"],"capabilities":{"bounding":["CAP_SYS_ADMIN"]}"#,
                ""
            ))
            .contains("privileged")
        );
        assert!(refused(&base(r#""args":[]"#, "")).contains("no module"));
        assert!(refused(&base(r#""args":["sh"]"#, "")).contains("absolute"));
        assert!(refused(&base(r#""args":["/../etc/passwd"]"#, "")).contains("leaves the image"));
        assert!(
            refused(&base(
                r#""args":["/a.wasm"]"#,
                r#""resources":{"memory":{"limit":33554432}}"#
            ))
            .contains("too small")
        );
    }

    #[test]
    fn directory_binds_become_shares_and_the_rest_is_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let file = dir.path().join("hosts");
        std::fs::write(&file, "").unwrap();
        let f = file.to_str().unwrap();
        let plan = Plan::from_spec(&spec(&format!(
            r#"{{"ociVersion":"1.0.2","process":{{"cwd":"/","args":["/a.wasm"],"user":{{"uid":0,"gid":0}}}},
                "mounts":[{{"destination":"/proc","type":"proc","source":"proc"}},
                          {{"destination":"/data","type":"bind","source":"{d}","options":["rbind","rw"]}},
                          {{"destination":"/cfg","source":"{d}","options":["rbind","ro"]}},
                          {{"destination":"/etc/hosts","type":"bind","source":"{f}","options":["rbind"]}}]}}"#
        )));
        let Role::App(app) = plan.role else { panic!() };
        assert_eq!(
            app.shares,
            [
                Share {
                    host: d.into(),
                    guest: "/data".into(),
                    read_only: false
                },
                Share {
                    host: d.into(),
                    guest: "/cfg".into(),
                    read_only: true
                }
            ]
        );
    }
}
