//! The io_uring transport: one ring per kernel queue (one per possible CPU), each with
//! `depth` entries of two buffers (the request header and the payload), registered with
//! `FUSE_IO_URING_CMD_REGISTER`; a completed command is a request, answered in place and
//! handed back with `FUSE_IO_URING_CMD_COMMIT_AND_FETCH`, which waits for the next one.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use io_uring::{IoUring, cqueue, opcode, squeue, types};

use crate::abi::{self, Plain};
use crate::fs::{Filesystem, ReplySink};
use crate::mount::FuseDev;
use crate::protocol::{self, Deferral, Outcome};
use crate::session::Stats;

/// The `user_data` of the eventfd read that wakes a queue for late replies.
const WAKE: u64 = u64::MAX;

/// Late replies of a queue's entries (a SETLKW answered from a lock-wait thread): kept here
/// until the queue's thread, woken through an eventfd its ring reads, commits them (only
/// that thread may submit to its ring).
struct Mailbox {
    replies: Mutex<Vec<(usize, abi::OutHeader, Vec<u8>)>>,
    eventfd: OwnedFd,
}

impl Mailbox {
    fn new() -> std::io::Result<Self> {
        // SAFETY: plain system call; the descriptor is owned below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mailbox {
            replies: Mutex::new(Vec::new()),
            // SAFETY: fd is a new descriptor nobody else owns.
            eventfd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    fn take(&self) -> Vec<(usize, abi::OutHeader, Vec<u8>)> {
        std::mem::take(&mut *self.replies.lock().expect("mailbox"))
    }
}

impl ReplySink for Mailbox {
    fn send(&self, token: u64, header: abi::OutHeader, payload: &[u8]) {
        self.replies
            .lock()
            .expect("mailbox")
            .push((token as usize, header, payload.to_vec()));
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to our eventfd.
        unsafe { libc::write(self.eventfd.as_raw_fd(), one.as_ptr().cast(), 8) };
    }
}

fn wake_read(mailbox: &Mailbox, counter: &mut u64) -> squeue::Entry128 {
    squeue::Entry128::from(
        opcode::Read::new(
            types::Fd(mailbox.eventfd.as_raw_fd()),
            (counter as *mut u64).cast(),
            8,
        )
        .build()
        .user_data(WAKE),
    )
}

type Ring = IoUring<squeue::Entry128, cqueue::Entry>;

/// What one queue thread serves.
pub(crate) struct QueueSetup {
    pub qid: u16,
    pub depth: usize,
    pub payload_size: usize,
    /// Run the thread on CPU `qid`, where the requests of this queue come from.
    pub pin: bool,
}

/// The buffers of a queue's entries. The kernel keeps pointers to them from REGISTER on,
/// so they must not move, and must not be freed while the connection could still copy a
/// request into them: they are freed only once every entry's command has ended.
struct EntryBuffers {
    headers: *mut [abi::UringReqHeader],
    payloads: *mut [u8],
    payload_size: usize,
    iovecs: Vec<[libc::iovec; 2]>,
    /// Set when the thread stops with commands possibly still registered.
    leak: bool,
}

impl EntryBuffers {
    fn new(depth: usize, payload_size: usize) -> Self {
        let headers = Box::into_raw(vec![abi::UringReqHeader::default(); depth].into_boxed_slice());
        let payloads = Box::into_raw(vec![0u8; depth * payload_size].into_boxed_slice());
        let iovecs = (0..depth)
            .map(|i| {
                // SAFETY: i < depth, inside both allocations.
                unsafe {
                    [
                        libc::iovec {
                            iov_base: headers.cast::<abi::UringReqHeader>().add(i).cast(),
                            iov_len: size_of::<abi::UringReqHeader>(),
                        },
                        libc::iovec {
                            iov_base: payloads.cast::<u8>().add(i * payload_size).cast(),
                            iov_len: payload_size,
                        },
                    ]
                }
            })
            .collect();
        EntryBuffers {
            headers,
            payloads,
            payload_size,
            iovecs,
            leak: false,
        }
    }

