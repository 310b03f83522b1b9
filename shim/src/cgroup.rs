//! The container's cgroup: made by the shim (cgroupfs layout, v1 or v2) with the spec's
//! limits, joined by the container's process before it runs anything, removed at delete.

use std::ffi::CString;
use std::path::{Component, Path};
use std::time::{Duration, Instant};

use cgroups_rs::fs::{Cgroup, hierarchies};
use oci_spec::runtime::Spec;

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
        && let Err(e) = containerd_shim::cgroup::update_resources(&cg, resources)
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
