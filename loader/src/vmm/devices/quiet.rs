//! Quiet windows: a transmit queue asks the guest for no notifies
//! (`VRING_USED_F_NO_NOTIFY`) for a bounded time after a notify, so a burst of frames costs
//! one exit instead of one per frame. While a window is open the VMM takes what the guest
//! queued at every exit of the vCPU, and a [`KickTimer`] aimed at the vCPU thread forces an
//! exit when the window ends: a frame the guest queued waits at most one window, however
//! long the guest then computes. The devices own the flag; this type owns the time.
//!
//! Used by the console (`devices::console`) and the network card (`devices::net`).

use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use crate::vmm::kick::KickTimer;

pub struct QuietWindow {
    /// How long a window lasts: the longest a queued frame may wait for the VMM.
    period: Duration,
    /// Kicks the vCPU thread when the window ends; without one no window opens.
    timer: Option<KickTimer>,
    /// When the open window ends (`None`: closed, the queue asks for notifies).
    until: Option<Instant>,
}

impl QuietWindow {
    /// A closed window of `period`, which cannot open until it has a timer.
    pub fn new(period: Duration) -> QuietWindow {
        QuietWindow {
            period,
            timer: None,
            until: None,
        }
    }

    /// The timer that ends windows (made by the vCPU thread, which it kicks).
    pub fn set_timer(&mut self, timer: KickTimer) {
        self.timer = Some(timer);
    }

    /// Whether a window may open now: there is a timer and none is open.
    pub fn can_open(&self) -> bool {
        self.timer.is_some() && self.until.is_none()
    }

    pub fn is_open(&self) -> bool {
        self.until.is_some()
    }

    /// Opens a window (the caller has just set the flag), or renews the open one for a whole
    /// period. The deadline is set before the timer is armed: the exit the timer makes must
    /// find the window over.
    pub fn open(&mut self) {
        if let Some(timer) = &self.timer {
            self.until = Some(Instant::now() + self.period);
            timer.arm(self.period);
        }
    }

    /// Opens a window on `queue` (its used ring asks for no notifies from now), unless one is
    /// open, there is no timer, or the queue is not ready.
    pub fn begin(&mut self, queue: Option<&mut Queue>, mem: &GuestMemoryMmap) {
        if self.can_open() && queue.is_some_and(|q| q.disable_notification(mem).is_ok()) {
            self.open();
        }
    }

    /// Closes the open window on `queue` (notifies wanted again). True if the guest queued
    /// buffers before it could see that: the caller takes them now, as no notify will come.
    pub fn end(&mut self, queue: Option<&mut Queue>, mem: &GuestMemoryMmap) -> bool {
        self.close() && queue.is_some_and(|q| q.enable_notification(mem).unwrap_or(true))
    }

    /// Whether the open window's time is up.
    pub fn is_over(&self) -> bool {
        self.until.is_some_and(|until| Instant::now() >= until)
    }

    /// Closes the window and disarms its timer; false if none was open (the caller then
    /// has no flag to clear).
    pub fn close(&mut self) -> bool {
        if self.until.take().is_none() {
            return false;
        }
        self.pause();
        true
    }

    /// Stops the timer of an open window while the vCPU blocks in a wait exit (the guest
    /// queues nothing then, and the kick would only cut the wait short); the window stays
    /// open. [`resume`](Self::resume) arms it again.
    pub fn pause(&self) {
        if let Some(timer) = &self.timer {
            timer.disarm();
        }
    }

    /// Before the guest runs again after a [`pause`](Self::pause): arms the timer for what
    /// is left of the open window. False if the window is over (or closed): the caller then
    /// ends or renews it before the guest runs.
    pub fn resume(&self) -> bool {
        let (Some(until), Some(timer)) = (self.until, &self.timer) else {
            return false;
        };
        match until.checked_duration_since(Instant::now()) {
            Some(left) if !left.is_zero() => {
                timer.arm(left);
                true
            }
            _ => false,
        }
    }

    /// A longer period, so that a test on a loaded machine decides when windows end
    /// ([`expire`](Self::expire)), not the clock.
    #[cfg(test)]
    pub fn set_period(&mut self, period: Duration) {
        self.period = period;
    }

    /// Time left on the timer (zero: not armed), for tests.
    #[cfg(test)]
    pub fn timer_left(&self) -> Duration {
        self.timer
            .as_ref()
            .map_or(Duration::ZERO, KickTimer::remaining)
    }

    /// Ends the window now for tests, as if its time were up.
    #[cfg(test)]
    pub fn expire(&mut self) {
        if self.until.is_some() {
            self.until = Some(Instant::now() - Duration::from_millis(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_needs_a_timer_and_opens_once() {
        let mut window = QuietWindow::new(Duration::from_secs(60));
        assert!(!window.can_open());
        window.open();
        assert!(!window.is_open(), "no timer, no window");
        window.set_timer(KickTimer::for_this_thread().unwrap());
        assert!(window.can_open());
        window.open();
        assert!(window.is_open() && !window.can_open() && !window.is_over());
        assert!(window.timer_left() > Duration::ZERO, "armed when opened");
        // Paused, the timer stops but the window stays; resumed with time left, it runs.
        window.pause();
        assert_eq!(window.timer_left(), Duration::ZERO);
        assert!(window.is_open());
        assert!(window.resume());
        assert!(window.timer_left() > Duration::ZERO);
        window.expire();
        assert!(window.is_over());
        window.pause();
        assert!(!window.resume(), "an expired window is not re-armed");
        assert_eq!(window.timer_left(), Duration::ZERO);
        assert!(window.close());
        assert!(!window.close(), "closing twice closes once");
        assert!(!window.is_open() && window.can_open());
        assert_eq!(window.timer_left(), Duration::ZERO);
    }
}
