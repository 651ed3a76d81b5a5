#!/usr/bin/env bash
# FUSE over io_uring against /dev/fuse, on the same kernel, with the same in-memory file
# system (`fuseuring-memfs`, crate fuseuring/), mounted once per configuration and run, in
# alternating order (dev1, dev2, uring, dev1, ...): /dev/fuse with one reading thread (dev1),
# with two (dev2: a multi-threaded daemon such as spoolfs on 2 CPUs), and io_uring (one
# queue per CPU, two entries each, each queue's thread pinned to its CPU):
#
#   (a) the request round trip: fio 4 KiB pwrite at queue depth 1 (psync, one job) on one
#       file. Mean, p50, p99. Without writeback cache every write is two FUSE requests: the
#       kernel's GETXATTR of security.capability before each write, then the WRITE.
#   (b) the small-file workload of benches/smallfiles.sh, in memory:
#           for i in $(seq N); do echo $i > f$i; done
#       in one directory: seconds until all writes returned.
#
# and prints, per configuration, the figures averaged over the runs, and the ratios of each
# /dev/fuse configuration to io_uring.
#
#   sudo bash benches/fuse_transport.sh            # 2 runs each, 10 s fio, 10,000 files (~2 min)
#   sudo bash benches/fuse_transport.sh --quick    # 1 run each, 3 s fio, 2,000 files
#   sudo bash benches/fuse_transport.sh --runs 3 --fio-seconds 20 --files 10000
#
# Needs root, /dev/fuse, fio, and a kernel with FUSE over io_uring (Linux 6.14+): the fuse
# module's enable_uring switch is set to Y for each io_uring mount (by fuseuring-memfs
# --enable-uring) and put back to its previous value right after the mount. Environment:
# BENCH_DIR (/var/tmp: where the mount points go), CARGO (cargo), BENCH_PROFILE (release),
# CARGO_TARGET_DIR, BENCH_NO_BUILD (set: use the binary already built). The table goes to
# stdout, progress to stderr.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD

runs=2
fio_seconds=10
files=10000
while (($#)); do
    case "$1" in
        --quick) runs=1; fio_seconds=3; files=2000 ;;
        --runs) runs=$2; shift ;;
        --fio-seconds) fio_seconds=$2; shift ;;
        --files) files=$2; shift ;;
        -h|--help) sed -n '2,27p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done
for v in runs fio_seconds files; do
    [[ "${!v}" =~ ^[0-9]+$ && "${!v}" -gt 0 ]] || { echo "--${v//_/-}: a positive number" >&2; exit 2; }
done

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'fuse_transport.sh: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) == 0 ]] || die "run as root (FUSE mounts)"
[[ -e /dev/fuse ]] || die "/dev/fuse is missing"
command -v fio >/dev/null || die "fio is missing (apt-get install fio)"
param=/sys/module/fuse/parameters/enable_uring
[[ -e $param ]] || die "no $param: this kernel has no FUSE over io_uring (Linux 6.14+, CONFIG_FUSE_IO_URING)"

profile=${BENCH_PROFILE:-release}
case $profile in
    release) build_flags=(--release) ;;
    debug) build_flags=() ;;
    *) die "BENCH_PROFILE: release or debug, not $profile" ;;
esac
if [[ -z "${BENCH_NO_BUILD:-}" ]]; then
    log "building ($profile): fuseuring-memfs"
    "${CARGO:-cargo}" build "${build_flags[@]}" -p spoolfs-fuseuring --bin fuseuring-memfs >&2
fi
memfs=${CARGO_TARGET_DIR:-$repo/target}/$profile/fuseuring-memfs
[[ -x $memfs ]] || die "no $memfs (build it, or unset BENCH_NO_BUILD)"
[[ $profile == release ]] || log "WARNING: $profile binary: the figures of this run mean little"

uring_before=$(cat "$param")
work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/fuse-transport.XXXXXX")
mp=$work/mnt
mkdir -p "$mp"
pid=
cleanup() {
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    mountpoint -q "$mp" 2>/dev/null && umount -l "$mp" 2>/dev/null
    # fuseuring-memfs restores it itself; this covers a run killed mid-mount.
    [[ $(cat "$param") == "$uring_before" ]] || echo "$uring_before" > "$param"
    rm -rf "$work"
}
trap cleanup EXIT
log "kernel $(uname -r), $(nproc) CPUs, enable_uring=$uring_before; $runs run(s) per configuration, fio ${fio_seconds} s, $files files"

