//! `wasmvm ps`, `logs`, `stop` and `rm`: they read the VMs' state files, check which of the
//! recorded processes still run, and signal them.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rustix::process::Signal;
use serde::Serialize;

use super::state::{Status, Vm, now};
use super::sys::ProcId;

/// How often `logs -f` looks for new output, and `stop` whether the VMs have ended.
const FOLLOW_POLL: Duration = Duration::from_millis(100);
const STOP_POLL: Duration = Duration::from_millis(20);
/// How long `stop` waits for processes it killed with SIGKILL to be gone.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// One line of `ps --json`.
#[derive(Serialize)]
struct Entry {
    name: String,
    /// `starting`, `running`, `restarting`, `exited`, `failed` or `stopped`: what is true
    /// now, not only what was recorded.
    status: Status,
    /// The STATUS column of the table.
    status_text: String,
    exit_code: Option<i32>,
    reason: Option<String>,
    restarts: u32,
    restart: String,
    image: PathBuf,
    args: Vec<String>,
    created_at: u64,
    started_at: Option<u64>,
    finished_at: Option<u64>,
    supervisor_pid: Option<i32>,
    vmm_pid: Option<i32>,
    /// Resident memory of the VMM (guest RAM the guest touched included) and its children
    /// (passt, QEMU), while it runs.
    rss_bytes: Option<u64>,
    log: PathBuf,
}

impl Entry {
    /// A VM whose state file cannot be read.
    fn damaged(vm: &Vm, why: String) -> Entry {
        Entry {
            name: vm.name.clone(),
            status: Status::Failed,
            status_text: "damaged state (see `wasmvm ps --json`; `wasmvm rm` removes it)"
                .to_string(),
            exit_code: None,
            reason: Some(why),
            restarts: 0,
            restart: String::new(),
            image: PathBuf::new(),
            args: Vec::new(),
            created_at: 0,
            started_at: None,
            finished_at: None,
            supervisor_pid: None,
            vmm_pid: None,
            rss_bytes: None,
            log: vm.log_path(),
        }
    }
}

fn is_up(status: Status) -> bool {
    !status.is_final()
}

pub fn ps(all: bool, json: bool) -> Result<i32> {
    let now = now();
    let mut entries = Vec::new();
    for (vm, listed) in Vm::list()? {
        let state = match listed.and_then(|_| vm.observe().map_err(|e| format!("{e:#}"))) {
            Ok(state) => state,
            // Removed since it was listed.
            Err(_) if !vm.dir.exists() => continue,
            // Shown (also without -a: someone must look at it) and named, never hiding the
            // others; `wasmvm rm NAME` removes it.
            Err(why) => {
                entries.push(Entry::damaged(&vm, why));
                continue;
            }
        };
        if !all && !is_up(state.status) {
            continue;
        }
        let running = |p: &Option<ProcId>| p.filter(|_| is_up(state.status));
        let live = |p: Option<ProcId>| running(&p).map(|p| p.pid);
        entries.push(Entry {
            name: vm.name.clone(),
            status: state.status,
            status_text: state.status_text(now),
            exit_code: state.exit_code,
            reason: state.reason.clone(),
            restarts: state.restarts,
            restart: state.restart.to_string(),
            image: state.image.clone(),
            args: state.args.clone(),
            created_at: state.created_at,
            started_at: state.started_at,
            finished_at: state.finished_at,
            supervisor_pid: live(state.supervisor),
            vmm_pid: live(state.vmm),
            rss_bytes: running(&state.vmm).and_then(|p| p.resident_bytes()),
            log: vm.log_path(),
        });
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(0);
    }
    let rows: Vec<[String; 6]> = entries
        .iter()
        .map(|e| {
            [
                e.name.clone(),
                e.status_text.clone(),
                e.vmm_pid.map_or("-".to_string(), |p| p.to_string()),
                e.rss_bytes.map_or("-".to_string(), |b| {
                    format!("{:.1} MiB", b as f64 / f64::from(1 << 20))
                }),
                e.image.file_name().map_or_else(
                    || e.image.display().to_string(),
                    |n| n.to_string_lossy().into_owned(),
                ),
                e.restarts.to_string(),
            ]
        })
        .collect();
    let header = ["NAME", "STATUS", "PID", "MEMORY", "IMAGE", "RESTARTS"].map(String::from);
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = std::io::stdout().lock();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}   "));
            }
        }
        if writeln!(out, "{line}").is_err() {
            break;
        }
    }
    Ok(0)
}

pub fn logs(name: &str, follow: bool) -> Result<i32> {
    let vm = Vm::open(name)?;
    let path = vm.log_path();
    let mut log =
        std::fs::File::open(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = std::io::stdout().lock();
    loop {
        // Whether it had ended before this read: then the read got everything.
        let ended = !follow || vm.observe().map_or(true, |s| s.status.is_final());
        match copy(&mut log, &mut out) {
            Ok(()) => {}
            // `logs -f | head`: the reader is gone.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(0),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
        if ended {
            return Ok(0);
        }
        std::thread::sleep(FOLLOW_POLL);
    }
}

/// Copies what `from` holds from its position to its end.
fn copy(from: &mut std::fs::File, to: &mut impl Write) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match from.read(&mut buf)? {
            0 => return to.flush(),
            n => to.write_all(&buf[..n])?,
        }
    }
}

