#!/usr/bin/env bash
# The small-file workload: N files of a few bytes, written by a shell loop into one directory,
#
#     for i in $(seq N); do echo $i > dir/f$i; done
#
# on spoolfs writeback (the default), spoolfs standard mode (--writeback=false), a local ext4
# directory (the floor) and rclone's VFS cache (`rclone mount --vfs-cache-mode writes`), all
# against s3s-fs behind spoolfs-s3proxy, which adds a delay (20 ms) to every request and counts
# requests by method. For each system it reports the seconds until all writes returned, the
# seconds until every file is in the object store, and the PUT requests made.
#
#   sudo bash benches/smallfiles.sh            # 10,000 files (several minutes: standard mode
#                                              # and rclone pay a round trip per file)
#   sudo bash benches/smallfiles.sh --quick    # 1,000 files
#   sudo bash benches/smallfiles.sh --files N --only spoolfs-writeback,ext4
#
# Needs root and /dev/fuse; installs rclone (Debian) with apt-get when missing; s3s-fs from
# $S3S_FS_BIN, PATH or ~/.cargo/bin. Environment: BENCH_DIR (default /var/tmp: the work
# directory, staging and cache directories and the s3s-fs root go there), BENCH_DELAY_MS (20),
# CARGO (cargo), BENCH_NO_BUILD (set: use the binaries already in target/release). The table
# goes to stdout, progress to stderr.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD

files=10000
only="spoolfs-writeback,spoolfs-standard,ext4,rclone"
while (($#)); do
    case "$1" in
        --quick) files=1000 ;;
        --files) files=$2; shift ;;
        --only) only=$2; shift ;;
        -h|--help) sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done
[[ "$files" =~ ^[0-9]+$ && "$files" -gt 0 ]] || { echo "--files: a positive number" >&2; exit 2; }
delay_ms=${BENCH_DELAY_MS:-20}
bench_dir=${BENCH_DIR:-/var/tmp}
cargo=${CARGO:-cargo}

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'smallfiles.sh: %s\n' "$*" >&2; exit 1; }
wanted() { [[ ",$only," == *",$1,"* ]]; }

[[ $(id -u) == 0 ]] || die "run as root (FUSE mounts)"
[[ -e /dev/fuse ]] || die "/dev/fuse is missing"

# No CA bundles (they break plain http on loopback in some clients), no proxies, no AWS
# profile: every client gets its configuration explicitly.
while read -r v; do unset "$v"; done < <(env | grep -oE '^(AWS_[A-Z_]*|[A-Za-z_]*_proxy|[A-Z_]*CA_BUNDLE|SSL_CERT_[A-Z]*)=' | tr -d =)
export AWS_ACCESS_KEY_ID=bench-access AWS_SECRET_ACCESS_KEY=bench-secret-0123456789
export AWS_EC2_METADATA_DISABLED=true

if wanted rclone && ! command -v rclone >/dev/null; then
    log "installing rclone (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends rclone fuse3 >&2 \
        || { apt-get update >&2 && apt-get install -y --no-install-recommends rclone fuse3 >&2; }
fi
s3s_fs=${S3S_FS_BIN:-$(command -v s3s-fs || echo "${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs")}
[[ -x "$s3s_fs" ]] || die "s3s-fs not found: cargo install s3s-fs --version 0.14.1 --features binary --locked"

if [[ -z "${BENCH_NO_BUILD:-}" ]]; then
    log "building (release): spoolfs, spoolfs-s3proxy"
    "$cargo" build --release -p spoolfs-tools -p spoolfs-s3proxy >&2
fi
target=${CARGO_TARGET_DIR:-$repo/target}/release
spoolfs=$target/spoolfs
proxy=$target/spoolfs-s3proxy

