//! The seccomp allow-list of the built-in VMM's worker threads.
//!
//! The threads that touch guest-controlled data (the vCPU thread, which runs the device
//! models, and the output pump, which parses the guest's frames) and the stdin pump each
//! install this filter as their first act, after the VM is built. From then on they can only
//! move bytes over descriptors they already hold (and learn a held file's length), wait,
//! allocate memory and map held files, and run the vCPU: no `open`, no `exec`, no new
//! sockets, no `ioctl` but `KVM_RUN`, no executable mappings. A call outside the list kills
//! the whole process (SIGSYS), which the user sees as a crash of `wasmvm` rather than a
//! compromised host.
//!
//! Each live directory's 9P server thread (`devices::p9`) runs under [`share_filter`]: the same
//! list plus the `*at` filesystem calls the server makes beneath the share's descriptor.
//!
//! Each volume's worker thread runs under [`volume_filter`]: the list plus positioned reads
//! and writes, `statx`, `fsync`/`fdatasync` and `flock` on the image it already holds.
//!
//! The network card (`devices::net`) runs in the vCPU thread and needs nothing more: it reads
//! (`read`), sends (`sendto`, `write`) and waits (`ppoll`) on the link descriptor it was
//! given (passt's socket or a tap device, opened and set up before the filter goes on).
//! passt itself is a separate, unprivileged process started before any thread is confined.
//!
//! The supervising thread (the caller of `vmm::run`) is not confined: it handles no
//! guest bytes, and the CLI still has to clean up after the run (e.g. remove the temporary
//! image of `wasmvm run app.wasm`). Embedders that run VMs in-process (tests) turn the
//! filter off through `RunOptions::seccomp`.

use std::collections::BTreeMap;

pub use seccompiler::BpfProgram;
use seccompiler::{SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};

use crate::RunError;

mod search;

/// `KVM_RUN`: `_IO(KVMIO, 0x80)`.
const KVM_RUN: u64 = 0xae80;

fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, seccompiler::BackendError> {
    SeccompRule::new(conditions)
}

/// Makes every thread allocate from glibc's main heap: a program that runs VMs calls this
/// first thing in `main`, before any thread exists. glibc's per-thread malloc arenas make
/// system calls the filter kills: the first time one shrinks, glibc opens
/// `/proc/sys/vm/overcommit_memory` (once per process, from whichever thread gets there
/// first), and past eight arenas it asks `sched_getaffinity` for the arena limit. The main
/// heap grows and shrinks with `brk` and `mmap` only. Too late is too late: `M_ARENA_MAX`
/// stops only new arenas, and a thread started after it may still be handed one that an
/// earlier thread made (the CLI's output writers and signal thread start before a VM is
/// built), which is how one run in ~50 of a guest writing 256 MiB died of SIGSYS.
///
/// musl's allocator has one heap and no arenas: nothing to do there.
pub fn single_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only adjusts allocator tunables; M_ARENA_MAX takes any positive count.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1)
    };
}

/// Builds the filter (once per run, before the threads start). It also calls
/// [`single_arena`], which is enough only for a program whose threads have not allocated
/// yet.
pub fn vmm_filter() -> Result<BpfProgram, RunError> {
    single_arena();
    build(&[]).map_err(|e| RunError::Host(format!("building the seccomp filter: {e}")))
}

/// The filter of a live directory's 9P worker thread (`devices::p9`): the VMM's list plus the
/// calls that work relative to descriptors the server already holds. `open`/`openat` by
/// absolute path are allowed by the kernel interface but never made: the server resolves
/// everything beneath the share's directory descriptor (see `host::p9`).
pub fn share_filter() -> Result<BpfProgram, RunError> {
    build(&[
        libc::SYS_openat,
        libc::SYS_openat2,
        libc::SYS_newfstatat,
        libc::SYS_statx,
        libc::SYS_fstatfs,
        libc::SYS_mkdirat,
        libc::SYS_unlinkat,
        libc::SYS_renameat,
        libc::SYS_renameat2,
        libc::SYS_linkat,
        libc::SYS_symlinkat,
        libc::SYS_readlinkat,
        libc::SYS_mknodat,
        libc::SYS_fchownat,
        libc::SYS_utimensat,
        libc::SYS_fchmodat,
        libc::SYS_fchmodat2,
        libc::SYS_fchmod,
        libc::SYS_ftruncate,
        libc::SYS_pread64,
        libc::SYS_pwrite64,
        libc::SYS_lseek,
        libc::SYS_getdents64,
        libc::SYS_fsync,
        libc::SYS_fdatasync,
    ])
    .map_err(|e| RunError::Host(format!("building the seccomp filter: {e}")))
}