pub fn stop(names: &[String], grace: Duration) -> Result<i32> {
    let vms = names
        .iter()
        .map(|n| Vm::open(n))
        .collect::<Result<Vec<_>>>()?;
    for name in stop_vms(&vms, grace)? {
        println!("{name}");
    }
    Ok(0)
}

/// A VM being stopped, with every process ever recorded for it since `stop` began (a
/// supervisor may start a VMM meanwhile).
struct Stopping<'a> {
    vm: &'a Vm,
    seen: Vec<ProcId>,
}

impl Stopping<'_> {
    /// Those of its processes that still run.
    fn live(&mut self) -> Vec<ProcId> {
        if let Ok(state) = self.vm.load() {
            for p in state.live_processes() {
                if !self.seen.contains(&p) {
                    self.seen.push(p);
                }
            }
        }
        self.seen.iter().copied().filter(ProcId::alive).collect()
    }
}

/// Whether one of the VM's live processes marks that it is making volumes durable (the
/// mark holds its process id; a mark left by a dead process counts for nothing).
fn flushing(s: &mut Stopping) -> bool {
    let mark = s.vm.dir.join(super::FLUSH_MARK_FILE);
    let Some(pid) = super::state::read_small(&mark, 32)
        .ok()
        .and_then(|t| String::from_utf8(t).ok())
        .and_then(|t| t.trim().parse::<i32>().ok())
    else {
        return false;
    };
    s.live().iter().any(|p| p.pid == pid)
}

/// Waits until none of `vms` has a live process, or `deadline`.
fn wait_ended(vms: &mut [Stopping], deadline: Instant) {
    while Instant::now() < deadline && vms.iter_mut().any(|s| !s.live().is_empty()) {
        std::thread::sleep(STOP_POLL);
    }
}

/// Stops `vms`: SIGTERM to each supervisor (which stops its VMM and records the VM as
/// stopped), or to the VMM of one whose supervisor has died; after `grace`, SIGKILL to
/// whatever still runs, and then records those as stopped itself. Returns the names of the
/// VMs it stopped (not those that had ended already).
fn stop_vms(vms: &[Vm], grace: Duration) -> Result<Vec<String>> {
    let mut pending = Vec::new();
    for vm in vms {
        let state = vm.observe()?;
        let live = state.live_processes();
        if live.is_empty() {
            eprintln!(
                "wasmvm: VM `{}` is not running ({})",
                vm.name,
                state.status_text(now())
            );
            continue;
        }
        // `live` lists the supervisor first.
        live[0]
            .signal(Signal::TERM)
            .with_context(|| format!("cannot stop VM `{}`", vm.name))?;
        pending.push(Stopping { vm, seen: live });
    }
    wait_ended(&mut pending, Instant::now() + grace);
    // A VMM making its volumes durable is never killed: that is the one moment a kill
    // could lose what the app wrote (a checkout being written back). Wait, and say so.
    for s in &mut pending {
        if !flushing(s) {
            continue;
        }
        eprintln!(
            "wasmvm: VM `{}` is saving its volumes; waiting for that to finish",
            s.vm.name
        );
        while flushing(s) {
            std::thread::sleep(STOP_POLL);
        }
        wait_ended(std::slice::from_mut(s), Instant::now() + KILL_WAIT);
        if let Ok(state) = s.vm.load() {
            eprintln!(
                "wasmvm: VM `{}` saved its volumes: {}",
                s.vm.name,
                state.status_text(now())
            );
        }
    }
    let mut killed = Vec::new();
    for s in &mut pending {
        let live = s.live();
        if live.is_empty() {
            continue;
        }
        // The VMM first, so that a supervisor still alive records a stop, not a crash.
        for p in live.iter().rev() {
            let _ = p.signal(Signal::KILL);
        }
        killed.push(s.vm.name.clone());
    }
    wait_ended(&mut pending, Instant::now() + KILL_WAIT);
    let mut stopped = Vec::new();
    for s in &mut pending {
        let vm = s.vm;
        if !s.live().is_empty() {
            bail!("VM `{}` survived SIGKILL", vm.name);
        }
        // Its supervisor recorded the stop, unless it was killed (or had died) first.
        let mut state = vm.load()?;
        if state.status != Status::Stopped {
            state.status = Status::Stopped;
            state.reason = killed
                .contains(&vm.name)
                .then(|| format!("killed after the {}s grace time", grace.as_secs()));
            state.finished_at = Some(now());
            state.supervisor = None;
            state.vmm = None;
            state.creator = None;
            vm.save(&state)?;
        }
        stopped.push(vm.name.clone());
    }
    Ok(stopped)
}

pub fn rm(names: &[String], force: bool) -> Result<i32> {
    let vms = names
        .iter()
        .map(|n| Vm::open(n))
        .collect::<Result<Vec<_>>>()?;
    // Refuse before removing anything. A VM whose state is damaged names no process to
    // stop: it is removed as it is.
    let mut running = Vec::new();
    for vm in &vms {
        let Ok(state) = vm.observe() else {
            continue;
        };
        if !state.live_processes().is_empty() || is_up(state.status) {
            running.push(vm.clone());
        }
    }
    if let Some(vm) = running.first()
        && !force
    {
        bail!(
            "VM `{0}` is running: stop it first (`wasmvm stop {0}`) or use `wasmvm rm -f`",
            vm.name
        );
    }
    if !running.is_empty() {
        stop_vms(&running, Duration::from_secs(10))?;
    }
    for vm in vms {
        let name = vm.name.clone();
        vm.remove()?;
        println!("{name}");
    }
    Ok(0)
}
