//! The container's cgroup: made by the shim (cgroupfs layout, v1 or v2) with the spec's
//! limits, joined by the container's process before it runs anything, removed at delete.

use std::ffi::CString;
use std::path::{Component, Path};
use std::time::{Duration, Instant};

use cgroups_rs::fs::{Cgroup, hierarchies};
use oci_spec::runtime::{LinuxResources, Spec};

/// Checks `linux.cgroupsPath`: relative to the hierarchies' roots, without `..`, not a
/// systemd `slice:prefix:name`, and naming something below the root.
pub fn checked_path(path: &str) -> Result<String, String> {
    if path.contains(':') {
        return Err(format!(
            "the cgroup path `{path}` is in systemd's slice:prefix:name form, which the wasmvm shim does not manage: use containerd's cgroupfs driver for this runtime"
        ));
    }
    let rel = path.trim_start_matches('/');
    let p = Path::new(rel);
    if rel.is_empty() || p.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(format!(
            "the cgroup path `{path}` must name a cgroup below the root, without `..`"
        ));
    }
    Ok(rel.to_string())
}

/// Creates the cgroup at `path` (checked) with the spec's limits. A cgroup that already
/// exists is refused: the shim only ever removes (and kills) what it made.
pub fn create(path: &str, spec: &Spec) -> Result<Cgroup, String> {
    let rel = checked_path(path)?;
    if Cgroup::load(hierarchies::auto(), &rel).exists() {
        return Err(format!(
            "the cgroup {path} already exists: a container of that id is still there or was not cleaned up"
        ));
    }
    let cg = Cgroup::new(hierarchies::auto(), &rel)
        .map_err(|e| format!("cannot create the cgroup {path}: {e}"))?;
    let resources = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
    if let Some(resources) = resources
        && let Err(e) = apply_limits(&cg, resources)
    {
        let _ = cg.delete();
        return Err(format!("cannot set the limits of the cgroup {path}: {e}"));
    }
    if procs_files(&cg).is_empty() {
        let _ = cg.delete();
        return Err(format!(
            "cannot put the container in its cgroup {path}: no cgroup hierarchy is mounted at /sys/fs/cgroup"
        ));
    }
    Ok(cg)
}

/// Sets the spec's limits. cgroup v1 through containerd-shim's own code (runc's v1 files);
/// v2 by hand, with runc's conversions, which that code lacks: shares become a weight, the
/// spec's swap (memory plus swap) becomes swap alone, and `unified` is written as given.
fn apply_limits(cg: &Cgroup, resources: &LinuxResources) -> Result<(), String> {
    if !cg.v2() {
        return containerd_shim::cgroup::update_resources(cg, resources).map_err(|e| e.to_string());
    }
    let dir = cg
        .subsystems()
        .first()
        .map(|s| s.to_controller().path().to_path_buf())
        .ok_or("no cgroup v2 controllers")?;
    for (file, value) in v2_limits(resources)? {
        if let Err(e) = std::fs::write(dir.join(&file), &value) {
            // A host without swap accounting has no memory.swap.max: fine when no swap is
            // asked for.
            if file == "memory.swap.max" && value == "0" && e.kind() == std::io::ErrorKind::NotFound
            {
                continue;
            }
            return Err(format!("{file} = {value}: {e}"));
        }
    }
    Ok(())
}

