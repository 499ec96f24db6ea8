#!/usr/bin/env python3
"""Throughput against clients and latency distributions, etcd and cairn, as an SVG, from a
bench.sh results directory.

    scripts/bench-plot.py bench-results/<run>/ > throughput.svg

Reads RESULTS/raw/r*/SERVER.{put-N,sweep-put-N}.json (each round's raw `cairn bench put`
result) and draws, per server, the median ops/s over the rounds at each client count
(log scale), with a bar from the lowest to the highest round. Below it, the same for p99
latency. Then, for put at 1 and at the most clients, the latency distribution: the
percentiles `cairn bench` reports (p50, p90, p99, p99.9, max) on a nines scale, latency on
a log scale, so each line is the CDF sampled at those points. Standard library only, so it
runs on a fresh machine.
"""

import glob
import json
import math
import os
import re
import statistics
import sys

COLORS = {"etcd": "#1f77b4", "cairn": "#d62728"}
W, H, PAD_L, PAD_R, PAD_T, PAD_B = 640, 300, 70, 110, 30, 40


PERCENTILES = [("p50_ms", "p50"), ("p90_ms", "p90"), ("p99_ms", "p99"), ("p999_ms", "p99.9"),
               ("max_ms", "max")]


def points(results):
    """{server: {clients: [(ops_per_sec, p99_ms, [percentiles...]) per round]}}."""
    out = {}
    for path in glob.glob(os.path.join(results, "raw", "r*", "*.json")):
        m = re.match(r"(etcd|cairn)\.(?:sweep-)?put-(\d+)\.json$", os.path.basename(path))
        if not m:
            continue
        try:
            with open(path) as f:
                r = json.load(f)
        except ValueError:
            continue
        if r.get("ops_per_sec"):
            out.setdefault(m.group(1), {}).setdefault(int(m.group(2)), []).append(
                (r["ops_per_sec"], r["p99_ms"], [r.get(k) for k, _ in PERCENTILES]))
    return out


def nice_max(v):
    if v <= 0:
        return 1
    e = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if m * e >= v:
            return m * e
    return 10 * e


def frame(y0, title, y_ticks, x_ticks, x_title):
    """A chart's title, horizontal grid lines with their labels (`(y, text)`), x labels
    (`(x, text)`) and x axis title, for a chart whose top edge is at y0."""
    plot_w, plot_h = W - PAD_L - PAD_R, H - PAD_T - PAD_B
    svg = [f'<text x="{PAD_L}" y="{y0 + 18}" font-size="13">{title}</text>']
    for y, text in y_ticks:
        svg.append(f'<line x1="{PAD_L}" x2="{PAD_L + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        svg.append(f'<text x="{PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end">{text}</text>')
    for x, text in x_ticks:
        svg.append(f'<text x="{x:.1f}" y="{y0 + PAD_T + plot_h + 16}" text-anchor="middle">{text}</text>')
    svg.append(f'<text x="{PAD_L + plot_w / 2}" y="{y0 + H - 4}" text-anchor="middle">{x_title}</text>')
    return svg


def legend(n, server, color, y0):
    """The `n`th entry of a chart's legend."""
    ly = y0 + PAD_T + 10 + 18 * n
    return [f'<rect x="{W - PAD_R + 15}" y="{ly - 9}" width="12" height="3" fill="{color}"/>',
            f'<text x="{W - PAD_R + 32}" y="{ly - 4}">{server}</text>']


def panel(data, index, label, y0, xs):
    """One chart (field `index` of the points) whose top edge is at y0."""
    plot_w, plot_h = W - PAD_L - PAD_R, H - PAD_T - PAD_B
    top = nice_max(max(v[index] for s in data.values() for rs in s.values() for v in rs))
    lo, hi = math.log2(min(xs)), math.log2(max(xs))
    x_of = (lambda c: PAD_L + plot_w * (math.log2(c) - lo) / (hi - lo)) if hi > lo else (
        lambda c: PAD_L + plot_w / 2)
    y_of = lambda v: y0 + PAD_T + plot_h * (1 - v / top)
    y_ticks = [(y_of(top * i / 4), f"{top * i / 4:g}") for i in range(5)]
    svg = frame(y0, label, y_ticks, [(x_of(c), c) for c in xs], "clients (in-flight puts)")
    for n, (server, series) in enumerate(sorted(data.items())):
        color = COLORS.get(server, "#555")
        line = []
        for c in sorted(series):
            vals = [r[index] for r in series[c]]
            x, y = x_of(c), y_of(statistics.median(vals))
            line.append(f"{x:.1f},{y:.1f}")
            svg.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y_of(min(vals)):.1f}" '
                       f'y2="{y_of(max(vals)):.1f}" stroke="{color}" stroke-width="2"/>')
            svg.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>')
        svg.append(f'<polyline points="{" ".join(line)}" fill="none" stroke="{color}"/>')
        svg += legend(n, server, color, y0)
    return svg


