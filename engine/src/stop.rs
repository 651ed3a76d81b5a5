//! How the engine tells its background threads and long work to stop.

use parking_lot::{Condvar, Mutex};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A flag the background threads wait on.
#[derive(Default)]
pub(crate) struct StopSignal {
    stopped: Mutex<bool>,
    cv: Condvar,
    /// Raised first: uploads and long work stop taking work at once.
    now: AtomicBool,
}

impl StopSignal {
    pub fn raise_now(&self) {
        self.now.store(true, Ordering::Release);
    }

    pub fn now(&self) -> bool {
        self.now.load(Ordering::Acquire)
    }

    pub fn raise(&self) {
        *self.stopped.lock() = true;
        self.cv.notify_all();
    }

    pub fn is_raised(&self) -> bool {
        *self.stopped.lock()
    }

    /// Waits up to `d`; true if stopped.
    pub fn wait(&self, d: Duration) -> bool {
        let mut stopped = self.stopped.lock();
        if !*stopped {
            self.cv.wait_for(&mut stopped, d);
        }
        *stopped
    }
}