/// The cgroup v2 files and values for `resources`, in the order they must be written.
fn v2_limits(resources: &LinuxResources) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut set = |file: &str, value: String| out.push((file.to_string(), value));
    if let Some(m) = resources.memory() {
        let limit = m.limit().filter(|&l| l != 0);
        if let Some(limit) = limit {
            set(
                "memory.max",
                if limit < 0 {
                    "max".into()
                } else {
                    limit.to_string()
                },
            );
        }
        if let Some(swap) = m.swap().filter(|&s| s != 0) {
            let value = match (swap, limit) {
                (s, _) if s < 0 => "max".to_string(),
                (s, Some(l)) if l > 0 => s.saturating_sub(l).max(0).to_string(),
                (s, _) => s.to_string(),
            };
            set("memory.swap.max", value);
        }
    }
    if let Some(cpu) = resources.cpu() {
        if let Some(shares) = cpu.shares().filter(|&s| s != 0) {
            // runc's mapping of [2, 262144] onto [1, 10000].
            let shares = shares.clamp(2, 262_144);
            set(
                "cpu.weight",
                (1 + ((shares - 2) * 9999) / 262_142).to_string(),
            );
        }
        if cpu.quota().is_some() || cpu.period().is_some() {
            let quota = match cpu.quota() {
                Some(q) if q > 0 => q.to_string(),
                _ => "max".into(),
            };
            set(
                "cpu.max",
                format!("{quota} {}", cpu.period().unwrap_or(100_000)),
            );
        }
        if let Some(cpus) = cpu.cpus().as_ref().filter(|c| !c.is_empty()) {
            set("cpuset.cpus", cpus.clone());
        }
        if let Some(mems) = cpu.mems().as_ref().filter(|m| !m.is_empty()) {
            set("cpuset.mems", mems.clone());
        }
    }
    if let Some(pids) = resources.pids() {
        let limit = pids.limit();
        set(
            "pids.max",
            if limit > 0 {
                limit.to_string()
            } else {
                "max".into()
            },
        );
    }
    for (file, value) in resources.unified().iter().flatten() {
        if file.contains('/') || file.starts_with('.') || !file.contains('.') {
            return Err(format!("`{file}` is not a cgroup v2 file name"));
        }
        set(file, value.clone());
    }
    Ok(out)
}

/// `cgroup.procs` of each hierarchy of `cg`, once each (v1 mounts some controllers
/// together), for the forked child to write itself into.
pub fn procs_files(cg: &Cgroup) -> Vec<CString> {
    let mut files: Vec<CString> = Vec::new();
    for sub in cg.subsystems() {
        let file = sub.to_controller().path().join("cgroup.procs");
        let Ok(c) = CString::new(file.into_os_string().into_encoded_bytes()) else {
            continue;
        };
        if !files.contains(&c) {
            files.push(c);
        }
    }
    files
}

/// Kills what is left in `cg` (passt outliving its VMM) and removes it, waiting (bounded)
/// for the killed processes to leave: a cgroup with processes cannot be removed.
pub fn remove(cg: &Cgroup) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let procs = cg.procs();
        for p in &procs {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p.pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        match cg.delete() {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(format!("{e} ({} processes left)", procs.len()));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// The cgroup a dead shim's container had, if it is there (containerd's `delete` action).
pub fn remove_leftover(path: &str) {
    let Ok(rel) = checked_path(path) else { return };
    let cg = Cgroup::load(hierarchies::auto(), rel);
    if cg.exists()
        && let Err(e) = remove(&cg)
    {
        log::warn!("cannot remove the cgroup {path}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resources(json: &str) -> LinuxResources {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn v2_limits_convert_shares_and_swap_as_runc_does() {
        let r = resources(
            r#"{"memory":{"limit":134217728,"swap":134217728},"cpu":{"shares":1024,"quota":50000,"period":100000},"pids":{"limit":64},"unified":{"memory.oom.group":"1"}}"#,
        );
        let limits = v2_limits(&r).unwrap();
        let get = |f: &str| limits.iter().find(|(k, _)| k == f).map(|(_, v)| v.as_str());
        assert_eq!(get("memory.max"), Some("134217728"));
        assert_eq!(
            get("memory.swap.max"),
            Some("0"),
            "swap = limit means no swap"
        );
        assert_eq!(get("cpu.weight"), Some("39"));
        assert_eq!(get("cpu.max"), Some("50000 100000"));
        assert_eq!(get("pids.max"), Some("64"));
        assert_eq!(get("memory.oom.group"), Some("1"));
        // 10 CPUs of shares stays within cpu.weight's range.
        let big = v2_limits(&resources(r#"{"cpu":{"shares":262144}}"#)).unwrap();
        assert_eq!(big, [("cpu.weight".to_string(), "10000".to_string())]);
        let unlimited = v2_limits(&resources(r#"{"memory":{"limit":-1,"swap":-1}}"#)).unwrap();
        assert_eq!(unlimited[0].1, "max");
        assert_eq!(unlimited[1].1, "max");
        assert!(v2_limits(&resources(r#"{"unified":{"../x":"1"}}"#)).is_err());
    }

    #[test]
    fn cgroup_paths_stay_below_the_root() {
        assert_eq!(checked_path("/default/c1").as_deref(), Ok("default/c1"));
        assert_eq!(
            checked_path("kubepods/pod1/c1").as_deref(),
            Ok("kubepods/pod1/c1")
        );
        for bad in ["/", "", "/a/../../etc", "system.slice:cri:c1"] {
            assert!(checked_path(bad).is_err(), "{bad}");
        }
    }
}
