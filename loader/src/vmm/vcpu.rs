//! The vCPU loop of the built-in VMM: runs the guest until it writes the ABI's exit port,
//! dies, or is stopped, serving MMIO exits from the device bus and blocking in the guest's
//! wait exits until host input arrives.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kvm_ioctls::VcpuExit;
use vm_memory::GuestMemoryMmap;
use wasmvm_abi::bundle::RunConfig;
use wasmvm_abi::direct::WAIT_FOREVER;
use wasmvm_abi::exit::{EXIT_PORT, WAIT_PORT};

use super::boot::BootPath;
use super::devices::Devices;
use super::devices::console::Rx;
use super::kick;
use super::machine::{self, Machine, MachineConfig};
use super::trim::{IdleTrim, PASS_SLACK};
use crate::RunError;
use crate::image::Image;
use crate::image::mapped::MappedImage;

/// How the vCPU loop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuEnd {
    /// The guest wrote the exit port.
    ExitPort,
    /// The VM shut down (triple fault) or stopped without writing it.
    Crashed(String),
    /// Stopped from outside (timeout or signal).
    Stopped,
}

impl Machine {
    /// Runs the vCPU until the exit port, a crash, or `stop` (checked whenever KVM_RUN
    /// returns, which a signal to this thread forces).
    ///
    /// Network frames move at every exit (`Devices::poll`): the card asks the guest not to
    /// notify, so exits the guest makes anyway carry them.
    pub fn run(&mut self, devices: &mut Devices, stop: &AtomicBool) -> VcpuEnd {
        let immediate_exit: *mut u8 = &mut self.vcpu.get_kvm_run().immediate_exit;
        // SAFETY: this thread runs this vCPU, whose kvm_run mapping lives as long as
        // `self.vcpu`, which outlives the target (dropped when this function returns).
        let _kicks_stick = unsafe { kick::KickTarget::new(immediate_exit) };
        loop {
            if stop.load(Ordering::Relaxed) {
                return VcpuEnd::Stopped;
            }
            let exit = self.vcpu.run();
            // From here a kick (stop, a quiet window's timer) makes the next KVM_RUN return at
            // once, even if it lands before that.
            // SAFETY: as above; KVM reads the byte only when KVM_RUN starts.
            unsafe { immediate_exit.write_volatile(0) };
            // Output and frames the guest queued without an exit go out at every exit,
            // before the exit port or a crash ends the run.
            devices.at_exit(&self.mem);
            match exit {
                Ok(VcpuExit::IoOut(port, _)) if port == EXIT_PORT => return VcpuEnd::ExitPort,
                Ok(VcpuExit::IoOut(port, data)) if port == WAIT_PORT => {
                    let timeout = wait_timeout(data);
                    match devices.console.is_some() {
                        true => {
                            let trim = self.trim.as_mut();
                            wait_for_host(devices, &self.mem, timeout, trim, stop)
                        }
                        false => std::thread::sleep(timeout.unwrap_or(Duration::from_secs(1))),
                    }
                    // The wait moved the frames already.
                    continue;
                }
                Ok(VcpuExit::MmioRead(addr, data)) => match devices.at(addr) {
                    Some((device, offset)) => device.read(offset, data),
                    None => data.fill(0xff),
                },
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    if let Some((device, offset)) = devices.at(addr) {
                        device.write(offset, data, &self.mem);
                    }
                }
                Ok(VcpuExit::IoOut(..)) => {}
                Ok(VcpuExit::IoIn(_, data)) => data.fill(0xff),
                Ok(VcpuExit::Shutdown) => return VcpuEnd::Crashed("triple fault".into()),
                Ok(VcpuExit::Hlt) => return VcpuEnd::Crashed("the vCPU halted".into()),
                Ok(other) => return VcpuEnd::Crashed(format!("unexpected exit {other:?}")),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
                Err(e) => return VcpuEnd::Crashed(self.run_failed(&e)),
            }
            devices.poll(&self.mem);
        }
    }
}

