//! The classic transport: read(2) a request from /dev/fuse, write(2) its reply.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::abi::{self, Plain};
use crate::fs::{Filesystem, ReplySink};
use crate::mount::FuseDev;
use crate::protocol::{self, Deferral, Outcome};
use crate::session::Stats;

/// Late replies over /dev/fuse: written by whichever thread has them.
struct DevSink(FuseDev);

impl ReplySink for DevSink {
    fn send(&self, _token: u64, header: abi::OutHeader, payload: &[u8]) {
        if let Err(e) = self.0.write_reply(&[header.as_bytes(), payload])
            && !matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENODEV))
        {
            eprintln!(
                "fuseuring: late reply to request {} failed: {e}",
                header.unique
            );
        }
    }
}

/// Serves requests read from `dev` until the connection ends (unmount or abort).
pub(crate) fn serve<F: Filesystem + ?Sized>(fs: &F, dev: &FuseDev, stats: &Stats, buf_size: usize) {
    let mut request = vec![0u8; buf_size];
    let mut reply = vec![0u8; buf_size];
    let deferral = match dev.try_clone() {
        Ok(d) => Deferral {
            sink: Arc::new(DevSink(d)),
            token: 0,
        },
        Err(e) => {
            eprintln!("fuseuring: cannot clone /dev/fuse: {e}; this thread stops");
            return;
        }
    };
    loop {
        let n = match dev.read(&mut request) {
            Ok(n) => n,
            Err(e) => match e.raw_os_error() {
                // Interrupted, or the request vanished (interrupted) before we read it.
                Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::ENOENT) => continue,
                // Unmounted or aborted.
                Some(libc::ENODEV) => return,
                _ => {
                    eprintln!("fuseuring: reading /dev/fuse failed: {e}; this thread stops");
                    return;
                }
            },
        };
        let Some(header) = abi::InHeader::read_from(&request[..n]) else {
            eprintln!("fuseuring: short request of {n} bytes from /dev/fuse ignored");
            continue;
        };
        let body = &request[size_of::<abi::InHeader>()..n];
        let (fixed, rest) = protocol::split_body(header.opcode, body);
        let outcome = if header.opcode == abi::FUSE_INIT {
            // INIT is answered once, by the session, before this loop starts.
            Outcome::Err(libc::EPROTO)
        } else {
            protocol::dispatch_deferring(fs, &header, fixed, rest, &mut reply, &deferral)
        };
        stats.dev_requests.fetch_add(1, Ordering::Relaxed);
        stats.count_opcode(header.opcode);
        let Some(out) = protocol::out_header(header.unique, outcome) else {
            continue;
        };
        stats.dev_replies.fetch_add(1, Ordering::Relaxed);
        let payload = &reply[..out.len as usize - size_of::<abi::OutHeader>()];
        if let Err(e) = dev.write_reply(&[out.as_bytes(), payload]) {
            match e.raw_os_error() {
                // The request was interrupted and is gone: nothing to do.
                Some(libc::ENOENT) => {}
                Some(libc::ENODEV) => return,
                _ => eprintln!(
                    "fuseuring: reply to request {} (opcode {}) failed: {e}",
                    header.unique, header.opcode
                ),
            }
        }
    }
}
