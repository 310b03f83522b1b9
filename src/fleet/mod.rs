//! The fleet: VMs in the background, container-like, without root and without a daemon.
//!
//! `wasmvm run -d` claims a name (a directory under `$XDG_STATE_HOME/wasmvm/vms/`), starts
//! a supervisor for it (`wasmvm supervise`, this binary again, in a session of its own) and
//! returns once the supervisor has started the VMM and recorded it. Each supervisor runs one
//! VMM (`wasmvm run`, its child) and ends with it; `ps`, `logs`, `stop` and `rm` read and act
//! on the state files, judging liveness from the recorded pids and start times. See the
//! *Fleet* section of docs/design.md.

mod manage;
mod state;
mod supervisor;
mod sys;

use std::ffi::OsString;
use std::io::BufRead;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

pub use state::RestartPolicy;

/// The environment variable through which a supervisor tells its VMM where to mark that it
/// is making volumes durable (`RunOptions::flush_mark`): the VM's `flushing` file, which
/// `wasmvm stop` waits on rather than kill.
pub const FLUSH_MARK_ENV: &str = "WASMVM_FLUSH_MARK";
/// The name of that file in the VM's directory.
const FLUSH_MARK_FILE: &str = "flushing";

/// `run`'s flags for the background (flattened into `run`).
#[derive(Debug, Args, Clone)]
pub struct DetachArgs {
    /// Run the VM in the background under a supervisor and print its name (see `wasmvm ps`,
    /// `logs`, `stop`, `rm`).
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// With -d: the VM's name, unique among this user's VMs ([a-zA-Z0-9][a-zA-Z0-9_.-]*).
    /// Default: the image's name and a random suffix.
    #[arg(long, value_name = "NAME", requires = "detach")]
    pub name: Option<String>,
    /// With -d: start the VM again when it fails (non-zero status, or a VMM killed by a
    /// signal), after a short backoff, at most MAX times [default: no].
    #[arg(
        long,
        value_name = "no|on-failure[:MAX]",
        requires = "detach",
        value_parser = RestartPolicy::parse
    )]
    pub restart: Option<RestartPolicy>,
    /// Set by a supervisor on the VMM it starts: run in the foreground despite -d.
    #[arg(long = "supervised", hide = true, requires = "detach")]
    pub supervised: bool,
}

impl DetachArgs {
    /// Whether `run` goes to the background (a supervisor's own VMM does not).
    pub fn wanted(&self) -> bool {
        self.detach && !self.supervised
    }
}

