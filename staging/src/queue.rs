//! An engine thread's request queue: a bounded crossbeam channel whose receiver sleeps on a
//! condition variable at once when the queue is empty. crossbeam's own `recv` spins and then
//! calls `sched_yield` several times before it sleeps: between two small appends an idle
//! engine thread took the CPU from the FUSE thread and the writer some eight times per small
//! file, on machines with two CPUs shared by everything else.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, SendError, TryRecvError, TrySendError};
use parking_lot::{Condvar, Mutex};

/// Where the receiver sleeps, and whether it does.
struct Doorbell {
    sleeping: AtomicBool,
    /// The (only) sender is gone.
    closed: AtomicBool,
    lock: Mutex<()>,
    cv: Condvar,
}

impl Doorbell {
    /// Wakes the receiver if it sleeps (or is about to: see [`Receiver::wait`]).
    fn ring(&self) {
        // Pairs with the fence in `wait`: either the receiver sees what was sent or this sees
        // it sleeping.
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst) {
            let _held = self.lock.lock();
            self.cv.notify_one();
        }
    }
}

pub(crate) fn bounded<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    let bell = Arc::new(Doorbell {
        sleeping: AtomicBool::new(false),
        closed: AtomicBool::new(false),
        lock: Mutex::new(()),
        cv: Condvar::new(),
    });
    (
        Sender {
            tx: Some(tx),
            bell: bell.clone(),
        },
        Receiver { rx, bell },
    )
}

/// Not `Clone`: one sender per queue, so that its drop closes the queue.
pub(crate) struct Sender<T> {
    /// `None` only while dropping.
    tx: Option<crossbeam_channel::Sender<T>>,
    bell: Arc<Doorbell>,
}

impl<T> Sender<T> {
    /// Queues `value` (blocking while the queue is full); `Err` hands it back when the
    /// receiver is gone.
    pub fn send(&self, value: T) -> Result<(), SendError<T>> {
        let tx = self
            .tx
            .as_ref()
            .expect("a sender is only emptied when dropped");
        tx.send(value)?;
        self.bell.ring();
        Ok(())
    }

    /// Queues every value and wakes the receiver once, after the last (sooner only if the
    /// queue fills), so that a sleeping receiver takes them as one batch. Hands back the
    /// values a closed queue refused.
    pub fn send_all(&self, values: Vec<T>) -> Vec<T> {
        let tx = self
            .tx
            .as_ref()
            .expect("a sender is only emptied when dropped");
        let mut refused = Vec::new();
        for value in values {
            if !refused.is_empty() {
                refused.push(value);
                continue;
            }
            match tx.try_send(value) {
                Ok(()) => {}
                Err(TrySendError::Full(value)) => {
                    // The receiver must drain the queue before more fits.
                    self.bell.ring();
                    if let Err(SendError(value)) = tx.send(value) {
                        refused.push(value);
                    }
                }
                Err(TrySendError::Disconnected(value)) => refused.push(value),
            }
        }
        self.bell.ring();
        refused
    }

    /// Requests waiting in the queue.
    pub fn len(&self) -> usize {
        self.tx.as_ref().map_or(0, |tx| tx.len())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        // Disconnect first, then wake the receiver so that it finds the channel closed.
        drop(self.tx.take());
        self.bell.closed.store(true, Ordering::SeqCst);
        self.bell.ring();
    }
}

pub(crate) struct Receiver<T> {
    rx: crossbeam_channel::Receiver<T>,
    bell: Arc<Doorbell>,
}

