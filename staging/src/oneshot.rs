//! A one-answer channel for an engine thread's reply: the answer goes into a shared slot and
//! the waiting caller is woken with one futex wake, without spinning. crossbeam's `bounded(1)`,
//! used before, spun with `sched_yield` before sleeping, and the woken caller then contended
//! with the engine thread for the channel's waker mutex: extra system calls and a wake-up on
//! every append, on machines with two CPUs shared by everything else.

use parking_lot::{Condvar, Mutex};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Slot<T> {
    state: Mutex<State<T>>,
    cv: Condvar,
}

struct State<T> {
    value: Option<T>,
    /// The sender answered or was dropped: no answer will come after this.
    sender_done: bool,
    receiver_gone: bool,
}

pub(crate) fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let slot = Arc::new(Slot {
        state: Mutex::new(State {
            value: None,
            sender_done: false,
            receiver_gone: false,
        }),
        cv: Condvar::new(),
    });
    (Sender { slot: slot.clone() }, Receiver { slot })
}

pub(crate) struct Sender<T> {
    slot: Arc<Slot<T>>,
}

impl<T> Sender<T> {
    /// Gives the answer; `Err` hands it back if the receiver is gone (it gave up waiting).
    pub fn send(self, value: T) -> Result<(), T> {
        {
            let mut st = self.slot.state.lock();
            if st.receiver_gone {
                return Err(value);
            }
            st.value = Some(value);
            st.sender_done = true;
        }
        self.slot.cv.notify_one();
        Ok(())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut st = self.slot.state.lock();
        if !st.sender_done {
            st.sender_done = true;
            drop(st);
            self.slot.cv.notify_one();
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RecvError {
    /// The sender was dropped without answering.
    Disconnected,
    Timeout,
}

pub(crate) struct Receiver<T> {
    slot: Arc<Slot<T>>,
}

impl<T> Receiver<T> {
    pub fn recv(self) -> Result<T, RecvError> {
        self.wait(None)
    }

    /// Whether an answer (or the sender's end) has come: `recv` would not block.
    pub fn is_ready(&self) -> bool {
        self.slot.state.lock().sender_done
    }

    pub fn recv_timeout(self, timeout: Duration) -> Result<T, RecvError> {
        self.wait(Some(Instant::now() + timeout))
    }

    fn wait(&self, deadline: Option<Instant>) -> Result<T, RecvError> {
        let mut st = self.slot.state.lock();
        loop {
            if let Some(v) = st.value.take() {
                return Ok(v);
            }
            if st.sender_done {
                return Err(RecvError::Disconnected);
            }
            match deadline {
                None => self.slot.cv.wait(&mut st),
                Some(d) => {
                    if self.slot.cv.wait_until(&mut st, d).timed_out() && st.value.is_none() {
                        // Gone from here on, in the same critical section as the decision:
                        // an answer sent after it is handed back to the sender (which frees
                        // what it answered with), not stored for nobody.
                        st.receiver_gone = true;
                        return Err(RecvError::Timeout);
                    }
                }
            }
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.slot.state.lock().receiver_gone = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_disconnects_and_timeouts() {
        let (tx, rx) = channel();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            tx.send(7).unwrap();
        });
        assert_eq!(rx.recv(), Ok(7));
        t.join().unwrap();

        let (tx, rx) = channel::<u32>();
        drop(tx);
        assert_eq!(rx.recv(), Err(RecvError::Disconnected));

        let (tx, rx) = channel::<u32>();
        assert_eq!(
            rx.recv_timeout(Duration::from_millis(10)),
            Err(RecvError::Timeout)
        );
        // The receiver gave up: the sender gets its answer back (the engine then frees the
        // record nobody will use).
        assert_eq!(tx.send(3), Err(3));

        let (tx, rx) = channel();
        tx.send(5).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(1)), Ok(5));
    }

    /// An answer sent just as the receiver times out is either received or handed back to
    /// the sender, never accepted and then dropped: the engine thread frees a record only
    /// when `send` hands it back, so an answer lost here is a staged record allocated
    /// forever. The send comes exactly in the window between the receiver's decision to
    /// time out and the end of its wait (before the `Receiver` is dropped).
    #[test]
    fn an_answer_sent_after_the_timeout_decision_is_handed_back() {
        let (tx, rx) = channel::<u32>();
        let waited = rx.wait(Some(Instant::now() + Duration::from_millis(1)));
        assert_eq!(waited, Err(RecvError::Timeout));
        assert_eq!(
            tx.send(9),
            Err(9),
            "the answer was accepted by a receiver that had already given up"
        );
        drop(rx);
    }
}