/// The fleet's subcommands (flattened into the top-level ones).
#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// List the VMs started with `run -d`: running ones, or all with -a.
    Ps {
        /// Also list VMs that have ended (exited, failed, stopped).
        #[arg(short, long)]
        all: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print what a VM's app wrote (stdout and stderr, as captured).
    Logs {
        /// Keep printing new output until the VM has ended for good.
        #[arg(short, long)]
        follow: bool,
        name: String,
    },
    /// Stop VMs: SIGTERM (the guest stops cleanly), then SIGKILL after the grace time.
    Stop {
        /// Seconds to wait after SIGTERM before SIGKILL.
        #[arg(short, long, value_name = "SECONDS", default_value_t = 10)]
        time: u64,
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
    /// Remove ended VMs: their state and logs, freeing their names.
    Rm {
        /// Stop running VMs first (with `stop`'s default grace time) instead of refusing.
        #[arg(short, long)]
        force: bool,
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
    /// The supervisor of one VM (started by `run -d`).
    #[command(hide = true)]
    Supervise {
        dir: PathBuf,
        #[arg(last = true)]
        run_args: Vec<OsString>,
    },
}

pub fn dispatch(command: FleetCommand) -> Result<i32> {
    match command {
        FleetCommand::Ps { all, json } => manage::ps(all, json),
        FleetCommand::Logs { follow, name } => manage::logs(&name, follow),
        FleetCommand::Stop { time, names } => {
            manage::stop(&names, std::time::Duration::from_secs(time))
        }
        FleetCommand::Rm { force, names } => manage::rm(&names, force),
        FleetCommand::Supervise { dir, run_args } => supervisor::supervise(&dir, &run_args),
    }
}

/// This very binary (`/proc/self/exe`, which stays right even if the file is replaced),
/// named as it was started.
fn wasmvm_command() -> Command {
    let mut cmd = Command::new("/proc/self/exe");
    if let Some(arg0) = std::env::args_os().next() {
        cmd.arg0(arg0);
    }
    cmd
}

/// `wasmvm run -d`: claims the name, records the VM, starts its supervisor with this `run`'s
/// own arguments to replay, and prints the name once the supervisor reports the VMM started.
/// `image` and `app_args` are the parsed target and app arguments (for the record).
pub fn run_detached(detach: &DetachArgs, image: &Path, app_args: &[OsString]) -> Result<i32> {
    // The supervisor replays this command line (`wasmvm run ARGS...`) for each start, so
    // every `run` flag means in the background what it means in the foreground.
    let argv: Vec<OsString> = std::env::args_os().collect();
    if argv.get(1).is_none_or(|a| a != "run") {
        bail!("-d works on `wasmvm run ...` command lines only");
    }
    let image_path = std::fs::canonicalize(image)
        .and_then(|p| std::fs::File::open(&p).map(|_| p))
        .with_context(|| format!("cannot read {}", image.display()))?;
    let vm = state::claim_name(detach.name.as_deref(), &image_path)?;
    let record = state::State {
        name: vm.name.clone(),
        image: image_path,
        args: app_args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
        cwd: std::env::current_dir().unwrap_or_default(),
        restart: detach.restart.unwrap_or(RestartPolicy::No),
        status: state::Status::Starting,
        exit_code: None,
        reason: None,
        restarts: 0,
        created_at: state::now(),
        started_at: None,
        finished_at: None,
        boot_id: sys::boot_id(),
        creator: Some(sys::ProcId::current().context("cannot read /proc")?),
        supervisor: None,
        vmm: None,
    };
    let started = vm
        .save(&record)
        .and_then(|()| start_supervisor(&vm, &argv[2..]));
    match started {
        Ok(()) => {
            println!("{}", vm.name);
            Ok(0)
        }
        Err(e) => {
            // The supervisor records its own failures; a VM it never took over is failed
            // too (`ps` would say so once this process has ended; say why now).
            if let Ok(mut s) = vm.load()
                && s.status == state::Status::Starting
            {
                s.status = state::Status::Failed;
                s.reason = Some(format!("{e:#}"));
                s.creator = None;
                let _ = vm.save(&s);
            }
            Err(e.context(format!(
                "VM `{}` did not start (`wasmvm logs {0}`; `wasmvm rm {0}` frees the name)",
                vm.name
            )))
        }
    }
}

/// Starts `wasmvm supervise DIR -- RUN_ARGS` with stdin from /dev/null, stderr to the VM's
/// log and stdout a pipe, and waits for its one-line report.
fn start_supervisor(vm: &state::Vm, run_args: &[OsString]) -> Result<()> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(vm.log_path())
        .with_context(|| format!("cannot create {}", vm.log_path().display()))?;
    let mut child = wasmvm_command()
        .arg("supervise")
        .arg(&vm.dir)
        .arg("--")
        .args(run_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .context("cannot start the supervisor")?;
    let mut line = String::new();
    let read =
        std::io::BufReader::new(child.stdout.take().expect("piped stdout")).read_line(&mut line);
    match line.trim_end() {
        "ok" => Ok(()),
        report => {
            let why = match report.strip_prefix("error: ") {
                Some(why) => why.to_string(),
                None => match (read, child.wait()) {
                    (Err(e), _) => format!("cannot hear from the supervisor: {e}"),
                    (_, Ok(status)) => format!("the supervisor ended early ({status})"),
                    (_, Err(e)) => format!("the supervisor ended early: {e}"),
                },
            };
            bail!("{why}")
        }
    }
}