/// The filter of a volume's 9P worker thread (`host::volume::live`): the VMM's list plus
/// positioned reads and writes of the image it holds, its size and durability. It opens
/// nothing: the image was opened, locked and checked before the thread started.
pub fn volume_filter() -> Result<BpfProgram, RunError> {
    build(&[
        libc::SYS_pread64,
        libc::SYS_pwrite64,
        libc::SYS_lseek,
        libc::SYS_statx,
        libc::SYS_newfstatat,
        libc::SYS_fsync,
        libc::SYS_fdatasync,
        libc::SYS_flock,
    ])
    .map_err(|e| RunError::Host(format!("building the seccomp filter: {e}")))
}

/// The program for the VMM's list plus `extra` calls (see [`search`]).
fn build(extra: &[i64]) -> Result<BpfProgram, Box<dyn std::error::Error>> {
    Ok(search::compile(
        rules(extra)?,
        SeccompAction::Allow,
        SeccompAction::KillProcess,
    )?)
}

/// The VMM's list plus `extra` calls: call number → conditions (none: always allowed).
fn rules(extra: &[i64]) -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    // Moving bytes over descriptors the thread already has.
    for call in [
        libc::SYS_read,
        libc::SYS_readv,
        libc::SYS_write,
        libc::SYS_writev,
        libc::SYS_recvfrom,
        libc::SYS_recvmsg,
        libc::SYS_sendto,
        libc::SYS_sendmsg,
        libc::SYS_shutdown,
        libc::SYS_close,
        // Waiting: for host input, on locks and channels, for a deadline.
        libc::SYS_ppoll,
        libc::SYS_poll,
        libc::SYS_futex,
        libc::SYS_sched_yield,
        libc::SYS_nanosleep,
        libc::SYS_clock_nanosleep,
        libc::SYS_clock_gettime,
        // The transmit queues' quiet-window timers (made before the thread is confined).
        libc::SYS_timer_settime,
        libc::SYS_timer_delete,
        // Memory for buffers (the allocator), and thread exit.
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_madvise,
        // Which guest pages are resident, and the image file's length before pages are
        // mapped from it (the idle trim, `vmm::trim`).
        libc::SYS_mincore,
        libc::SYS_fstat,
        libc::SYS_brk,
        libc::SYS_rt_sigreturn,
        libc::SYS_rt_sigprocmask,
        libc::SYS_sigaltstack,
        libc::SYS_getpid,
        libc::SYS_gettid,
        libc::SYS_tgkill,
        libc::SYS_getrandom,
        libc::SYS_exit,
        libc::SYS_exit_group,
    ]
    .into_iter()
    .chain(extra.iter().copied())
    {
        rules.insert(call, vec![]);
    }
    // New mappings and protection changes (glibc grows per-thread heap arenas with
    // mprotect), never executable.
    for call in [libc::SYS_mmap, libc::SYS_mprotect] {
        rules.insert(
            call,
            vec![rule(vec![SeccompCondition::new(
                2,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
                0,
            )?])?],
        );
    }
    // fcntl: only F_GETFD for the VMM threads (std checks that a descriptor is open before
    // closing it); the share worker also reads its descriptors' flags.
    let fcntl = match extra.is_empty() {
        true => vec![rule(vec![SeccompCondition::new(
            1,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            libc::F_GETFD as u64,
        )?])?],
        false => vec![],
    };
    rules.insert(libc::SYS_fcntl, fcntl);
    // The one ioctl: running the vCPU.
    rules.insert(
        libc::SYS_ioctl,
        vec![rule(vec![SeccompCondition::new(
            1,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            KVM_RUN,
        )?])?],
    );
    Ok(rules)
}