    fn header(&self, i: usize) -> *mut abi::UringReqHeader {
        // SAFETY: callers pass i < depth.
        unsafe { self.headers.cast::<abi::UringReqHeader>().add(i) }
    }

    fn payload(&self, i: usize) -> *mut u8 {
        // SAFETY: callers pass i < depth.
        unsafe { self.payloads.cast::<u8>().add(i * self.payload_size) }
    }
}

impl Drop for EntryBuffers {
    fn drop(&mut self) {
        if self.leak {
            return;
        }
        // SAFETY: both came from Box::into_raw in new() and are freed once.
        unsafe {
            drop(Box::from_raw(self.headers));
            drop(Box::from_raw(self.payloads));
        }
    }
}

/// Sets the SQE's `len` field, which `UringCmd80` does not expose: REGISTER passes the
/// number of iovecs there.
fn with_sqe_len(sqe: squeue::Entry128, len: u32) -> squeue::Entry128 {
    const _: () = assert!(size_of::<squeue::Entry128>() == 128);
    // SAFETY: Entry128 is #[repr(C)]: a 64-byte `struct io_uring_sqe` then 64 command bytes,
    // all initialised; `len` is the u32 at byte 24 of the SQE.
    let mut bytes: [u8; 128] = unsafe { std::mem::transmute(sqe) };
    bytes[24..28].copy_from_slice(&len.to_ne_bytes());
    // SAFETY: same layout back.
    unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(bytes) }
}

fn fuse_cmd(fd: i32, cmd_op: u32, qid: u16, commit_id: u64, entry: usize) -> squeue::Entry128 {
    let req = abi::UringCmdReq {
        commit_id,
        qid,
        ..Default::default()
    };
    let mut cmd = [0u8; 80];
    cmd[..size_of::<abi::UringCmdReq>()].copy_from_slice(req.as_bytes());
    opcode::UringCmd80::new(types::Fd(fd), cmd_op)
        .cmd(cmd)
        .build()
        .user_data(entry as u64)
}

fn register_cmd(fd: i32, qid: u16, entry: usize, iov: &[libc::iovec; 2]) -> squeue::Entry128 {
    let req = abi::UringCmdReq {
        qid,
        ..Default::default()
    };
    let mut cmd = [0u8; 80];
    cmd[..size_of::<abi::UringCmdReq>()].copy_from_slice(req.as_bytes());
    let sqe = opcode::UringCmd80::new(types::Fd(fd), abi::FUSE_IO_URING_CMD_REGISTER)
        .cmd(cmd)
        .addr(Some(iov.as_ptr() as u64))
        .build()
        .user_data(entry as u64);
    with_sqe_len(sqe, 2)
}

/// A ring owned by one thread: single issuer, task work run when it waits, as the kernel
/// completes FUSE commands by task work in the submitting thread.
fn build_ring(depth: usize) -> std::io::Result<Ring> {
    // One submission per entry, and the eventfd read.
    let entries = (depth + 1).next_power_of_two() as u32;
    match Ring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(entries)
    {
        Ok(ring) => Ok(ring),
        // Kernels before 6.1 lack DEFER_TASKRUN.
        Err(_) => Ring::builder().build(entries),
    }
}