mount_memfs() { # configuration: dev1, dev2 or uring
    local args=()
    case $1 in
        dev1) args=(--transport dev --dev-threads 1) ;;
        dev2) args=(--transport dev --dev-threads 2) ;;
        uring) args=(--transport uring --enable-uring) ;;
    esac
    "$memfs" "$mp" --stats "${args[@]}" 2>"$work/memfs-$1.log" &
    pid=$!
    for _ in $(seq 100); do
        mountpoint -q "$mp" && grep -q "serving .* over ${1%[12]}" "$work/memfs-$1.log" && return 0
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    cat "$work/memfs-$1.log" >&2
    die "fuseuring-memfs --transport $1 did not mount"
}

unmount_memfs() {
    kill -TERM "$pid"
    wait "$pid" || die "fuseuring-memfs exited with $?"
    pid=
    sed 's/^/   /' "$work/memfs-$1.log" | grep -E "requests served|by opcode|enable_uring" >&2 || true
}

# Appends "mean p50 p99 iops" (µs, µs, µs, IOPS) of the fio run to $work/fio-$transport.
run_fio() { # transport run
    local out=$work/fio-$1-$2.json
    fio --name=roundtrip --filename="$mp/roundtrip" --rw=randwrite --bs=4k --size=16m \
        --ioengine=psync --iodepth=1 --numjobs=1 --time_based --runtime="$fio_seconds" \
        --output-format=json --output="$out" >/dev/null
    python3 - "$out" >>"$work/fio-$1" <<'EOF'
import json, sys
w = json.load(open(sys.argv[1]))["jobs"][0]["write"]
c = w["clat_ns"]
p = c["percentile"]
print(f'{c["mean"] / 1000:.1f} {p["50.000000"] / 1000:.1f} {p["99.000000"] / 1000:.1f} {w["iops"]:.0f}')
EOF
    log "$1 run $2: fio 4 KiB pwrite QD1 (mean p50 p99 µs, IOPS): $(tail -1 "$work/fio-$1")"
}

run_smallfiles() { # transport run
    mkdir "$mp/small"
    local t0 t1
    t0=$(date +%s.%N)
    bash -c 'cd "$1" && for i in $(seq "$2"); do echo $i > f$i; done' smallfiles "$mp/small" "$files"
    t1=$(date +%s.%N)
    local n
    n=$(find "$mp/small" -maxdepth 1 -type f -name 'f*' | wc -l)
    [[ $n == "$files" ]] || die "$1: $n files written, expected $files"
    [[ $(cat "$mp/small/f$files") == "$files" ]] || die "$1: f$files has the wrong content"
    python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.3f}')" "$t0" "$t1" >>"$work/small-$1"
    log "$1 run $2: $files small files in $(tail -1 "$work/small-$1") s"
}

for run in $(seq "$runs"); do
    for transport in dev1 dev2 uring; do
        mount_memfs "$transport"
        run_fio "$transport" "$run"
        run_smallfiles "$transport" "$run"
        unmount_memfs "$transport"
    done
done

python3 - "$work" "$runs" "$files" "$fio_seconds" "$(uname -r)" "$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)" <<'EOF'
import sys, statistics as st
work, runs, files, secs, kernel, commit = sys.argv[1:]
def fio(t):
    rows = [list(map(float, l.split())) for l in open(f"{work}/fio-{t}")]
    return [st.mean(col) for col in zip(*rows)]
def small(t):
    return st.mean(float(l) for l in open(f"{work}/small-{t}"))
names = {"dev1": "/dev/fuse, 1 thread", "dev2": "/dev/fuse, 2 threads", "uring": "io_uring"}
f = {t: fio(t) for t in names}
s = {t: small(t) for t in names}
print(f"FUSE transports on Linux {kernel}, commit {commit}, mean of {runs} run(s) each, alternating\n")
print("| transport | 4 KiB pwrite QD1 mean / p50 / p99 (µs) | IOPS | %s small files (s) |" % f"{int(files):,}")
print("|---|---|---|---|")
for t, name in names.items():
    print(f"| {name} | {f[t][0]:.1f} / {f[t][1]:.1f} / {f[t][2]:.1f} | {f[t][3]:.0f} | {s[t]:.2f} |")
print()
u = "uring"
for t in ("dev1", "dev2"):
    print(f"{names[t]} / io_uring: round trip mean {f[t][0] / f[u][0]:.2f}x, p99 {f[t][2] / f[u][2]:.2f}x; "
          f"small files {s[t] / s[u]:.2f}x (time saved by io_uring: {100 * (s[t] - s[u]) / s[t]:.0f}%)")
EOF