/// Confines the calling thread with `filter` (from [`vmm_filter`]).
pub fn confine_thread(filter: &BpfProgram) -> Result<(), String> {
    seccompiler::apply_filter(filter).map_err(|e| format!("installing the seccomp filter: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use search::tests::{Call, run};
    use seccompiler::{SeccompFilter, TargetArch};

    /// The extra calls of each filter this module builds.
    const LISTS: [&[i64]; 3] = [
        &[],
        &[libc::SYS_openat, libc::SYS_getdents64, libc::SYS_fchmodat2],
        &[libc::SYS_pread64, libc::SYS_flock],
    ];

    /// seccompiler's own program for the same rules: one chain, walked in order.
    fn linear(extra: &[i64]) -> BpfProgram {
        let filter = SeccompFilter::new(
            rules(extra).unwrap(),
            SeccompAction::KillProcess,
            SeccompAction::Allow,
            TargetArch::x86_64,
        )
        .unwrap();
        filter.try_into().unwrap()
    }

    /// Every call number (and x32's), both architectures, and arguments on either side of
    /// each condition (the ioctl request, the mapping's protection, the fcntl command).
    fn calls() -> impl Iterator<Item = Call> {
        const X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
        const I386: u32 = 3 | 0x4000_0000;
        let nrs = (0..=600u32).chain(0x4000_0000..0x4000_0000 + 600);
        let args: [[u64; 6]; 6] = [
            [0; 6],
            [3, KVM_RUN, 0, 0, 0, 0],
            [3, KVM_RUN | (1 << 32), 0, 0, 0, 0],
            [3, 0xae41, 0, 0, 0, 0],
            [0, 4096, libc::PROT_EXEC as u64 | 3, 0, 0, 0],
            [0, libc::F_GETFD as u64, 3, 0, 0, 0],
        ];
        nrs.flat_map(move |nr| {
            [X86_64, I386]
                .into_iter()
                .flat_map(move |arch| args.into_iter().map(move |args| Call { nr, arch, args }))
        })
    }

    #[test]
    fn the_search_decides_every_call_as_seccompilers_chain_does_and_sooner() {
        for extra in LISTS {
            let (chain, search) = (linear(extra), build(extra).unwrap());
            let (mut chain_steps, mut search_steps) = (0, 0);
            for call in calls() {
                let (want, walked) = run(&chain, &call);
                let (got, searched) = run(&search, &call);
                assert_eq!(
                    got, want,
                    "call {} arch {:#x} args {:x?}",
                    call.nr, call.arch, call.args
                );
                chain_steps = chain_steps.max(walked);
                search_steps = search_steps.max(searched);
            }
            // The longest path: a few comparisons and a call's conditions, not the chain.
            assert!(
                search_steps <= 24,
                "{search_steps} steps (chain: {chain_steps})"
            );
            assert!(
                chain_steps > 2 * search_steps,
                "{chain_steps} vs {search_steps}"
            );
        }
    }

    #[test]
    fn the_filter_builds_and_blocks_open_in_a_confined_thread() {
        let filter = vmm_filter().expect("filter");
        // In a child process: a violation kills the whole process.
        // SAFETY: the child only makes async-signal-safe calls and then exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            if confine_thread(&filter).is_err() {
                // SAFETY: leaving the forked child.
                unsafe { libc::_exit(2) };
            }
            // SAFETY: a plain syscall with a valid NUL-terminated path.
            unsafe { libc::open(c"/etc/hostname".as_ptr(), libc::O_RDONLY) };
            // SAFETY: leaving the forked child (not reached if the filter works).
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: waits for the child just forked.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFSIGNALED(status), "status {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
    }
}
