//! Running sequences: a fresh volume per run, panics turned into failures, and the shrinking
//! of a failing sequence to a short regression.

use super::*;

/// A failed run: what went wrong, and the operations that ran (with literal paths, the failing
/// one last).
pub(crate) struct Failure {
    pub(crate) msg: String,
    pub(crate) ran: Vec<Op>,
}

pub(crate) fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    match p.downcast::<String>() {
        Ok(s) => *s,
        Err(p) => match p.downcast::<&str>() {
            Ok(s) => s.to_string(),
            Err(_) => "(non-string panic)".into(),
        },
    }
}

/// Runs `f`, turning a panic (of the engine or of the harness) into an error.
pub(crate) fn guarded<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => Err(format!("panic: {}", panic_text(p))),
    }
}

/// Drops a harness after a failure (its engine may be in any state).
pub(crate) fn drop_quietly(h: Harness) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(h)));
}

/// Runs a sequence against a fresh volume and the model.
pub(crate) fn run_ops_with(buffers: Buffers, ops: &[Op]) -> Result<(), Failure> {
    let mut h = match guarded(|| Ok(Harness::new(buffers))) {
        Ok(h) => h,
        Err(msg) => return Err(Failure { msg, ran: vec![] }),
    };
    let mut ran: Vec<Op> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let step = guarded(|| h.step(op));
        let done = match step {
            Ok(done) => done,
            Err(e) => {
                ran.extend(h.current.take());
                let msg = format!("step {i}: {e}");
                drop_quietly(h);
                return Err(Failure { msg, ran });
            }
        };
        if std::env::var_os("MODEL_TRACE").is_some() {
            match &done {
                Some(r) => eprintln!("ran  {i} {r:?}"),
                None => eprintln!("skip {i} {op:?}"),
            }
        }
        match done {
            Some(op) => {
                OPS_RUN.fetch_add(1, Ordering::Relaxed);
                ran.push(op.clone());
                if let Err(e) = guarded(|| h.check_tree(false)) {
                    let msg = format!("after step {i} {op:?}: {e}");
                    drop_quietly(h);
                    return Err(Failure { msg, ran });
                }
            }
            None => {
                OPS_SKIPPED.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    if let Err(e) = guarded(|| h.check_tree(true)) {
        drop_quietly(h);
        return Err(Failure {
            msg: format!("final check: {e}"),
            ran,
        });
    }
    guarded(|| h.finish()).map_err(|e| Failure {
        msg: format!("finish: {e}"),
        ran,
    })
}

/// Formats operations as Rust code for a regression test.
pub(crate) fn listing(ops: &[Op]) -> String {
    let mut out = String::from("run_ops(&[\n");
    for op in ops {
        out.push_str(&format!("    Op::{op:?},\n"));
    }
    out.push_str("]);\n");
    out
}

/// Shrinks a failing sequence of literal operations by deleting ranges of operations while it
/// still fails (literal paths keep their meaning when other operations go, unlike indexes).
pub(crate) fn minimize(buffers: Buffers, mut ops: Vec<Op>, deadline: Instant) -> (Vec<Op>, String) {
    let mut msg = match run_ops_with(buffers, &ops) {
        Ok(()) => return (ops, "(the sequence no longer fails)".into()),
        Err(f) => {
            ops = f.ran;
            f.msg
        }
    };
    let mut chunk = ops.len().div_ceil(2).max(1);
    loop {
        let mut progress = false;
        let mut start = 0;
        while start < ops.len() && Instant::now() < deadline {
            let mut candidate = ops.clone();
            candidate.drain(start..(start + chunk).min(ops.len()));
            match run_ops_with(buffers, &candidate) {
                Err(f) => {
                    ops = f.ran;
                    msg = f.msg;
                    progress = true;
                }
                Ok(()) => start += chunk,
            }
        }
        if Instant::now() >= deadline {
            break;
        }
        if !progress {
            if chunk == 1 {
                break;
            }
            chunk = chunk.div_ceil(2);
        }
    }
    (ops, msg)
}

/// Runs a hand-written sequence with both buffer configurations; panics with a minimized
/// sequence if it fails.
pub(crate) fn run_ops(ops: &[Op]) {
    for buffers in [
        Buffers::Large,
        Buffers::Small,
        Buffers::Tiny,
        Buffers::Writeback,
    ] {
        if let Err(f) = run_ops_with(buffers, ops) {
            panic!("{buffers:?}: {}\n{}", f.msg, listing(&f.ran));
        }
    }
}

pub(crate) fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
