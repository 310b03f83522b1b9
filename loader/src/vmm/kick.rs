//! Interrupting the vCPU: a real-time signal makes KVM_RUN return EINTR, so the vCPU
//! thread sees its stop flag or the end of a transmit queue's quiet window
//! (`devices::quiet`). A kick that lands while the thread is outside KVM_RUN (serving an
//! exit) would be lost, so the handler also sets the vCPU's `immediate_exit`
//! ([`KickTarget`]): the next KVM_RUN then returns EINTR at once instead of entering the
//! guest.

use std::cell::Cell;
use std::sync::Once;

/// The signal that kicks the vCPU thread out of KVM_RUN.
pub fn signal() -> libc::c_int {
    libc::SIGRTMIN()
}

thread_local! {
    /// The `immediate_exit` byte of the vCPU this thread runs; null on other threads.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn on_kick(_: libc::c_int) {
    // A const-initialised thread-local without a destructor is a plain TLS access, safe in
    // a signal handler.
    let target = IMMEDIATE_EXIT.with(Cell::get);
    if !target.is_null() {
        // SAFETY: set by a live `KickTarget` of this thread to its vCPU's `immediate_exit`,
        // which stays mapped while the target lives; a volatile byte store, as the kernel
        // reads it at the next KVM_RUN.
        unsafe { target.write_volatile(1) };
    }
}

/// While alive, kicks to this thread also set `immediate_exit` of the vCPU it runs. Not
/// `Send`: it must be dropped on the thread that made it.
pub struct KickTarget(std::marker::PhantomData<*const ()>);

impl KickTarget {
    /// # Safety
    /// `immediate_exit` must be the `immediate_exit` field of this thread's vCPU `kvm_run`
    /// mapping, and stay mapped while the returned value lives.
    pub unsafe fn new(immediate_exit: *mut u8) -> KickTarget {
        IMMEDIATE_EXIT.with(|t| t.set(immediate_exit));
        KickTarget(std::marker::PhantomData)
    }
}

impl Drop for KickTarget {
    fn drop(&mut self) {
        IMMEDIATE_EXIT.with(|t| t.set(std::ptr::null_mut()));
    }
}

/// Installs the kick signal's handler, once per process.
pub fn install_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: installs an async-signal-safe handler (one byte store, see `on_kick`) for
        // a real-time signal nothing else in wasmvm uses; a zeroed sigaction with
        // SA_RESTART unset is valid, so KVM_RUN returns EINTR.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_kick as *const () as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal(), &action, std::ptr::null_mut());
        }
    });
}

/// A one-shot timer that kicks the thread that made it (with [`signal`]) when it expires:
/// a quiet window's bound on how long frames the guest queued without an exit may wait
/// (`devices::quiet`). Needs [`install_handler`], or the signal would end the process.
pub struct KickTimer {
    id: libc::timer_t,
}

// SAFETY: a POSIX timer id is a process-wide handle, valid from any thread until deleted;
// the timer keeps signalling the thread that created it.
unsafe impl Send for KickTimer {}

impl KickTimer {
    pub fn for_this_thread() -> std::io::Result<KickTimer> {
        install_handler();
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        // SAFETY: a zeroed sigevent is valid (its padding is private); the fields set make
        // it "signal this thread".
        let mut event: libc::sigevent = unsafe { std::mem::zeroed() };
        event.sigev_notify = libc::SIGEV_THREAD_ID;
        event.sigev_signo = signal();
        event.sigev_notify_thread_id = tid;
        let mut id: libc::timer_t = std::ptr::null_mut();
        // SAFETY: `event` and `id` are valid for the call; the kernel fills `id`.
        if unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut event, &mut id) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(KickTimer { id })
    }

    /// Fires once, `after` from now (replacing any earlier setting).
    pub fn arm(&self, after: std::time::Duration) {
        self.set(libc::timespec {
            tv_sec: after.as_secs().min(i32::MAX as u64) as i64,
            // Zero would disarm: at least a nanosecond.
            tv_nsec: libc::c_long::from(after.subsec_nanos()).max(1),
        });
    }

    /// Time left before it fires (zero: disarmed), for tests.
    #[cfg(test)]
    pub fn remaining(&self) -> std::time::Duration {
        // SAFETY: a zeroed itimerspec is valid; `id` is a live timer of this process and
        // `spec` is valid for the call.
        let mut spec: libc::itimerspec = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        unsafe { libc::timer_gettime(self.id, &mut spec) };
        std::time::Duration::new(spec.it_value.tv_sec as u64, spec.it_value.tv_nsec as u32)
    }

    pub fn disarm(&self) {
        self.set(libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        });
    }

    fn set(&self, value: libc::timespec) {
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: value,
        };
        // SAFETY: `id` is a live timer of this process; `spec` is valid for the call. It
        // cannot fail for a valid timer and a normalised value.
        unsafe { libc::timer_settime(self.id, 0, &spec, std::ptr::null_mut()) };
    }
}

impl Drop for KickTimer {
    fn drop(&mut self) {
        // SAFETY: deletes the timer this value owns, once.
        unsafe { libc::timer_delete(self.id) };
    }
}