work=$(mktemp -d "$bench_dir/spoolfs-smallfiles.XXXXXX")
pids=()
mounts=()
cleanup() {
    local m p
    for m in "${mounts[@]}"; do
        if mountpoint -q "$m" 2>/dev/null; then
            "$spoolfs" umount "$m" >/dev/null 2>&1 || umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
        fi
    done
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

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
now() { date +%s.%N; }
secs() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$2"; }

# The object store: s3s-fs, and the proxy in front of it.
s3_root=$work/s3root
mkdir -p "$s3_root/bench"
s3_port=$(free_port)
"$s3s_fs" --host 127.0.0.1 --port "$s3_port" --access-key "$AWS_ACCESS_KEY_ID" \
    --secret-key "$AWS_SECRET_ACCESS_KEY" "$s3_root" >"$work/s3s-fs.log" 2>&1 &
pids+=($!)
wait_port "$s3_port"
proxy_port=$(free_port)
control_port=$(free_port)
"$proxy" --upstream "127.0.0.1:$s3_port" --listen "127.0.0.1:$proxy_port" \
    --control "127.0.0.1:$control_port" --delay-ms "$delay_ms" >"$work/proxy.log" 2>&1 &
pids+=($!)
wait_port "$control_port"
endpoint=http://127.0.0.1:$proxy_port
ctl() { curl -sf --noproxy '*' -X POST "http://127.0.0.1:$control_port/$1" >/dev/null; }
count() { curl -sf --noproxy '*' "http://127.0.0.1:$control_port/count/$1"; }
total() { curl -sf --noproxy '*' "http://127.0.0.1:$control_port/counts" | python3 -c 'import json,sys; print(json.load(sys.stdin)["received"]["total"])'; }
log "s3s-fs on 127.0.0.1:$s3_port behind spoolfs-s3proxy $endpoint (+$delay_ms ms per request); $files files"

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
row() { rows+=("| $1 | $2 | $3 | $4 | $5 |"); log "$1: writes $2 s, in the store $3 s, $4 PUTs, $5 requests"; }

run_spoolfs() {
    local label=$1; shift
    local meta="redb://$work/$label.redb" mp=$work/mnt-$label
    mkdir -p "$mp"
    log "$label: format, mount $*"
    "$spoolfs" format --meta "$meta" --storage "s3://bench/$label" --s3-endpoint "$endpoint" \
        --s3-region us-east-1 --s3-path-style "$label" >&2
    "$spoolfs" mount --meta "$meta" "$mp" --cache-dir "$work/cache-$label" \
        --log-file "$work/$label.log" "$@" >&2
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
    check_files "$mp/dir" "$label"
    "$spoolfs" umount "$mp" >&2
}

run_ext4() {
    local d=$work/ext4/dir t0 t1
    mkdir -p "$d"
    log "ext4: $(df -T "$d" | awk 'NR == 2 { print $2 " on " $1 }')"
    t0=$(now)
    workload "$d"
    t1=$(now)
    rows+=("| ext4 directory (floor) | $(secs "$t0" "$t1") | n/a | n/a | n/a |")
    check_files "$d" ext4
}

run_rclone() {
    local mp=$work/mnt-rclone conf=$work/rclone.conf rpid t0 t1 t2 n i
    # (No directory for the prefix in the s3s-fs root: rclone HEADs "rclone" at start, and
    # s3s-fs answers 500 for a key that is a directory.)
    mkdir -p "$mp"
    cat >"$conf" <<EOF
[bench]
type = s3
provider = Other
access_key_id = $AWS_ACCESS_KEY_ID
secret_access_key = $AWS_SECRET_ACCESS_KEY
endpoint = $endpoint
region = us-east-1
force_path_style = true
EOF
    log "rclone $(rclone version 2>/dev/null | head -1): mount --vfs-cache-mode writes"
    rclone mount bench:bench/rclone "$mp" --config "$conf" --vfs-cache-mode writes \
        --cache-dir "$work/rclone-cache" --log-file "$work/rclone.log" &
    rpid=$!
    pids+=("$rpid")
    mounts+=("$mp")
    for i in $(seq 600); do mountpoint -q "$mp" && break; sleep 0.05; done
    mountpoint -q "$mp" || { tail -20 "$work/rclone.log" >&2; die "rclone did not mount"; }
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
    check_files "$mp/dir" rclone
    umount "$mp" 2>/dev/null || fusermount3 -u "$mp" 2>/dev/null || umount -l "$mp"
    kill "$rpid" 2>/dev/null || true
    wait "$rpid" 2>/dev/null || true
}

wanted spoolfs-writeback && run_spoolfs spoolfs-writeback
wanted spoolfs-standard && run_spoolfs spoolfs-standard --writeback=false
wanted ext4 && run_ext4
wanted rclone && run_rclone

echo
echo "Small files: $files × \`echo \$i > dir/f\$i\` in one directory; s3s-fs behind a proxy adding $delay_ms ms per request; $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, kernel $(uname -r)."
echo
echo "| system | all writes returned (s) | every file in the object store (s) | PUT requests | all requests |"
echo "|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