/// Checks that this process may create an io_uring with 128-byte SQEs.
pub(crate) fn probe() -> std::io::Result<()> {
    Ring::builder().build(2).map(drop)
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET stays in bounds for cpu < CPU_SETSIZE.
    unsafe {
        if cpu >= libc::CPU_SETSIZE as usize {
            return;
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        // Best effort: an offline CPU refuses, and the queue still works unpinned.
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

fn is_connection_end(errno: i32) -> bool {
    matches!(
        errno,
        libc::ENOTCONN | libc::ECONNABORTED | libc::ECANCELED | libc::ENODEV
    )
}

/// Runs one queue: registers its entries, reports on `started` whether that worked, then
/// serves requests until the connection ends.
pub(crate) fn run_queue<F: Filesystem + ?Sized>(
    fs: &F,
    dev: FuseDev,
    setup: QueueSetup,
    stats: &Stats,
    started: Sender<Result<(), String>>,
) {
    let qid = setup.qid;
    if setup.pin {
        pin_to_cpu(qid as usize);
    }
    let mut ring = match build_ring(setup.depth) {
        Ok(ring) => ring,
        Err(e) => {
            let _ = started.send(Err(format!("queue {qid}: io_uring_setup: {e}")));
            return;
        }
    };
    let mut buffers = EntryBuffers::new(setup.depth, setup.payload_size);
    let fd = dev.fd();
    for (i, iov) in buffers.iovecs.iter().enumerate() {
        // SAFETY: the iovecs and the buffers they point to outlive the commands (see
        // EntryBuffers); the SQ has room for `depth` entries.
        unsafe {
            ring.submission()
                .push(&register_cmd(fd, qid, i, iov))
                .expect("SQ sized for every entry");
        }
    }
    if let Err(e) = ring.submit() {
        buffers.leak = true;
        let _ = started.send(Err(format!("queue {qid}: submitting REGISTER: {e}")));
        return;
    }
    // REGISTER either fails at once (a completion with an error) or stays pending until a
    // request arrives (a completion with 0).
    let mut completions: Vec<(usize, i32)> = ring
        .completion()
        .map(|c| (c.user_data() as usize, c.result()))
        .collect();
    if let Some(&(_, res)) = completions.iter().find(|&&(_, res)| res < 0) {
        buffers.leak = true;
        let err = std::io::Error::from_raw_os_error(-res);
        let _ = started.send(Err(format!(
            "queue {qid}: FUSE_IO_URING_CMD_REGISTER: {err}"
        )));
        return;
    }
    let mailbox = match Mailbox::new() {
        Ok(m) => Arc::new(m),
        Err(e) => {
            buffers.leak = true;
            let _ = started.send(Err(format!("queue {qid}: eventfd: {e}")));
            return;
        }
    };
    // The eventfd read's buffer stays put (boxed) until the ring is gone.
    let mut wake_counter = Box::new(0u64);
    // SAFETY: the counter outlives the ring (dropped after it, below).
    unsafe {
        ring.submission()
            .push(&wake_read(&mailbox, &mut wake_counter))
            .expect("SQ sized for every entry and the eventfd read");
    }
    let _ = started.send(Ok(()));

    let mut live = setup.depth;
    let mut reply = vec![0u8; setup.payload_size];
    let sink: Arc<dyn ReplySink> = mailbox.clone();
    loop {
        for &(entry, res) in &completions {
            if entry as u64 == WAKE {
                if res < 0 {
                    continue;
                }
                for (late_entry, header, payload) in mailbox.take() {
                    let commit_id = commit_late(&buffers, late_entry, &header, &payload);
                    push_commit(&mut ring, fd, qid, commit_id, late_entry);
                }
                // SAFETY: as above.
                unsafe {
                    ring.submission()
                        .push(&wake_read(&mailbox, &mut wake_counter))
                        .expect("SQ sized for every entry and the eventfd read");
                }
                continue;
            }
            if res < 0 {
                live -= 1;
                if !is_connection_end(-res) {
                    eprintln!(
                        "fuseuring: queue {qid} entry {entry}: command failed: {}",
                        std::io::Error::from_raw_os_error(-res)
                    );
                }
                continue;
            }
            let deferral = Deferral {
                sink: sink.clone(),
                token: entry as u64,
            };
            stats.ring_requests.fetch_add(1, Ordering::Relaxed);
            // A deferred request's entry is committed once its late reply comes.
            if let Some(commit_id) = answer(fs, &buffers, entry, &mut reply, stats, &deferral) {
                push_commit(&mut ring, fd, qid, commit_id, entry);
            }
        }
        completions.clear();
        if live == 0 {
            break;
        }
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => {
                eprintln!("fuseuring: queue {qid}: io_uring_enter: {e}; the queue stops");
                buffers.leak = true;
                std::mem::forget(wake_counter);
                return;
            }
        }
        completions.extend(
            ring.completion()
                .map(|c| (c.user_data() as usize, c.result())),
        );
    }
    // Every command ended with the connection: the kernel holds no entry for a request.
    drop(ring);
    drop(wake_counter);
    drop(dev);
}

/// Hands entry `entry` back to the kernel with its reply (COMMIT_AND_FETCH).
fn push_commit(ring: &mut Ring, fd: i32, qid: u16, commit_id: u64, entry: usize) {
    let sqe = fuse_cmd(
        fd,
        abi::FUSE_IO_URING_CMD_COMMIT_AND_FETCH,
        qid,
        commit_id,
        entry,
    );
    // SAFETY: the entry's buffers outlive the command (see EntryBuffers); at most one
    // command per entry is in flight.
    unsafe {
        ring.submission()
            .push(&sqe)
            .expect("SQ sized for every entry and the eventfd read");
    }
}

/// Writes a late reply into entry `entry`'s buffers; returns the commit id to hand it back
/// with.
fn commit_late(
    buffers: &EntryBuffers,
    entry: usize,
    header: &abi::OutHeader,
    payload: &[u8],
) -> u64 {
    let len = payload.len().min(buffers.payload_size);
    // SAFETY: a deferred entry stays ours until committed; `entry` came from this queue.
    unsafe {
        std::ptr::copy_nonoverlapping(payload.as_ptr(), buffers.payload(entry), len);
        let h = &mut *buffers.header(entry);
        h.in_out[..size_of::<abi::OutHeader>()].copy_from_slice(header.as_bytes());
        h.ring_ent_in_out.payload_sz = len as u32;
        h.ring_ent_in_out.commit_id
    }
}

/// Serves the request in entry `entry` and writes its reply into the same buffers;
/// returns the commit id to hand the entry back with, or `None` when the reply comes later
/// (through the mailbox).
fn answer<F: Filesystem + ?Sized>(
    fs: &F,
    buffers: &EntryBuffers,
    entry: usize,
    reply: &mut [u8],
    stats: &Stats,
    deferral: &Deferral,
) -> Option<u64> {
    let header_ptr = buffers.header(entry);
    // SAFETY: the entry is ours until we commit it: the kernel wrote it before completing
    // the command and does not touch it until COMMIT_AND_FETCH.
    let header: abi::UringReqHeader = unsafe { std::ptr::read(header_ptr) };
    let ent = header.ring_ent_in_out;
    let request = abi::InHeader::read_from(&header.in_out).expect("in_out holds an in header");
    stats.count_opcode(request.opcode);
    let payload_len = (ent.payload_sz as usize).min(buffers.payload_size);
    // SAFETY: as above; payload_len is within the entry's payload buffer.
    let payload = unsafe { std::slice::from_raw_parts(buffers.payload(entry), payload_len) };
    let fixed_len = abi::op_header_len(request.opcode).min(abi::FUSE_URING_OP_IN_OUT_SZ);
    let outcome = match protocol::dispatch_deferring(
        fs,
        &request,
        &header.op_in[..fixed_len],
        payload,
        reply,
        deferral,
    ) {
        // Requests without a reply travel through /dev/fuse; answer anything else so the
        // entry comes back.
        Outcome::NoReply => Outcome::Ok(0),
        Outcome::Deferred => return None,
        outcome => outcome,
    };
    let out = protocol::out_header(request.unique, outcome).expect("a reply");
    let len = out.len as usize - size_of::<abi::OutHeader>();
    // SAFETY: the entry is ours (above); len <= reply.len() == payload_size.
    unsafe {
        std::ptr::copy_nonoverlapping(reply.as_ptr(), buffers.payload(entry), len);
        let h = &mut *header_ptr;
        h.in_out[..size_of::<abi::OutHeader>()].copy_from_slice(out.as_bytes());
        h.ring_ent_in_out.payload_sz = len as u32;
    }
    Some(ent.commit_id)
}
