//! Where the fleet keeps its VMs and what it records about each: one directory per VM under
//! `$XDG_STATE_HOME/wasmvm/vms/NAME/` holding `state.json` (replaced atomically on every
//! change) and `log` (the app's stdout and stderr). Creating the directory claims the name.

use std::fmt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use super::sys::{self, ProcId};

const STATE_FILE: &str = "state.json";
/// A state file is a few hundred bytes; anything far larger is not one.
const MAX_STATE_BYTES: u64 = 1 << 20;
const LOG_FILE: &str = "log";

/// The directory holding one directory per VM: `$XDG_STATE_HOME/wasmvm/vms`, where
/// `XDG_STATE_HOME` defaults to `~/.local/state` (and, as the XDG spec says, a relative
/// value is ignored).
pub fn vms_dir() -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_STATE_HOME").map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => dir,
        _ => {
            let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).context(
                "cannot find the state directory: neither XDG_STATE_HOME nor HOME is set",
            )?;
            PathBuf::from(home).join(".local/state")
        }
    };
    Ok(base.join("wasmvm/vms"))
}

/// Names are `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most 64 bytes: a directory name, a word in a
/// table, nothing a shell or a path could misread.
pub fn check_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !first_ok || !rest_ok || name.len() > 64 {
        bail!(
            "`{name}` is not a valid VM name: use letters, digits, `_`, `.` and `-`, starting with a letter or digit (at most 64)"
        );
    }
    Ok(())
}

/// `--restart`: whether the supervisor starts the VM again when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum RestartPolicy {
    No,
    /// After a non-zero exit status or a VMM killed by a signal, at most `max` times
    /// (`None`: without limit).
    OnFailure {
        max: Option<u32>,
    },
}

impl RestartPolicy {
    pub fn parse(s: &str) -> Result<RestartPolicy, String> {
        match s.split_once(':') {
            None if s == "no" => Ok(RestartPolicy::No),
            None if s == "on-failure" => Ok(RestartPolicy::OnFailure { max: None }),
            Some(("on-failure", max)) => max
                .parse()
                .map(|max| RestartPolicy::OnFailure { max: Some(max) })
                .map_err(|_| {
                    format!("`{s}`: the restart limit must be a number, as in on-failure:3")
                }),
            _ => Err(format!(
                "`{s}` is not a restart policy: use no or on-failure[:MAX]"
            )),
        }
    }
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestartPolicy::No => f.write_str("no"),
            RestartPolicy::OnFailure { max: None } => f.write_str("on-failure"),
            RestartPolicy::OnFailure { max: Some(n) } => write!(f, "on-failure:{n}"),
        }
    }
}

impl TryFrom<String> for RestartPolicy {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        RestartPolicy::parse(&s)
    }
}

