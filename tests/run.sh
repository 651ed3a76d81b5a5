#!/usr/bin/env bash
# Builds the spoolfs binary and runs the whole test suite (unit + integration tests).
#
#   bash tests/run.sh                                  # cargo test --workspace --no-fail-fast
#   bash tests/run.sh -p spoolfs-tests --test posix    # cargo test ARGS (instead of --workspace)
#
# Needs: a Rust toolchain; s3s-fs 0.14.1 (installed here with `cargo install` when missing);
# for the FUSE tests root and /dev/fuse (without them those tests print "SKIPPED" and pass,
# and under CI=true they fail); a full run repeats the main FUSE suites over FUSE over
# io_uring where the kernel has it (Linux 6.14+; else a SKIPPED line); the run ends with the
# count of tests and of skips;
# cp, tar, diff, git, python3 (with venv and pip). `.ci/run` installs the Debian packages.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
export PATH="$cargo_bin:$PATH"

if [[ -z "${S3S_FS_BIN:-}" ]] && ! command -v s3s-fs >/dev/null 2>&1; then
    echo "== installing s3s-fs 0.14.1 (once; takes a few minutes)"
    cargo install s3s-fs --version 0.14.1 --features binary --locked
fi

echo "== building the spoolfs binary"
cargo build -p spoolfs-tools
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
export SPOOLFS_BIN="${SPOOLFS_BIN:-$target_dir/debug/spoolfs}"
"$SPOOLFS_BIN" --help >/dev/null

# Every temporary file and mount of this run lives in a private directory, so that the clean-up
# below never touches another run's mounts (several test runs may share a machine).
run_tmp="$(mktemp -d "${TMPDIR:-/tmp}/spoolfs-run.XXXXXX")"
export TMPDIR="$run_tmp"

# Test helpers unmount everything they mount, even when a test panics. Should the test process
# itself die (timeout, abort), detach whatever spoolfs test mounts are left under the temp dir.
cleanup_mounts() {
    local tmp="$run_tmp"
    # mountinfo: field 5 is the mount point; the file system type follows the " - " separator.
    awk -v tmp="$tmp/spoolfs-" '{
        for (i = 1; i <= NF; i++) if ($i == "-") break;
        if (index($5, tmp) == 1 && $(i + 1) ~ /^fuse/) print $5
    }' /proc/self/mountinfo | sort -r | while read -r mp; do
        echo "== detaching leftover mount $mp" >&2
        umount -l "$mp" 2>/dev/null || fusermount3 -uz "$mp" 2>/dev/null || true
    done
}
cleanup() {
    cleanup_mounts
    rm -rf "$run_tmp" 2>/dev/null || true
}
trap cleanup EXIT

full_run=0
if (($# == 0)); then
    full_run=1
    set -- --workspace --no-fail-fast
fi
# Every test that cannot run here (or does not apply) adds a line to this file.
export SPOOLFS_SKIP_LOG="$run_tmp/skipped.log"
: >"$SPOOLFS_SKIP_LOG"
echo "== cargo test $*"
# A hung FUSE request must not hang CI forever.
status=0
timeout -k 60s "${SPOOLFS_TEST_TIMEOUT:-45m}" cargo test "$@" 2>&1 | tee "$run_tmp/test.log" ||
    status=${PIPESTATUS[0]}

# The main FUSE suites once more over FUSE over io_uring (the first pass mounts with
# --fuse-transport auto, which is /dev/fuse unless the fuse module's enable_uring is on):
# POSIX behaviour, the tools' mount paths, locks, ACLs and passthrough through the binary,
# the fuse crate's mount and request-count tests in-process. About a minute. enable_uring is
# turned on for the pass and put back after it.
uring_param=/sys/module/fuse/parameters/enable_uring
uring_skip() {
    echo "!!!!! SKIPPED: the io_uring pass of the FUSE tests: $1 !!!!!" >&2
    echo "SKIPPED: io_uring pass of the FUSE tests: $1" >>"$SPOOLFS_SKIP_LOG"
}
if ((full_run)); then
    if [[ ! -e $uring_param ]]; then
        uring_skip "the kernel has no FUSE over io_uring (no $uring_param: Linux 6.14+ with CONFIG_FUSE_IO_URING)"
    elif (($(id -u) != 0)) || [[ ! -w /dev/fuse ]]; then
        uring_skip "needs root and /dev/fuse"
    else
        uring_before=$(cat "$uring_param")
        restore_uring() { echo "$uring_before" >"$uring_param" 2>/dev/null || true; }
        trap 'restore_uring; cleanup' EXIT
        if ! echo Y 2>/dev/null >"$uring_param"; then
            uring_skip "cannot turn $uring_param on"
        else
            echo "== cargo test (FUSE over io_uring): posix, ops, locks, acl, cache, fuse mount and requests"
            SPOOLFS_TEST_FUSE_TRANSPORT=uring timeout -k 60s "${SPOOLFS_TEST_TIMEOUT:-45m}" \
                cargo test --no-fail-fast -p spoolfs-tests -p spoolfs-fuse \
                --test posix --test ops --test locks --test acl --test cache \
                --test mount --test requests 2>&1 | tee -a "$run_tmp/test.log" ||
                status=${PIPESTATUS[0]}
        fi
        restore_uring
    fi
fi

# The totals over every test binary, and what was skipped: cargo counts a skipped test as
# passed, so the skips are listed apart.
awk '/^test result:/ {
        for (i = 1; i <= NF; i++) {
            if ($(i + 1) ~ /^passed/) p += $i
            if ($(i + 1) ~ /^failed/) f += $i
            if ($(i + 1) ~ /^ignored/) g += $i
        }
    }
    END { printf "== tests: %d passed, %d failed, %d ignored\n", p, f, g }' "$run_tmp/test.log"
skipped=$(grep -c '^SKIPPED: ' "$SPOOLFS_SKIP_LOG" || true)
not_applicable=$(grep -c '^NOT APPLICABLE: ' "$SPOOLFS_SKIP_LOG" || true)
echo "== skipped: $skipped test(s) could not run here (cargo counts them as passed), $not_applicable not applicable"
sort "$SPOOLFS_SKIP_LOG" | uniq -c | sed 's/^/   /'
exit "$status"
