#!/usr/bin/env python3
"""Raw write+fdatasync latency of the filesystem holding a data dir.

This is the floor under every durable write of etcd and cairn: a put is acknowledged only
after its log entry is fdatasync'ed, so a server's single-client put latency cannot beat
this number, and its throughput at high concurrency depends on how many entries it batches
per fdatasync.

Two patterns, each for half of --seconds:
  append      4 KiB appended to a growing file, then fdatasync (the file size changes, so
              the filesystem journal commits too);
  prealloc    4 KiB written in place into a preallocated file, then fdatasync (what etcd's
              WAL does with its 64 MiB preallocated segments).

Prints a human line per pattern and one line `FSYNC_RESULT {json}` for scripts/bench.sh.
Usage: fsync-latency.py [--dir DIR] [--seconds S] [--block BYTES]
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

PREALLOC_BYTES = 64 << 20
MAX_SECONDS = 600


def percentile(sorted_values, q):
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, int(round(q * len(sorted_values))) - 1))
    return sorted_values[rank]


def measure(path, seconds, block, preallocate):
    """Writes `block` bytes then fdatasyncs, back to back, for `seconds`; returns stats."""
    data = os.urandom(block)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    try:
        if preallocate:
            os.posix_fallocate(fd, 0, PREALLOC_BYTES)
            # The allocation itself must be durable first, or the first syncs pay for it.
            os.fsync(fd)
        latencies = []
        offset = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if preallocate and offset + block > PREALLOC_BYTES:
                offset = 0
            start = time.perf_counter()
            os.pwrite(fd, data, offset)
            os.fdatasync(fd)
            latencies.append(time.perf_counter() - start)
            offset += block
    finally:
        os.close(fd)
        os.unlink(path)
    latencies.sort()
    total = sum(latencies)
    ms = lambda s: round(s * 1000.0, 3)
    return {
        "ops": len(latencies),
        "ops_per_sec": round(len(latencies) / total, 1) if total else 0.0,
        "mean_ms": ms(statistics.fmean(latencies)) if latencies else 0.0,
        "p50_ms": ms(percentile(latencies, 0.50)),
        "p99_ms": ms(percentile(latencies, 0.99)),
        "max_ms": ms(latencies[-1]) if latencies else 0.0,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=tempfile.gettempdir(),
                        help="directory on the filesystem to measure (default: the temp dir)")
    parser.add_argument("--seconds", type=float, default=4.0,
                        help="total measuring time, split between the two patterns (default 4)")
    parser.add_argument("--block", type=int, default=4096, help="bytes per write (default 4096)")
    args = parser.parse_args()
    if not 0 < args.seconds <= MAX_SECONDS:
        parser.error(f"--seconds must be in (0, {MAX_SECONDS}]")
    if not 0 < args.block <= PREALLOC_BYTES:
        parser.error("--block must be in (0, 64 MiB]")

    os.makedirs(args.dir, exist_ok=True)
    result = {"dir": os.path.abspath(args.dir), "block": args.block}
    for name, preallocate in (("append", False), ("prealloc", True)):
        path = os.path.join(args.dir, f".fsync-latency-{os.getpid()}-{name}")
        stats = measure(path, args.seconds / 2, args.block, preallocate)
        result[name] = stats
        print(f"fsync {name} {args.block} B: {stats['ops_per_sec']:.0f} ops/s, "
              f"p50 {stats['p50_ms']:.3f} ms, p99 {stats['p99_ms']:.3f} ms, "
              f"max {stats['max_ms']:.3f} ms ({stats['ops']} ops)")
    print("FSYNC_RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