impl<T> Receiver<T> {
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        self.rx.try_recv()
    }

    /// The next request; `Err` once every sender is gone and the queue is empty.
    pub fn recv(&self) -> Result<T, ()> {
        match self.wait(None) {
            Ok(v) => Ok(v),
            Err(_) => Err(()),
        }
    }

    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        self.wait(Some(Instant::now() + timeout))
    }

    fn wait(&self, deadline: Option<Instant>) -> Result<T, RecvTimeoutError> {
        loop {
            match self.rx.try_recv() {
                Ok(v) => return Ok(v),
                Err(TryRecvError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
                Err(TryRecvError::Empty) => {}
            }
            let mut held = self.bell.lock.lock();
            self.bell.sleeping.store(true, Ordering::SeqCst);
            // Pairs with the fence in `Doorbell::ring`: a request sent before this point is
            // seen by the check below; one sent after it finds the receiver sleeping and
            // waits for the lock, which the wait below gives up atomically.
            fence(Ordering::SeqCst);
            let mut timed_out = false;
            if self.rx.is_empty() && !self.bell.closed.load(Ordering::SeqCst) {
                match deadline {
                    None => self.bell.cv.wait(&mut held),
                    Some(d) => timed_out = self.bell.cv.wait_until(&mut held, d).timed_out(),
                }
            }
            self.bell.sleeping.store(false, Ordering::SeqCst);
            drop(held);
            if timed_out && self.rx.is_empty() {
                return Err(RecvTimeoutError::Timeout);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sleeping_receiver_wakes_for_a_request_and_for_its_senders_end() {
        let (tx, rx) = bounded::<u32>(4);
        let receiver = std::thread::spawn(move || {
            let first = rx.recv();
            let second = rx.recv();
            (first, second)
        });
        // Let the receiver find the queue empty and sleep.
        std::thread::sleep(Duration::from_millis(50));
        tx.send(7).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        drop(tx);
        let (first, second) = receiver.join().unwrap();
        assert_eq!(first, Ok(7));
        assert_eq!(second, Err(()), "the sender's end closes the queue");
    }

    #[test]
    fn a_timed_wait_ends_empty_handed_and_requests_sent_before_it_are_taken() {
        let (tx, rx) = bounded::<u32>(4);
        let t0 = Instant::now();
        assert_eq!(
            rx.recv_timeout(Duration::from_millis(30)),
            Err(RecvTimeoutError::Timeout)
        );
        assert!(t0.elapsed() >= Duration::from_millis(30));
        tx.send(1).unwrap();
        tx.send(2).unwrap();
        assert_eq!(tx.len(), 2);
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(1));
        assert_eq!(rx.try_recv(), Ok(2));
        drop(tx);
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(5)),
            Err(RecvTimeoutError::Disconnected)
        );
    }

    #[test]
    fn send_all_wakes_a_sleeping_receiver_once_with_everything_queued() {
        let (tx, rx) = bounded::<u32>(8);
        let bell = tx.bell.clone();
        let receiver = std::thread::spawn(move || {
            let first = rx.recv().unwrap();
            // Whatever was queued when the receiver woke: one batch.
            let mut batch = vec![first];
            while let Ok(v) = rx.try_recv() {
                batch.push(v);
            }
            batch
        });
        while !bell.sleeping.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(tx.send_all(vec![1, 2, 3]).is_empty());
        assert_eq!(receiver.join().unwrap(), vec![1, 2, 3]);
    }

    #[test]
    fn send_all_past_the_capacity_wakes_the_receiver_and_a_closed_queue_refuses() {
        // More values than the queue holds: the sender must wake the receiver to make room,
        // or both wait for ever.
        let (tx, rx) = bounded::<u32>(2);
        let receiver = std::thread::spawn(move || {
            let mut got = Vec::new();
            while let Ok(v) = rx.recv() {
                got.push(v);
            }
            got
        });
        std::thread::sleep(Duration::from_millis(20));
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || {
            let refused = tx.send_all((0..50).collect());
            drop(tx);
            let _ = done_tx.send(refused);
        });
        let refused = done_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("send_all is stuck on a full queue");
        assert!(refused.is_empty());
        assert_eq!(receiver.join().unwrap(), (0..50).collect::<Vec<_>>());

        let (tx, rx) = bounded::<u32>(2);
        drop(rx);
        assert_eq!(tx.send_all(vec![4, 5, 6]), vec![4, 5, 6]);
    }

    #[test]
    fn no_wake_up_is_lost_between_a_sender_and_a_receiver_going_to_sleep() {
        // Many hand-offs, each waited for: a lost wake-up leaves the receiver asleep and the
        // test stuck on its answer.
        let (tx, rx) = bounded::<u32>(1);
        let (answer_tx, answer_rx) = bounded::<u32>(1);
        let echo = std::thread::spawn(move || {
            while let Ok(v) = rx.recv() {
                answer_tx.send(v).unwrap();
            }
        });
        for i in 0..20_000 {
            tx.send(i).unwrap();
            assert_eq!(answer_rx.recv_timeout(Duration::from_secs(10)), Ok(i));
        }
        drop(tx);
        echo.join().unwrap();
    }
}
