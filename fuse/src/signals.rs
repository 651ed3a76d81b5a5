//! Termination signals for a process serving a mount: blocked in every thread, taken by one
//! thread with sigwait, so that none of them interrupts a FUSE thread mid-request.

/// Blocks SIGTERM, SIGINT and SIGHUP in this thread and in every thread started after it, so
/// that only the signal thread (sigwait on the returned set) receives them.
pub fn block_termination_signals() -> libc::sigset_t {
    // SAFETY: plain signal-set manipulation on a local, initialised set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}