impl From<RestartPolicy> for String {
    fn from(p: RestartPolicy) -> String {
        p.to_string()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Claimed by `run -d`; its supervisor is not up yet.
    Starting,
    /// Its VMM runs.
    Running,
    /// Its VMM ended and the restart policy starts it again after a backoff.
    Restarting,
    /// Its VMM ended with an exit status (the app's, or one of the fixed ones).
    Exited,
    /// It ended without a status: its VMM was killed by a signal, or its supervisor died.
    Failed,
    /// `wasmvm stop` ended it.
    Stopped,
}

impl Status {
    /// Ended for good: nothing will start it again.
    pub fn is_final(self) -> bool {
        matches!(self, Status::Exited | Status::Failed | Status::Stopped)
    }
}

/// What `state.json` holds. Only the process in charge writes it: `run -d` until its
/// supervisor is up, then the supervisor, and `stop` or `ps`-style readers never, except
/// `stop` once it has killed a supervisor that did not end in time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub name: String,
    /// The image (or module), as an absolute path.
    pub image: PathBuf,
    /// The app's arguments given after `--` (for display; the supervisor replays the whole
    /// command line of `run`).
    pub args: Vec<String>,
    /// Where `run -d` ran, and so where relative paths of its command line start.
    pub cwd: PathBuf,
    pub restart: RestartPolicy,
    pub status: Status,
    /// The VMM's exit status of the last run (the app's, or 130–253 per docs/cli.md).
    pub exit_code: Option<i32>,
    /// Why it ended, when the status alone does not say.
    pub reason: Option<String>,
    /// How often the restart policy has started it again.
    pub restarts: u32,
    /// Unix times in seconds: claimed, last VMM started, last VMM ended.
    pub created_at: u64,
    pub started_at: Option<u64>,
    pub finished_at: Option<u64>,
    /// The boot the processes below belong to.
    pub boot_id: String,
    /// `wasmvm run -d`, while it starts the supervisor.
    pub creator: Option<ProcId>,
    pub supervisor: Option<ProcId>,
    /// The VMM process (`wasmvm run`, the supervisor's child), while it runs.
    pub vmm: Option<ProcId>,
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl State {
    /// Its supervisor and VMM, those of them that still run (a VMM outlives a supervisor
    /// killed outright by the moment its parent-death signal takes).
    pub fn live_processes(&self) -> Vec<ProcId> {
        if self.boot_id != sys::boot_id() {
            return Vec::new();
        }
        [self.supervisor, self.vmm]
            .into_iter()
            .flatten()
            .filter(ProcId::alive)
            .collect()
    }

    /// A one-line description for `ps`: `running 12s`, `exited (0) 3s ago`, `failed: ...`.
    pub fn status_text(&self, now: u64) -> String {
        let ago = |t: Option<u64>| {
            t.map(|t| format!(" {} ago", human(now.saturating_sub(t))))
                .unwrap_or_default()
        };
        let because = |r: &Option<String>| r.as_ref().map(|r| format!(": {r}")).unwrap_or_default();
        match self.status {
            Status::Starting => "starting".to_string(),
            Status::Running => format!(
                "running {}",
                human(now.saturating_sub(self.started_at.unwrap_or(self.created_at)))
            ),
            Status::Restarting => match self.exit_code {
                Some(code) => format!("restarting ({code}){}", ago(self.finished_at)),
                None => format!(
                    "restarting{}{}",
                    ago(self.finished_at),
                    because(&self.reason)
                ),
            },
            Status::Exited => format!(
                "exited ({}){}{}",
                self.exit_code.unwrap_or(-1),
                ago(self.finished_at),
                because(&self.reason)
            ),
            Status::Failed => format!(
                "failed: {}",
                self.reason.as_deref().unwrap_or("reason unknown")
            ),
            Status::Stopped => format!("stopped{}", ago(self.finished_at)),
        }
    }
}

/// `12s`, `5m`, `3h`, `2d`.
fn human(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..172_800 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// One VM's directory.
#[derive(Debug, Clone)]
pub struct Vm {
    pub name: String,
    pub dir: PathBuf,
}

impl Vm {
    pub fn at(dir: &Path) -> Vm {
        Vm {
            name: dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            dir: dir.to_path_buf(),
        }
    }

    /// The VM called `name`, which must exist.
    pub fn open(name: &str) -> Result<Vm> {
        check_name(name)?;
        let vm = Vm::at(&vms_dir()?.join(name));
        // Not `exists()`: that follows a symlink, and a damaged entry must stay removable.
        if std::fs::symlink_metadata(vm.dir.join(STATE_FILE)).is_err() {
            bail!("no VM named `{name}` (see `wasmvm ps -a`)");
        }
        Ok(vm)
    }

    /// Claims `name` by creating its directory: of two claims at once, exactly one wins.
    /// `None` if the name is taken.
    pub fn claim(name: &str) -> Result<Option<Vm>> {
        check_name(name)?;
        let vms = vms_dir()?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&vms)
            .with_context(|| format!("cannot create {}", vms.display()))?;
        let dir = vms.join(name);
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => Ok(Some(Vm::at(&dir))),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot create {}", dir.display())),
        }
    }

