//! A busy mount's log stays readable: requests spoolfs does not implement (ioctl, which
//! Python's `isatty` sends for every file it opens) are answered without a log line, so a
//! workload of many opens leaves nothing per request in the log.

use spoolfs_tests::*;
use std::fs;
use std::time::Duration;

const FILES: usize = 500;

#[test]
fn many_opens_leave_no_line_per_request() {
    require_fuse!();
    let m = Mount::of_new_volume(Backend::File);
    let dir = m.join("pkgs");
    fs::create_dir(&dir).unwrap();
    for i in 0..FILES {
        fs::write(dir.join(format!("f{i}.py")), format!("x = {i}\n")).unwrap();
    }
    // open() of a file in text mode calls isatty (an ioctl TCGETS) to choose its buffering.
    let script = format!(
        "import os\n\
         d = {:?}\n\
         n = 0\n\
         for name in sorted(os.listdir(d)):\n\
         \x20   with open(os.path.join(d, name)) as f:\n\
         \x20       n += len(f.read())\n\
         \x20   f = open(os.path.join(d, name), 'rb', buffering=-1)\n\
         \x20   f.isatty()\n\
         \x20   f.close()\n\
         print(n)\n",
        dir.display().to_string()
    );
    let out = run(
        command("python3").args(["-c", &script]),
        Duration::from_secs(300),
    );
    out.assert_success();
    let bytes: usize = (0..FILES).map(|i| format!("x = {i}\n").len()).sum();
    assert_eq!(out.stdout.trim(), bytes.to_string(), "{out}");
    // Everything the requests could have logged is in the log by now.
    let log = m.log_text();
    m.unmount();
    let noisy = log_lines_with(&log, &["Not Implemented", "ioctl"]);
    assert!(
        noisy.is_empty(),
        "log lines from requests:\n{}",
        noisy.join("\n")
    );
    // Only the mount's own lines: a handful, however many requests were served.
    let lines = log.lines().count();
    assert!(
        lines < 40,
        "{lines} log lines for {FILES} files opened twice:\n{log}"
    );
}