impl Machine {
    /// What a failed `KVM_RUN` says. It fails with `EFAULT` when guest RAM cannot be read
    /// on the host: with pages of the image file mapped into it, most likely because the
    /// file was truncated while the VM ran (design.md, *Threat model*), which the user can
    /// act on.
    fn run_failed(&self, e: &kvm_ioctls::Error) -> String {
        let maps_image = self.maps_image || self.trim.as_ref().is_some_and(|t| t.shared() > 0);
        match e.errno() == libc::EFAULT && maps_image {
            true => format!(
                "KVM_RUN: {e}: guest memory the host could not read; it maps pages of the image file, which was most likely truncated while the VM ran"
            ),
            false => format!("KVM_RUN: {e}"),
        }
    }
}

/// How long a wait exit may block: the microseconds of a 4-byte write (the direct entry's
/// `WAIT_BLOCKS` protocol; `None` for no deadline), or a millisecond for a 1-byte write from
/// a guest that spins on waits.
fn wait_timeout(data: &[u8]) -> Option<Duration> {
    match <[u8; 4]>::try_from(data) {
        Ok(word) => match u32::from_le_bytes(word) {
            WAIT_FOREVER => None,
            micros => Some(Duration::from_micros(micros.into())),
        },
        Err(_) => Some(Duration::from_millis(1)),
    }
}

/// A wait exit: deliver host input now (and return to the guest to take it), or block until
/// some arrives or `timeout` passes. Host input is console bytes and, with a network card,
/// frames. With input the guest is not taking (it sleeps without reading, or offers no
/// receive buffer), only the deadline ends the block: watching that descriptor would spin.
/// A stop request interrupts the block with the kick signal (see `vmm::run`). A guest that
/// has gone the trimmer's idle pause without input, and waits long enough, has its zero
/// pages given back (`trim`) during the wait.
fn wait_for_host(
    devices: &mut Devices,
    mem: &GuestMemoryMmap,
    timeout: Option<Duration>,
    mut trim: Option<&mut IdleTrim>,
    stop: &AtomicBool,
) {
    use std::os::fd::AsRawFd;
    let mut pfds = [libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    }; 2];
    let mut watched = 0;
    // The guest's output went out at this exit (`Devices::at_exit`); it writes no more
    // while it waits.
    if let Some(console) = devices.console.as_mut() {
        let (console, queues) = console.parts();
        console.before_wait(queues, mem);
    }
    // Frames the guest queued go out now whatever else happens (it relies on this exit),
    // and frames for it end the wait at once.
    if let Some(net) = devices.net.as_mut() {
        let (net, queues) = net.parts();
        if net.pump(queues, mem) {
            note_input(trim);
            return;
        }
    }
    if let Some(console) = devices.console.as_mut() {
        let (console, queues) = console.parts();
        match console.process_rx(queues, mem) {
            Rx::Delivered => {
                note_input(trim);
                return;
            }
            Rx::Idle => {
                pfds[watched] = libc::pollfd {
                    fd: console.host_fd().as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                watched += 1;
            }
            Rx::Backlog => {}
        }
    }
    if let Some(net) = devices.net.as_mut() {
        let (net, queues) = net.parts();
        if net.pump(queues, mem) {
            note_input(trim);
            return;
        }
        let events = net.wait_events(queues, mem);
        if events != 0 {
            pfds[watched] = libc::pollfd {
                fd: net.host_fd().as_raw_fd(),
                events,
                revents: 0,
            };
            watched += 1;
        }
    }
    // The guest queues no frames while it waits: the card's quiet window must not cut the
    // wait short.
    if let Some(net) = devices.net.as_mut() {
        net.device.before_wait();
    }
    let now = Instant::now();
    let deadline = timeout.map(|t| now + t);
    let mut pause = trim.as_deref().map(|t| t.pause(now));
    loop {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        // Block until the deadline, or first for the idle pause that starts a trim (when
        // the deadline leaves room for a pass after it, so that the guest's timers fire on
        // time).
        let (block, trimming) = match (pause, left) {
            (Some(p), Some(l)) if p + PASS_SLACK <= l => (Some(p), true),
            (Some(p), None) => (Some(p), true),
            (_, left) => (left, false),
        };
        // A stop kick that landed during a batch (not in a poll) is seen here.
        let ready = poll(&mut pfds[..watched], block);
        if ready > 0 {
            // Host input (or room for a backlog of frames): the guest is busy.
            note_input(trim.as_deref_mut());
        }
        if ready != 0 || !trimming || stop.load(Ordering::Relaxed) {
            // Input, the stop kick, or the deadline.
            break;
        }
        // Nothing arrived for a while: the guest idles.
        // The batch ends before the deadline, so that the guest's timers fire on time.
        let until = deadline.map(|d| d.checked_sub(PASS_SLACK / 2).unwrap_or(d));
        // SAFETY: the trimmer was made for this VM's memory (`Machine::trim`), the one
        // vCPU is out of the guest (this thread runs it), and no other thread reads or
        // writes guest memory (the device models run here; see `vmm::trim`).
        let pass = trim.as_deref_mut().map(|t| unsafe { t.trim(mem, until) });
        // A batch cut short goes on once pending input has been checked; then block.
        pause = match pass {
            Some(pass) if !pass.finished => Some(Duration::ZERO),
            _ => None,
        };
    }
    if let Some(console) = devices.console.as_mut() {
        let (console, queues) = console.parts();
        console.process_rx(queues, mem);
    }
    if let Some(net) = devices.net.as_mut() {
        let (net, queues) = net.parts();
        net.after_wait(queues, mem);
    }
    devices.poll(mem);
}