    /// Every VM with a state file, oldest first (a directory claimed this instant, whose
    /// state is not written yet, and `rm`'s leftovers, whose names start with `.`, are not),
    /// each with its state or, when the state file is damaged, why: one bad entry never
    /// hides the others.
    pub fn list() -> Result<Vec<(Vm, Result<State, String>)>> {
        let vms = vms_dir()?;
        let entries = match std::fs::read_dir(&vms) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", vms.display())),
        };
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot read {}", vms.display()))?;
            if entry.file_name().as_encoded_bytes().starts_with(b".") {
                continue;
            }
            let vm = Vm::at(&entry.path());
            match vm.load() {
                Ok(state) => found.push((vm, Ok(state))),
                // Claimed but not written yet, or removed meanwhile.
                Err(_) if std::fs::symlink_metadata(vm.dir.join(STATE_FILE)).is_err() => {}
                Err(e) => found.push((vm, Err(format!("{e:#}")))),
            }
        }
        let key = |(vm, state): &(Vm, Result<State, String>)| {
            (state.as_ref().map_or(0, |s| s.created_at), vm.name.clone())
        };
        found.sort_by_key(key);
        Ok(found)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join(LOG_FILE)
    }

    /// Reads the state file: a regular file (never through a symlink, never a FIFO that
    /// would block) of at most `MAX_STATE_BYTES`.
    pub fn load(&self) -> Result<State> {
        let path = self.dir.join(STATE_FILE);
        let text = read_small(&path, MAX_STATE_BYTES)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if text.len() as u64 > MAX_STATE_BYTES {
            bail!("{} is larger than a state file can be", path.display());
        }
        serde_json::from_slice(&text).with_context(|| format!("{} is damaged", path.display()))
    }

    /// Replaces the state file atomically (a new file renamed over the old one): readers
    /// see the old state or the new one, never a mix.
    pub fn save(&self, state: &State) -> Result<()> {
        use std::io::Write;
        let path = self.dir.join(STATE_FILE);
        let mut tmp = tempfile::Builder::new()
            .prefix(".state-")
            .tempfile_in(&self.dir)
            .with_context(|| format!("cannot write {}", path.display()))?;
        let mut json = serde_json::to_vec_pretty(state)?;
        json.push(b'\n');
        tmp.write_all(&json)
            .with_context(|| format!("cannot write {}", path.display()))?;
        tmp.persist(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }

    /// The state as it is now: the recorded one, unless the process in charge of it (the
    /// supervisor, or `run -d` before it) has died without recording an end. Such a VM
    /// has failed, and the reason says which process died. Never writes.
    pub fn observe(&self) -> Result<State> {
        let mut state = self.load()?;
        // Twice: a process that ended just now may have recorded its end just before.
        for last in [false, true] {
            if state.status.is_final() {
                return Ok(state);
            }
            let same_boot = state.boot_id == sys::boot_id();
            let keeper = match state.status {
                Status::Starting => state.supervisor.or(state.creator),
                _ => state.supervisor,
            };
            if same_boot && keeper.is_some_and(|p| p.alive()) {
                return Ok(state);
            }
            if !last {
                state = self.load()?;
                continue;
            }
            let reason = match (same_boot, state.supervisor) {
                (false, _) => "the machine rebooted while it ran".to_string(),
                (true, None) => "its supervisor never started".to_string(),
                (true, Some(s)) => match state.vmm.filter(|v| v.alive()) {
                    Some(vmm) => format!(
                        "supervisor (pid {}) died; its VMM (pid {}) still runs",
                        s.pid, vmm.pid
                    ),
                    None => format!("supervisor (pid {}) died", s.pid),
                },
            };
            state.status = Status::Failed;
            state.reason = Some(reason);
        }
        Ok(state)
    }

    /// Frees the name: renames the directory out of the way first (atomically, to a name no
    /// VM can have), then deletes it.
    pub fn remove(self) -> Result<()> {
        let vms = self.dir.parent().map(Path::to_path_buf).unwrap_or_default();
        let grave = vms.join(format!(".rm-{}-{}", self.name, std::process::id()));
        std::fs::rename(&self.dir, &grave)
            .with_context(|| format!("cannot remove {}", self.dir.display()))?;
        std::fs::remove_dir_all(&grave)
            .with_context(|| format!("cannot remove {}", grave.display()))
    }
}

