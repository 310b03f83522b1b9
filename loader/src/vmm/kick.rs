//! Interrupting the vCPU: a real-time signal whose handler does nothing makes KVM_RUN
//! return EINTR, so the vCPU thread sees its stop flag.

use std::sync::Once;

/// The signal that kicks the vCPU thread out of KVM_RUN.
pub fn signal() -> libc::c_int {
    libc::SIGRTMIN()
}

extern "C" fn ignore_signal(_: libc::c_int) {}

/// Installs the kick signal's handler, once per process.
pub fn install_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: installs a handler that does nothing (async-signal-safe) for a real-time
        // signal nothing else in wasmvm uses; a zeroed sigaction with SA_RESTART unset is
        // valid, so KVM_RUN returns EINTR.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = ignore_signal as *const () as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal(), &action, std::ptr::null_mut());
        }
    });
}
