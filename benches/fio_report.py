#!/usr/bin/env python3
"""Turns the fio JSON results written by benches/fio.sh into a markdown report.

Usage: fio_report.py RESULTS_DIR [--command CMD] [--mode quick|full] [--seq-size LABEL]
                     [--runtime-a SECS] [--runtime-a-std SECS] [--runtime-b SECS]
                     [--note TEXT ...]

RESULTS_DIR holds one `<key>.json` (fio --output-format=json) per run and, for a run that
failed, `<key>.err` with the reason. Keys:

    a_ext4        4 KiB randwrite + fsync, QD1, local ext4 file (baseline)
    a_ext4j       the same on a journaling ext4 (mkfs defaults) in a loop file on the same disk
    a_floorj      the device floor measured through that loop device (what the loop adds)
    a_floor       4 KiB randwrite O_DIRECT + fdatasync, QD1, local ext4 file (device floor)
    a_nullfs      4 KiB randwrite + fsync, QD1, through nullfs (FUSE floor of (a))
    a_wb          the same through the spoolfs mount, writeback mode
    a_wb_disk     the same, writeback, with the object store on the disk under test
    a_std         the same through the spoolfs mount, standard mode
    a_wb_s3       the same, writeback, on S3 (s3s-fs behind the delaying proxy)
    a_juicefs     the same through JuiceFS --writeback on that S3 (SQLite metadata)
    b_nullfs      4 KiB randwrite, no fsync, QD1, through nullfs (the FUSE floor)
    b_wb          the same through the spoolfs mount, writeback mode
    c_direct      sequential 1 MiB writes + final fsync, O_DIRECT on the local disk (baseline)
    c_ext4        the same with buffered writes to an ext4 file on the local disk
    c_nullfs      the same through nullfs's `null` file, which drops the data (FUSE floor)
    c_wb          sequential 1 MiB writes + final fsync through the spoolfs mount, writeback
    c_wb_again    the same again on that mount once the first write is in the object store
    c_wb_s3       the same, writeback, on S3 (s3s-fs behind the delaying proxy)
    c_juicefs     the same through JuiceFS --writeback on that S3
    c2_direct     two writers at once, each half the size in its own file, O_DIRECT (baseline)
    c2_ext4       the same two writers, buffered, on ext4
    c2_nullfs     the same two writers, both to nullfs's `null` file (FUSE floor)
    c2_wb         the same two writers through the spoolfs mount, writeback (a checkpoint
                  from two ranks)
    c2_wb_again   the same two writers again on that mount, the first ones uploaded

Definitions (all from fio's own numbers):
  * write latency percentiles: `write.clat_ns.percentile` (with psync, completion latency is the
    whole pwrite call);
  * fsync latency percentiles: `sync.lat_ns.percentile`;
  * ops/s: `write.iops`; with --fsync=1 each op is one write followed by one fsync, and fio's
    runtime covers both, so the mean latency of one write+fsync is 1/ops;
  * (a) ratio = spoolfs mean write+fsync latency / ext4 mean write+fsync latency
              = ext4 ops/s / spoolfs ops/s             (goal: <= 1.0);
        reported against both ext4 files: the disk's own (which may have no journal) and a
        journaling one;
  * (b) ratio = spoolfs write latency / nullfs write latency, at p50 and p99 (1.0 = FUSE floor);
  * (c) throughput = write.io_bytes / write.runtime (fio's runtime includes the end_fsync);
        ratio = spoolfs MB/s / O_DIRECT MB/s, and spoolfs MB/s / ext4's buffered MB/s and
        / nullfs MB/s.
"""

import argparse
import json
import os
import sys

P50 = "50.000000"
P99 = "99.000000"


def load(results_dir, key):
    """Returns (job, None) for a successful run, (None, reason) otherwise."""
    path = os.path.join(results_dir, key + ".json")
    err_path = os.path.join(results_dir, key + ".err")
    if os.path.exists(err_path):
        with open(err_path) as f:
            reason = f.read().strip() or "failed"
        return None, reason
    if not os.path.exists(path):
        return None, "not run"
    try:
        with open(path) as f:
            text = f.read()
        # fio may print warnings before the JSON document.
        start = text.find("{")
        data = json.loads(text[start:])
        job = data["jobs"][0]
    except (ValueError, KeyError, IndexError) as e:
        return None, "unreadable fio output: %s" % e
    if job.get("error"):
        return None, "fio error %s" % job["error"]
    if job["write"]["total_ios"] == 0:
        return None, "no writes completed"
    return job, None