/// A fresh name for `image`: its file stem (made a valid name) and six random hex digits.
pub fn generate_name(image: &Path) -> String {
    let stem: String = image
        .file_stem()
        .map(|s| s.to_string_lossy())
        .unwrap_or_default()
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '_' | '.' | '-' => c,
            _ => '-',
        })
        .take(40)
        .collect();
    let stem = match stem.chars().next() {
        Some(c) if c.is_ascii_alphanumeric() => stem,
        _ => "vm".to_string(),
    };
    let mut random = [0u8; 3];
    let _ = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut random));
    if random == [0; 3] {
        // No urandom: the clock and pid still differ between tries.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
            ^ std::process::id();
        random.copy_from_slice(&t.to_le_bytes()[..3]);
    }
    format!("{stem}-{:02x}{:02x}{:02x}", random[0], random[1], random[2])
}

/// Claims a name for a VM of `image`: `name` if given (an error if taken), else a generated
/// one.
pub fn claim_name(name: Option<&str>, image: &Path) -> Result<Vm> {
    if let Some(name) = name {
        return Vm::claim(name)?.ok_or_else(|| {
            anyhow!("the name `{name}` is already in use by a VM (`wasmvm rm {name}` frees it)")
        });
    }
    for _ in 0..16 {
        if let Some(vm) = Vm::claim(&generate_name(image))? {
            return Ok(vm);
        }
    }
    bail!("cannot find a free VM name; give one with --name")
}

/// Reads `path` if it is a regular file of at most `max` bytes, never through a symlink and
/// never waiting on a FIFO.
pub fn read_small(path: &Path, max: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        bail!("not a regular file");
    }
    let mut text = Vec::new();
    file.take(max + 1).read_to_end(&mut text)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["web", "a", "Web-1.prod_2", "0"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-x",
            ".x",
            "_x",
            "a/b",
            "a b",
            "é",
            "..",
            &"x".repeat(65),
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        let generated = generate_name(Path::new("/tmp/my app.img"));
        assert!(generated.starts_with("my-app-"), "{generated}");
        assert!(check_name(&generated).is_ok());
        assert!(generate_name(Path::new("/x/.img")).starts_with("vm-"));
    }

    #[test]
    fn restart_policies() {
        assert_eq!(RestartPolicy::parse("no"), Ok(RestartPolicy::No));
        assert_eq!(
            RestartPolicy::parse("on-failure"),
            Ok(RestartPolicy::OnFailure { max: None })
        );
        assert_eq!(
            RestartPolicy::parse("on-failure:3"),
            Ok(RestartPolicy::OnFailure { max: Some(3) })
        );
        for bad in ["always", "on-failure:", "on-failure:x", "no:2"] {
            assert!(RestartPolicy::parse(bad).is_err(), "{bad}");
        }
        for p in ["no", "on-failure", "on-failure:7"] {
            assert_eq!(RestartPolicy::parse(p).unwrap().to_string(), p);
        }
    }

    #[test]
    fn durations_read_like_ps() {
        assert_eq!(human(12), "12s");
        assert_eq!(human(300), "5m");
        assert_eq!(human(3 * 3600 + 5), "3h");
        assert_eq!(human(3 * 86_400), "3d");
    }
}
