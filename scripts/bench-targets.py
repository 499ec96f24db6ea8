#!/usr/bin/env python3
"""Issue 15's targets, judged from one bench.sh results directory.

Usage: bench-targets.py RESULTS_DIR

Reads RESULTS_DIR/median/*.json (scripts/bench-aggregate.py's medians of the rounds) and
prints a markdown table: each target, etcd's and cairn's figure, the ratio cairn / etcd,
the bound, and whether it is met. A target whose case did not run says "not measured"
instead of guessing. Standard library only.
"""

import json
import os
import sys


def load(median, name):
    path = os.path.join(median, name + ".json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def events_per_sec(result):
    return result["events_received"] / result["seconds"] if result.get("seconds") else None


def field(name):
    return lambda result: result.get(name)


def clients_case(prefix, clients):
    return f"{prefix}-{clients}"


# (title, case, value of a result, bound on cairn/etcd, "min" if the ratio must be at least
# the bound, "max" if at most). Ratios are cairn / etcd.
def targets(clients, scale):
    put = clients_case("put", clients)
    return [
        (f"put, {clients} clients: ops/s at least 2x etcd", put, field("ops_per_sec"), 2.0, "min"),
        (f"put, {clients} clients: p99 no higher than etcd's", put, field("p99_ms"), 1.0, "max"),
        (f"put, {clients} clients: max no higher than etcd's", put, field("max_ms"), 1.0, "max"),
        ("txn compare-and-swap, 16 clients: ops/s at least 1.5x", "txn-cas-16",
         field("ops_per_sec"), 1.5, "min"),
        (f"range linearizable, {clients} clients: ops/s at least 1.5x",
         clients_case("range-l", clients), field("ops_per_sec"), 1.5, "min"),
        (f"range serializable, {clients} clients: ops/s at least 1.5x",
         clients_case("range-s", clients), field("ops_per_sec"), 1.5, "min"),
        ("watch, 100 watchers: events/s at least etcd's", "watch-100", events_per_sec, 1.0, "min"),
        ("watch, 100 watchers: put-to-event p50 no higher", "watch-100", field("p50_ms"), 1.0, "max"),
        ("watch overload, {watchers} watchers: p99 below etcd's", "watch",
         field("p99_ms"), 1.0, "max"),
        ("watch overload, {watchers} watchers: server peak RSS below etcd's", "watch",
         field("server_peak_rss_kib"), 1.0, "max"),
        (f"{scale:,} keys: data on disk after load no larger", f"scale-{scale}",
         field("data_bytes"), 1.0, "max"),
        (f"{scale:,} keys: physical compaction no slower", f"scale-{scale}",
         field("compact_s"), 1.0, "max"),
        (f"{scale:,} keys: restart after kill -9 no slower", f"scale-{scale}",
         field("restart_s"), 1.0, "max"),
        (f"{scale:,} keys: RSS after load no higher", f"scale-{scale}",
         field("loaded_rss_kb"), 1.0, "max"),
        ("a fresh node's RSS (after the kv cases) no higher", "proc", field("rss_kb"), 1.0, "max"),
    ]


def fmt(value):
    if value is None:
        return "–"
    if abs(value) >= 1e6:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}"


def judge(etcd, cairn, bound, sense):
    if etcd is None or cairn is None or not etcd:
        return "–", "not measured"
    ratio = cairn / etcd
    met = ratio >= bound if sense == "min" else ratio <= bound
    return f"{ratio:.2f}", "yes" if met else "no"


def fsync_row(median):
    """The 1-client p50 is bounded by the disk's own fdatasync, not by etcd."""
    put1, probe = load(median, "cairn.put-1"), load(median, "cairn.fsync")
    p50 = put1.get("p50_ms") if put1 else None
    sync = probe.get("append", {}).get("p50_ms") if probe else None
    if p50 is None or not sync:
        return "| put, 1 client: p50 at most 1.5x one fdatasync | – | – | – | ≤ 1.5 | not measured |"
    ratio = p50 / sync
    return (f"| put, 1 client: p50 at most 1.5x one fdatasync (fdatasync p50 {sync:.3f} ms) "
            f"| – | {p50:.3f} ms | {ratio:.2f} (of fdatasync) | ≤ 1.5 | "
            f"{'yes' if ratio <= 1.5 else 'no'} |")


def scale_points(median):
    """The key counts of the scale curve that ran, smallest first."""
    found = {int(f.split("-")[1].split(".")[0]) for f in os.listdir(median)
             if f.startswith("cairn.scale-") and f.count("-") == 1}
    return sorted(found)


def growth_rows(median, points):
    """Cairn's cost growth along the curve: the largest point against the smallest."""
    if len(points) < 2:
        return ["| cost growth along the scale curve (needs two BENCH_SCALE_KEYS) | – | – | – | "
                "– | not measured |"]
    low, high = points[0], points[-1]
    rows = []
    for title, name, value, sense in [
            ("put ops/s", "put", field("ops_per_sec"), "min"),
            ("put p99", "put", field("p99_ms"), "max"),
            ("restart after kill -9", None, field("restart_s"), "max")]:
        case = (lambda n: f"cairn.scale-{n}-{name}") if name else (lambda n: f"cairn.scale-{n}")
        a, b = load(median, case(low)), load(median, case(high))
        av, bv = (value(a) if a else None), (value(b) if b else None)
        bound = 0.8 if sense == "min" else 1.2
        ratio, met = judge(av, bv, bound, sense)
        sign = "≥" if sense == "min" else "≤"
        rows.append(f"| cairn {title} at {high:,} keys against {low:,} (within 20 %) "
                    f"| {fmt(av)} ({low:,}) | {fmt(bv)} ({high:,}) | {ratio} (of {low:,}) "
                    f"| {sign} {bound:g} | {met} |")
    return rows


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    median = os.path.join(sys.argv[1], "median")
    put_cases = [f for f in os.listdir(median) if f.startswith("cairn.put-")]
    clients = max((int(f[len("cairn.put-"):-len(".json")]) for f in put_cases
                   if f[len("cairn.put-"):-len(".json")].isdigit()), default=64)
    rows = ["| target (issue 15) | etcd | cairn | cairn / etcd | bound | met |",
            "|---|---:|---:|---:|---:|---|"]
    points = scale_points(median)
    scale = 1_000_000 if 1_000_000 in points else (points[-1] if points else 1_000_000)
    for title, case, value, bound, sense in targets(clients, scale):
        etcd, cairn = load(median, f"etcd.{case}"), load(median, f"cairn.{case}")
        ev = value(etcd) if etcd else None
        cv = value(cairn) if cairn else None
        ratio, met = judge(ev, cv, bound, sense)
        sign = "≥" if sense == "min" else "≤"
        title = title.format(watchers=f"{(cairn or etcd or {}).get('watchers', 0):,}")
        rows.append(f"| {title} | {fmt(ev)} | {fmt(cv)} | {ratio} | {sign} {bound:g} | {met} |")
    rows.append(fsync_row(median))
    rows += growth_rows(median, points)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