def pct(stat, p):
    """A percentile in ns from a fio latency block, or None."""
    if not stat or not stat.get("N"):
        return None
    return stat.get("percentile", {}).get(p)


def us(ns):
    if ns is None:
        return "n/a"
    v = ns / 1000.0
    if v >= 100:
        return "%.0f" % v
    if v >= 10:
        return "%.1f" % v
    return "%.2f" % v


def ratio(x):
    return "n/a" if x is None else "%.2f" % x


def div(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def seq_mb_s(job):
    w = job["write"]
    if not w["runtime"]:
        return None
    return w["io_bytes"] / (w["runtime"] / 1000.0) / 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results_dir")
    ap.add_argument("--command", default="bash benches/fio.sh")
    ap.add_argument("--mode", default="full")
    ap.add_argument("--seq-size", default="1 GiB")
    ap.add_argument("--runtime-a", default="?")
    ap.add_argument("--runtime-a-std", default="?")
    ap.add_argument("--runtime-b", default="?")
    ap.add_argument("--date", default=None)
    ap.add_argument("--kernel", default=os.uname().release)
    ap.add_argument("--fio-version", default="")
    ap.add_argument("--disk", default="")
    ap.add_argument("--note", action="append", default=[])
    args = ap.parse_args()

    r = {}
    for key in (
        "a_ext4", "a_ext4j", "a_floorj", "a_floor", "a_nullfs", "a_wb", "a_wb_disk", "a_std",
        "a_wb_s3", "a_juicefs", "b_nullfs", "b_wb", "c_direct", "c_ext4", "c_nullfs", "c_wb",
        "c_wb_s3", "c_juicefs", "c2_direct", "c2_ext4", "c2_nullfs", "c2_wb", "c_wb_again",
        "c2_wb_again",
    ):
        r[key] = load(args.results_dir, key)

    def job(key):
        return r[key][0]

    def why(key):
        return r[key][1]

    def rows(targets, columns, cells):
        """One table row per (key, label) of `targets`: the `columns` measured cells that
        `cells(key)` formats, or the reason the target was not measured."""
        for key, label in targets:
            if not job(key):
                w("| %s | %s |%s" % (label, "not measured: " + why(key), " |" * (columns - 1)))
                continue
            w("| %s |" % " | ".join([label] + cells(key)))

    out = []
    w = out.append
    date = args.date
    if date is None:
        import datetime

        date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    w("### spoolfs fio benchmarks (%s run)" % args.mode)
    w("")
    w("- command: `%s`" % args.command)
    w("- date: %s" % date)
    w("- kernel: %s" % args.kernel)
    if args.fio_version:
        w("- fio: %s" % args.fio_version)
    if args.disk:
        w("- disk: %s" % args.disk)
    for n in args.note:
        w("- %s" % n)
    w("")

    # ---- headline -------------------------------------------------------------------------
    iops = {
        k: (job(k)["write"]["iops"] if job(k) else None)
        for k in (
            "a_ext4", "a_ext4j", "a_floorj", "a_floor", "a_nullfs", "a_wb", "a_wb_disk", "a_std",
            "a_wb_s3", "a_juicefs",
        )
    }
    mean_us = {k: (1e6 / v if v else None) for k, v in iops.items()}

    def wlat(key, p):
        j = job(key)
        return pct(j["write"]["clat_ns"], p) if j else None

    def slat(key, p):
        j = job(key)
        return pct(j.get("sync", {}).get("lat_ns"), p) if j else None

    seq = {
        k: (seq_mb_s(job(k)) if job(k) else None)
        for k in (
            "c_direct", "c_ext4", "c_nullfs", "c_wb", "c_wb_s3", "c_juicefs",
            "c2_direct", "c2_ext4", "c2_nullfs", "c2_wb", "c_wb_again", "c2_wb_again",
        )
    }

    w("| benchmark | spoolfs | baseline | ratio | goal |")
    w("|---|---|---|---|---|")
    w(
        "| (a) 4 KiB randwrite + fsync, QD1: mean latency per write+fsync | %s µs (%s ops/s) "
        "| ext4 file, same disk: %s µs (%s ops/s) | **%s** | ≤ 1.0 |"
        % (
            us(mean_us["a_wb"] * 1000 if mean_us["a_wb"] else None),
            "%.0f" % iops["a_wb"] if iops["a_wb"] else "n/a",
            us(mean_us["a_ext4"] * 1000 if mean_us["a_ext4"] else None),
            "%.0f" % iops["a_ext4"] if iops["a_ext4"] else "n/a",
            ratio(div(mean_us["a_wb"], mean_us["a_ext4"])),
        )
    )
    w(
        "| (a) the same, against a journaling file system | %s µs "
        "| journaling ext4 (mkfs defaults) in a loop file, same disk: %s | **%s** | ≤ 1.0 |"
        % (
            us(mean_us["a_wb"] * 1000 if mean_us["a_wb"] else None),
            "%s µs (%.0f ops/s)" % (us(mean_us["a_ext4j"] * 1000), iops["a_ext4j"])
            if iops["a_ext4j"]
            else "not measured: " + why("a_ext4j"),
            ratio(div(mean_us["a_wb"], mean_us["a_ext4j"])),
        )
    )
    w(
        "| (b) 4 KiB randwrite, no fsync, QD1: write latency p50 / p99 | %s / %s µs "
        "| nullfs (FUSE floor): %s / %s µs | **%s** / %s | close to 1.0 |"
        % (
            us(wlat("b_wb", P50)),
            us(wlat("b_wb", P99)),
            us(wlat("b_nullfs", P50)),
            us(wlat("b_nullfs", P99)),
            ratio(div(wlat("b_wb", P50), wlat("b_nullfs", P50))),
            ratio(div(wlat("b_wb", P99), wlat("b_nullfs", P99))),
        )
    )
    w(
        "| (c) sequential %s write + fsync (1 MiB writes): throughput | %s MB/s "
        "| O_DIRECT writes, same disk: %s MB/s | **%s** | close to 1.0 |"
        % (
            args.seq_size,
            "%.0f" % seq["c_wb"] if seq["c_wb"] else "n/a",
            "%.0f" % seq["c_direct"] if seq["c_direct"] else "n/a",
            ratio(div(seq["c_wb"], seq["c_direct"])),
        )
    )
    w(
        "| (c) the same by two writers at once, half each: throughput | %s MB/s "
        "| two O_DIRECT writers, same disk: %s MB/s | **%s** | close to 1.0 |"
        % (
            "%.0f" % seq["c2_wb"] if seq["c2_wb"] else "n/a",
            "%.0f" % seq["c2_direct"] if seq["c2_direct"] else "n/a",
            ratio(div(seq["c2_wb"], seq["c2_direct"])),
        )
    )
    def mb_s(key):
        return "%.0f" % seq[key] if seq[key] else "n/a"

    for wb_one, wb_two, one, two, what, goal in (
        ("c_wb", "c2_wb", "c_ext4", "c2_ext4", ", against ext4, buffered writes, same disk", "≥ 0.9"),
        ("c_wb", "c2_wb", "c_nullfs", "c2_nullfs", ", against nullfs (FUSE floor)", "close to 1.0"),
        (
            "c_wb_again", "c2_wb_again", "c_ext4", "c2_ext4",
            " again on the same mount, the first write uploaded, against ext4, buffered writes",
            "≥ 0.9",
        ),
    ):
        w(
            "| (c) one writer / two writers%s | %s / %s MB/s | %s / %s MB/s "
            "| **%s** / **%s** | %s |"
            % (
                what,
                mb_s(wb_one),
                mb_s(wb_two),
                mb_s(one),
                mb_s(two),
                ratio(div(seq[wb_one], seq[one])),
                ratio(div(seq[wb_two], seq[two])),
                goal,
            )
        )
    w("")
    w(
        "Ratios: (a) spoolfs ÷ ext4 mean latency (= ext4 ops/s ÷ spoolfs ops/s), lower is better; "
        "(b) spoolfs ÷ nullfs write latency; (c) spoolfs ÷ the baseline's throughput, higher is "
        "better."
    )
    w("")

    # ---- against JuiceFS ------------------------------------------------------------------
    def mean_cell(key):
        if not iops[key]:
            return "not measured: " + why(key)
        return "%s µs (%s×)" % (us(mean_us[key] * 1000), ratio(div(mean_us[key], mean_us["a_ext4"])))

    def seq_cell(key):
        if not seq[key]:
            return "not measured: " + why(key)
        return "%.0f MB/s (%s×)" % (seq[key], ratio(div(seq[key], seq["c_direct"])))

    w("#### Against JuiceFS: both writeback, on the same S3 server behind the same proxy")
    w("")
    w("| benchmark | ext4, same disk | spoolfs writeback | JuiceFS writeback |")
    w("|---|---|---|---|")
    w(
        "| (a) 4 KiB randwrite + fsync, QD1: mean latency per write+fsync (ratio to ext4) "
        "| %s µs | %s | %s |"
        % (
            us(mean_us["a_ext4"] * 1000 if mean_us["a_ext4"] else None),
            mean_cell("a_wb_s3"),
            mean_cell("a_juicefs"),
        )
    )
    w(
        "| (a) the same: write p99 / fsync p99 | %s / %s µs | %s / %s µs | %s / %s µs |"
        % tuple(
            v
            for k in ("a_ext4", "a_wb_s3", "a_juicefs")
            for v in (us(wlat(k, P99)), us(slat(k, P99)))
        )
    )
    w(
        "| (c) sequential %s write + fsync: throughput (ratio to O_DIRECT) | %s MB/s "
        "(O_DIRECT) | %s | %s |"
        % (
            args.seq_size,
            "%.0f" % seq["c_direct"] if seq["c_direct"] else "n/a",
            seq_cell("c_wb_s3"),
            seq_cell("c_juicefs"),
        )
    )
    w("")

    # ---- (a) detail -----------------------------------------------------------------------
    w(
        "#### (a) 4 KiB random write + fsync, QD1 (`--rw=randwrite --bs=4k --ioengine=psync "
        "--iodepth=1 --fsync=1 --size=64M --time_based`; %s s, standard mode %s s)"
        % (args.runtime_a, args.runtime_a_std)
    )
    w("")
    w(
        "| target | ops/s | mean write+fsync (µs) | write p50 (µs) | write p99 (µs) "
        "| fsync p50 (µs) | fsync p99 (µs) | latency ratio vs ext4 |"
    )
    w("|---|---|---|---|---|---|---|---|")
    rows(
        (
            ("a_ext4", "ext4 file on the same disk (baseline)"),
            ("a_ext4j", "journaling ext4 (mkfs defaults) in a loop file with direct I/O, same disk"),
            ("a_floor", "device floor: O_DIRECT write + fdatasync, same disk"),
            ("a_floorj", "device floor through the loop device (what the loop adds to the journaling ext4)"),
            ("a_nullfs", "FUSE floor: nullfs, write + fsync round trips"),
            ("a_wb", "spoolfs, writeback (default)"),
            ("a_wb_disk", "spoolfs, writeback, object store on the same disk"),
            ("a_std", "spoolfs, standard (`--writeback=false`)"),
            ("a_wb_s3", "spoolfs, writeback, on S3 behind the proxy"),
            ("a_juicefs", "JuiceFS `--writeback` (SQLite metadata), on S3 behind the proxy"),
        ),
        7,
        lambda key: [
            "%.0f" % iops[key],
            us(mean_us[key] * 1000),
            us(wlat(key, P50)),
            us(wlat(key, P99)),
            us(slat(key, P50)),
            us(slat(key, P99)),
            ratio(div(mean_us[key], mean_us["a_ext4"])),
        ],
    )
    if mean_us["a_floor"] and mean_us["a_nullfs"] and mean_us["a_ext4"]:
        floor = mean_us["a_floor"] + mean_us["a_nullfs"]
        w("")
        w(
            "Floor for a FUSE file system that makes each fsync durable on this disk: the device "
            "floor plus the FUSE floor, %.0f + %.0f = %.0f µs per write+fsync, %.2f× ext4. "
            "ext4 itself does one data write and one flush per fsync here, the same device work "
            "as one staging record, so a ratio below the floor's is not reachable through FUSE. "
            "spoolfs above the floor: %s µs."
            % (
                mean_us["a_floor"],
                mean_us["a_nullfs"],
                floor,
                floor / mean_us["a_ext4"],
                "%.0f" % (mean_us["a_wb"] - floor) if mean_us["a_wb"] else "n/a",
            )
        )
    if mean_us["a_ext4j"] and mean_us["a_floorj"] and mean_us["a_floor"]:
        w("")
        w(
            "The journaling ext4 runs through a loop device. Its cost is the device floor measured "
            "through the loop (%.0f µs) minus the device floor (%.0f µs): %.0f µs for each write "
            "followed by a flush, paid by each of the journaling ext4's own writes and flushes "
            "(the data, the journal blocks, the commit block), so the ratio against it "
            "flatters spoolfs by that much per write or flush."
            % (
                mean_us["a_floorj"],
                mean_us["a_floor"],
                mean_us["a_floorj"] - mean_us["a_floor"],
            )
        )
    w("")

    # ---- (b) detail -----------------------------------------------------------------------
    w(
        "#### (b) 4 KiB random write, no fsync, QD1 (`--rw=randwrite --bs=4k --ioengine=psync "
        "--iodepth=1 --size=64M --time_based`; %s s)" % args.runtime_b
    )
    w("")
    w("| target | ops/s | write mean (µs) | write p50 (µs) | write p99 (µs) | p50 ratio | p99 ratio |")
    w("|---|---|---|---|---|---|---|")
    rows(
        (
            ("b_nullfs", "nullfs: FUSE round trip, no work (baseline)"),
            ("b_wb", "spoolfs, writeback (default)"),
        ),
        6,
        lambda key: [
            "%.0f" % job(key)["write"]["iops"],
            us(job(key)["write"]["clat_ns"]["mean"]),
            us(wlat(key, P50)),
            us(wlat(key, P99)),
            ratio(div(wlat(key, P50), wlat("b_nullfs", P50))),
            ratio(div(wlat(key, P99), wlat("b_nullfs", P99))),
        ],
    )
    w("")

    # ---- (c) detail -----------------------------------------------------------------------
    w(
        "#### (c) sequential %s write + fsync (`--rw=write --bs=1M --end_fsync=1`)"
        % args.seq_size
    )
    w("")
    w("| target | MB/s | elapsed incl. fsync (s) | throughput ratio |")
    w("|---|---|---|---|")
    rows(
        (
            ("c_direct", "fio `--direct=1` on the local disk (baseline)"),
            ("c_ext4", "ext4 on the local disk, buffered writes"),
            ("c_nullfs", "nullfs `null` (FUSE floor), buffered writes"),
            ("c_wb", "spoolfs, writeback (default), buffered writes"),
            ("c_wb_again", "spoolfs, writeback, again on the same mount (first write uploaded)"),
            ("c_wb_s3", "spoolfs, writeback, on S3 behind the proxy"),
            ("c_juicefs", "JuiceFS `--writeback` (SQLite metadata), on S3 behind the proxy"),
            ("c2_direct", "two writers, half each: fio `--direct=1` on the local disk (their baseline)"),
            ("c2_ext4", "two writers, half each: ext4 on the local disk, buffered writes"),
            ("c2_nullfs", "two writers, half each: nullfs `null` (FUSE floor)"),
            ("c2_wb", "two writers, half each: spoolfs, writeback (default), buffered writes"),
            ("c2_wb_again", "two writers, half each: spoolfs, again on the same mount"),
        ),
        3,
        lambda key: [
            "%.0f" % seq[key],
            "%.2f" % (job(key)["write"]["runtime"] / 1000.0),
            ratio(div(seq[key], seq["c2_direct" if key.startswith("c2_") else "c_direct"])),
        ],
    )
    w("")

    print("\n".join(out))
    failed = [k for k in r if r[k][0] is None]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
