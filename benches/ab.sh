#!/usr/bin/env bash
# Two builds of spoolfs side by side, in alternating runs, to tell a change from noise:
#
#     sudo bash benches/ab.sh OLD_REV [NEW_REV] [--rounds N]
#
# NEW_REV defaults to HEAD (the working tree as committed). Each revision is built (release)
# in a detached worktree with its own target directory, $BENCH_DIR/spoolfs-ab-old and -new,
# kept for the next run. Each round runs, on each build in turn (old, new, then new, old in the
# next round, so neither always goes first), on a fresh writeback volume (object store on
# tmpfs, staging and cache on the disk under test):
#   (a) fio 4 KiB randwrite + fsync, QD1, 10 s: mean latency per write+fsync and fsync p99;
#   small files: `for i in $(seq 10000); do echo $i > f$i; done`: seconds until all returned;
#   (c) fio sequential 1 GiB in 1 MiB writes + fsync: MB/s.
# Prints one table with the per-round figures and the mean of each build, and the new/old ratio.
# Environment: BENCH_DIR (default /var/tmp, on the disk under test), CARGO (cargo),
# BENCH_AB_FILES (10000), BENCH_AB_SEQ (1G).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD

rounds=3
revs=()
while (($#)); do
    case "$1" in
        --rounds) rounds=$2; shift ;;
        -h|--help) sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "ab.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
        *) revs+=("$1") ;;
    esac
    shift
