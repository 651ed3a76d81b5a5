//! Sequential readahead: when an open file is read front to back, the blocks of the next
//! `readahead` bytes are fetched in the background (a few threads, a bounded queue), so a
//! cold sequential read does not stall on one object-store round trip per block.
//!
//! Bounded on every side: the queue drops work when full, a block already cached or in
//! flight is not fetched twice, and what is fetched lands in the bounded block caches. The
//! threads hold only a weak reference to the object reader and end when it is dropped, or
//! at [`Readahead::stop`], which waits for them.

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use parking_lot::{Condvar, Mutex};
use std::collections::HashSet;
use std::sync::{Arc, Weak};

/// Blocks queued for the fetchers at most; more are dropped.
const READAHEAD_QUEUE: usize = 256;

/// What the fetchers fetch with: the object reader, which puts what it fetches into the
/// caches. A trait so that this module does not depend on the reader that owns it.
pub(crate) trait Prefetch: Send + Sync {
    fn prefetch(&self, job: Fetch);
}

/// One piece of object data to fetch: block `index` of `slice` (of `size` bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Fetch {
    pub slice: u64,
    pub size: u32,
    pub index: u32,
}

pub(crate) struct Readahead {
    /// Bytes to read ahead of a sequential reader (0: off).
    pub window: u64,
    tx: Sender<Fetch>,
    /// The queue's other end, for [`Self::stop`] to empty it.
    rx: Receiver<Fetch>,
    in_flight: Arc<InFlight>,
    /// Dropped by [`Self::stop`]: the fetchers end when it is gone.
    running: Mutex<Option<Sender<()>>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

/// Blocks queued or being fetched, by (slice, index); readers wait for them instead of
/// fetching the same block twice.
#[derive(Default)]
struct InFlight {
    set: Mutex<HashSet<(u64, u32)>>,
    done: Condvar,
}

/// Where a reader of one handle is: the end of its last read and how many reads in a row
/// started where the previous one ended.
#[derive(Default, Clone, Copy, Debug)]
pub(crate) struct Stream {
    pub next: u64,
    pub streak: u32,
}

impl Stream {
    /// Records a read of `[offset, offset + len)`; true when the reader is sequential.
    pub fn advance(&mut self, offset: u64, len: u64) -> bool {
        if offset == self.next && offset > 0 {
            self.streak = self.streak.saturating_add(1);
        } else {
            self.streak = 0;
        }
        self.next = offset + len;
        self.streak >= 1
    }
}

impl Readahead {
    /// Starts `threads` fetchers for `reader` (which is not fully built yet: they only hold
    /// a weak reference, upgraded for each job).
    pub fn start(
        window: u64,
        threads: usize,
        reader: Weak<dyn Prefetch>,
    ) -> std::io::Result<Readahead> {
        let (tx, rx) = bounded::<Fetch>(READAHEAD_QUEUE);
        let (running, stopped) = bounded::<()>(0);
        let in_flight = Arc::new(InFlight::default());
        let mut handles = Vec::with_capacity(threads);
        for i in 0..threads {
            let rx: Receiver<Fetch> = rx.clone();
            let stopped = stopped.clone();
            let reader = reader.clone();
            let in_flight = in_flight.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("spoolfs-ra{i}"))
                .spawn(move || {
                    loop {
                        let job = crossbeam_channel::select_biased! {
                            recv(stopped) -> _ => break,
                            recv(rx) -> job => match job {
                                Ok(job) => job,
                                Err(_) => break,
                            },
                        };
                        let Some(r) = reader.upgrade() else {
                            break;
                        };
                        r.prefetch(job);
                        drop(r);
                        in_flight.set.lock().remove(&(job.slice, job.index));
                        in_flight.done.notify_all();
                    }
                });
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => {
                    // The ones started end with the sender.
                    drop(running);
                    for h in handles {
                        let _ = h.join();
                    }
                    return Err(e);
                }
            }
        }
        Ok(Readahead {
            window,
            tx,
            rx,
            in_flight,
            running: Mutex::new(Some(running)),
            threads: Mutex::new(handles),
        })
    }

    /// Drops what is queued and waits for the fetches in flight: nothing is fetched or
    /// written to a cache after this returns. Later jobs are dropped.
    pub fn stop(&self) {
        drop(self.running.lock().take());
        let handles = std::mem::take(&mut *self.threads.lock());
        let me = std::thread::current().id();
        for h in handles {
            if h.thread().id() != me {
                let _ = h.join();
            }
        }
        // Readers waiting for a block that will not come go and fetch it themselves.
        let mut set = self.in_flight.set.lock();
        while let Ok(job) = self.rx.try_recv() {
            set.remove(&(job.slice, job.index));
        }
        self.in_flight.done.notify_all();
    }

    /// Queues `job` unless it is already queued or running; drops it when the queue is full
    /// or the fetchers have stopped.
    pub fn queue(&self, job: Fetch) {
        // Held until the job is queued, so that `stop` finds it in the queue.
        let running = self.running.lock();
        if running.is_none() || !self.in_flight.set.lock().insert((job.slice, job.index)) {
            return;
        }
        match self.tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.in_flight.set.lock().remove(&(job.slice, job.index));
                self.in_flight.done.notify_all();
            }
        }
    }

    /// Waits (a bounded time) while block `index` of `slice` is being fetched ahead.
    pub fn wait_for(&self, slice: u64, index: u32) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut set = self.in_flight.set.lock();
        while set.contains(&(slice, index)) {
            if self
                .in_flight
                .done
                .wait_until(&mut set, deadline)
                .timed_out()
            {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Stream;

    #[test]
    fn streams_are_sequential_after_two_reads_in_a_row() {
        let mut s = Stream::default();
        assert!(!s.advance(0, 100));
        assert!(s.advance(100, 100));
        assert!(s.advance(200, 50));
        assert!(!s.advance(1000, 10), "a jump restarts the count");
        assert!(s.advance(1010, 10));
    }
}