/// Tells the trimmer, if any, that host input reached the guest now.
fn note_input(trim: Option<&mut IdleTrim>) {
    if let Some(trim) = trim {
        trim.note_input(Instant::now());
    }
}

/// `ppoll` on `pfds` for at most `timeout` (`None`: until input or a signal); returns
/// how many descriptors are ready, 0 at the timeout, -1 when a signal interrupted it.
fn poll(pfds: &mut [libc::pollfd], timeout: Option<Duration>) -> libc::c_int {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(i32::MAX as u64) as i64,
        tv_nsec: t.subsec_nanos().into(),
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `pfds` and `ts` are valid for the duration of the call; a null timeout blocks
    // until input or a signal (the stop kick), and a null mask leaves the mask unchanged.
    unsafe {
        libc::ppoll(
            pfds.as_mut_ptr(),
            pfds.len() as libc::nfds_t,
            ts_ptr,
            std::ptr::null(),
        )
    }
}

/// Boots the image at `image_path` with `memory_mib` of RAM and no devices, and runs it
/// until it ends (a probe of the boot path). Returns how it ended and the milliseconds it
/// took.
pub fn probe(
    image_path: &Path,
    memory_mib: u64,
    run: &RunConfig,
) -> Result<(VcpuEnd, f64), RunError> {
    let started = Instant::now();
    let image = MappedImage::open(image_path)?;
    Image::parse(image.bytes())?;
    let config = MachineConfig {
        memory_mib,
        run_config: run,
        cmdline: "",
        boot: BootPath::Best,
        ready_console: None,
        map_file: true,
        net_batched: false,
        huge_pages: false,
        kernel_log: false,
    };
    let mut machine = machine::build(&image, &config)?;
    let end = machine.run(&mut Devices::default(), &AtomicBool::new(false));
    Ok((end, started.elapsed().as_secs_f64() * 1e3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_timeout_reads_the_guest_write() {
        // A 4-byte write is microseconds, little-endian.
        assert_eq!(
            wait_timeout(&1500u32.to_le_bytes()),
            Some(Duration::from_micros(1500))
        );
        assert_eq!(wait_timeout(&0u32.to_le_bytes()), Some(Duration::ZERO));
        assert_eq!(
            wait_timeout(&(WAIT_FOREVER - 1).to_le_bytes()),
            Some(Duration::from_micros(u64::from(u32::MAX - 1)))
        );
        assert_eq!(wait_timeout(&WAIT_FOREVER.to_le_bytes()), None);
        // Any other width is a guest spinning on waits: a millisecond.
        for width in [&[0u8][..], &[0xff], &[1, 2], &[]] {
            assert_eq!(
                wait_timeout(width),
                Some(Duration::from_millis(1)),
                "{width:?}"
            );
        }
    }
}