def distribution_panel(data, clients, y0):
    """Latency at each reported percentile of put at `clients`, medians over the rounds."""
    plot_w, plot_h = W - PAD_L - PAD_R, H - PAD_T - PAD_B
    series = {}
    for server, by_clients in data.items():
        rounds = [r[2] for r in by_clients.get(clients, []) if None not in r[2]]
        if rounds:
            series[server] = [statistics.median(col) for col in zip(*rounds)]
    if not series:
        return []
    values = [v for vs in series.values() for v in vs if v > 0]
    lo = 10 ** math.floor(math.log10(min(values)))
    hi = 10 ** math.ceil(math.log10(max(values)))
    x_of = lambda i: PAD_L + plot_w * i / (len(PERCENTILES) - 1)
    y_of = lambda v: y0 + PAD_T + plot_h * (1 - (math.log10(max(v, lo)) - math.log10(lo))
                                             / (math.log10(hi) - math.log10(lo)))
    what = "1 client" if clients == 1 else f"{clients} clients"
    decades = [lo * 10 ** k for k in range(round(math.log10(hi / lo)) + 1)]
    svg = frame(y0, f"put, {what}: latency distribution, ms (log scale; medians over the rounds)",
                [(y_of(d), f"{d:g}") for d in decades],
                [(x_of(i), name) for i, (_, name) in enumerate(PERCENTILES)],
                "percentile (nines scale)")
    for n, (server, vals) in enumerate(sorted(series.items())):
        color = COLORS.get(server, "#555")
        line = " ".join(f"{x_of(i):.1f},{y_of(v):.1f}" for i, v in enumerate(vals))
        svg.append(f'<polyline points="{line}" fill="none" stroke="{color}"/>')
        for i, v in enumerate(vals):
            svg.append(f'<circle cx="{x_of(i):.1f}" cy="{y_of(v):.1f}" r="3" fill="{color}"/>')
        svg += legend(n, server, color, y0)
    return svg


def main():
    results = sys.argv[1]
    data = points(results)
    if not data:
        sys.exit(f"no put results under {results}/raw")
    xs = sorted({c for s in data.values() for c in s})
    rounds = len(glob.glob(os.path.join(results, "raw", "r*")))
    body = panel(data, 0, f"put throughput, ops/s (median of {rounds} round(s), bar: min-max)",
                 0, xs)
    body += panel(data, 1, "put p99 latency, ms", H, xs)
    panels = 2
    for clients in sorted({1, max(xs)}):
        drawn = distribution_panel(data, clients, panels * H)
        panels += bool(drawn)
        body += drawn
    print(f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{panels * H}" '
          'font-family="sans-serif" font-size="11">')
    print('<rect width="100%" height="100%" fill="white"/>')
    print("\n".join(body))
    print("</svg>")


if __name__ == "__main__":
    main()