done
((${#revs[@]} >= 1 && ${#revs[@]} <= 2)) || { echo "usage: bash benches/ab.sh OLD_REV [NEW_REV] [--rounds N]" >&2; exit 2; }
[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || { echo "--rounds: a positive number" >&2; exit 2; }
old_rev=$(git rev-parse --short "${revs[0]}^{commit}") || { echo "ab.sh: no such revision ${revs[0]}" >&2; exit 2; }
new_rev=$(git rev-parse --short "${revs[1]:-HEAD}^{commit}") || { echo "ab.sh: no such revision ${revs[1]}" >&2; exit 2; }
[[ $old_rev != "$new_rev" ]] || { echo "ab.sh: $old_rev and ${revs[1]:-HEAD} are the same commit" >&2; exit 2; }
files=${BENCH_AB_FILES:-10000}
seq_size=${BENCH_AB_SEQ:-1G}
cargo=${CARGO:-cargo}
bench_name=ab.sh
# shellcheck source=benches/lib.sh
source benches/lib.sh
bench_require_root
command -v fio >/dev/null 2>&1 || {
    log "installing fio"
    DEBIAN_FRONTEND=noninteractive apt-get install -y fio >&2 ||
        { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y fio >&2; }
}

# Builds revision $1 (release) in the worktree of slot $2 (old or new), kept between runs so
# that the next build of that slot is incremental; prints the path of its spoolfs binary.
build_rev() {
    local rev=$1 tree=$bench_dir/spoolfs-ab-$2
    if [[ ! -d $tree ]]; then
        git worktree add --detach "$tree" "$rev" >&2 || die "cannot check out $rev into $tree"
    fi
    git -C "$tree" checkout -q --detach "$rev" || die "cannot check out $rev in $tree"
    log "building $rev (release) in $tree"
    (cd "$tree" && CARGO_TARGET_DIR=$tree/target "$cargo" build --release -p spoolfs-tools >&2) ||
        die "the build of $rev failed"
    echo "$tree/target/release/spoolfs"
}
declare -A bin
bin[$old_rev]=$(build_rev "$old_rev" old)
bin[$new_rev]=$(build_rev "$new_rev" new)

bench_init_work spoolfs-ab
store_parent=/dev/shm
[[ $(df --output=fstype /dev/shm 2>/dev/null | tail -1) == tmpfs ]] || store_parent=$work

# fio's JSON: mean µs per write+fsync (1/ops), fsync p99 µs, or MB/s of a sequential job.
fio_field() {
    python3 - "$1" "$2" <<'EOF'
import json, sys
job = json.load(open(sys.argv[1]))["jobs"][0]
w = job["write"]
if sys.argv[2] == "a":
    p99 = job["sync"]["lat_ns"]["percentile"].get("99.000000", 0) / 1000
    print(f"{1e6 / w['iops']:.0f} {p99:.0f}")
else:
    print(f"{w['io_bytes'] / (w['runtime'] / 1000) / 1e6:.0f}")
EOF
}

results=$work/results.tsv
: >"$results"
run_once() {
    local rev=$1 round=$2 spoolfs=${bin[$1]} tag=$1-$2
    local meta=redb://$work/$tag.redb mp=$work/mnt-$tag store
    store=$(mktemp -d "$store_parent/spoolfs-ab-store.XXXXXX")
    mkdir -p "$mp"
    "$spoolfs" format --meta "$meta" --storage "file://$store" "ab-$tag" >&2
    "$spoolfs" mount --meta "$meta" "$mp" --cache-dir "$work/cache-$tag" --log-file "$work/$tag.log" >&2
    mounts+=("$mp")
    fio --output-format=json --output="$work/$tag-a.json" --name=a --filename="$mp/a.dat" \
        --rw=randwrite --bs=4k --iodepth=1 --ioengine=psync --size=64M --fsync=1 \
        --runtime=10 --time_based >/dev/null
    read -r a_mean a_p99 < <(fio_field "$work/$tag-a.json" a)
    mkdir "$mp/small"
    local t0 t1
    t0=$(now)
    bash -c 'cd "$1" && for i in $(seq "$2"); do echo $i > f$i; done' small "$mp/small" "$files"
    t1=$(now)
    fio --output-format=json --output="$work/$tag-c.json" --name=c --filename="$mp/c.dat" \
        --rw=write --bs=1M --iodepth=1 --ioengine=psync --size="$seq_size" --end_fsync=1 >/dev/null
    local c_mbs
    c_mbs=$(fio_field "$work/$tag-c.json" c)
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$rev" "$round" "$a_mean" "$a_p99" "$(secs "$t0" "$t1")" "$c_mbs" >>"$results"
    log "$rev round $round: (a) mean $a_mean µs, fsync p99 $a_p99 µs; small files $(secs "$t0" "$t1") s; (c) $c_mbs MB/s"
    bench_unmount "$mp" 600
    rm -rf "$store" "$work/cache-$tag" "${meta#redb://}"
}

for round in $(seq "$rounds"); do
    if ((round % 2)); then order=("$old_rev" "$new_rev"); else order=("$new_rev" "$old_rev"); fi
    for rev in "${order[@]}"; do run_once "$rev" "$round"; done
done

echo
echo "A/B: old $old_rev, new $new_rev; $rounds rounds, alternating; $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, kernel $(uname -r); object store on $(df --output=fstype "$store_parent" | tail -1), staging on $(df --output=fstype "$work" | tail -1)."
echo
python3 - "$results" "$old_rev" "$new_rev" "$files" "$seq_size" <<'EOF'
import sys
from statistics import mean
path, old, new, files, seq = sys.argv[1:]
rows = [l.split("\t") for l in open(path).read().split("\n") if l]
cols = [("(a) write+fsync mean, µs", 2), ("(a) fsync p99, µs", 3),
        (f"{files} small files, s", 4), (f"(c) {seq} sequential, MB/s", 5)]
print("| measure | " + " | ".join(f"{old} round {r[1]}" for r in rows if r[0] == old)
      + f" | {old} mean | " + " | ".join(f"{new} round {r[1]}" for r in rows if r[0] == new)
      + f" | {new} mean | new / old |")
print("|---" * (2 * (len(rows) // 2) + 4) + "|")
for name, i in cols:
    o = [float(r[i]) for r in rows if r[0] == old]
    n = [float(r[i]) for r in rows if r[0] == new]
    fmt = (lambda v: f"{v:.2f}") if i == 4 else (lambda v: f"{v:.0f}")
    print(f"| {name} | " + " | ".join(map(fmt, o)) + f" | {fmt(mean(o))} | "
          + " | ".join(map(fmt, n)) + f" | {fmt(mean(n))} | {mean(n) / mean(o):.2f} |")
EOF
