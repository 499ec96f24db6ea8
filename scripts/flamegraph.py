#!/usr/bin/env python3
"""Flamegraph SVG from `perf script` output, with the standard library only.

    perf record -g -p PID -o perf.data -- sleep 10
    perf script -i perf.data | scripts/flamegraph.py --title "put, 64 clients" > put.svg

Stacks are collapsed as Brendan Gregg's stackcollapse-perf.pl does (one line per sample
event: the command name, then frames from the root down), and drawn root at the bottom,
widths proportional to samples. `--folded FILE` also writes the collapsed stacks
("frame;frame;frame count" lines), which other flamegraph tools read. Each box has a
<title> with its samples and share, shown as a tooltip in a browser.
"""

import argparse
import gzip
import html
import re
import sys
from collections import defaultdict

FRAME = re.compile(r"^\s*[0-9a-f]+\s+(.+?)(?:\s+\((.*)\))?$")
WIDTH, ROW, FONT, MIN_PX = 1200, 16, 11, 2.5


def short(name):
    """A frame without its generic arguments: Rust's make names hundreds of characters
    long and the SVG megabytes big; `<T as Trait>::f` keeps its shape as `<T>::f`."""
    out, depth = [], 0
    for ch in name:
        if ch == "<":
            depth += 1
            if depth == 1:
                out.append("<")
            elif depth == 2:
                out.append("..")
        elif ch == ">" and depth:
            depth -= 1
            if depth == 0:
                out.append(">")
        elif depth <= 1:
            out.append(ch)
    return "".join(out)


def collapse(lines):
    """`perf script` text -> {"comm;root;...;leaf": samples}."""
    stacks, comm, frames = defaultdict(int), None, []

    def flush():
        if comm is not None:
            stacks[";".join([comm] + frames[::-1])] += 1

    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            flush()
            comm, frames = None, []
        elif not line[0].isspace():
            flush()
            comm, frames = line.split()[0], []
        else:
            m = FRAME.match(line)
            if m:
                name = m.group(1)
                if name == "[unknown]" and m.group(2):
                    name = "[" + m.group(2).rsplit("/", 1)[-1] + "]"
                name = re.sub(r"\+0x[0-9a-f]+$", "", name)
                frames.append(short(name).replace(";", ":"))
    flush()
    return stacks


def read_folded(path):
    """Collapsed stacks written by --folded (optionally gzipped)."""
    stacks = defaultdict(int)
    with (gzip.open if path.endswith(".gz") else open)(path, "rt") as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            stacks[";".join(short(f) for f in stack.split(";"))] += int(count)
    return stacks


def tree(stacks):
    root = {"n": 0, "c": {}}
    for stack, count in stacks.items():
        node = root
        node["n"] += count
        for frame in stack.split(";"):
            node = node["c"].setdefault(frame, {"n": 0, "c": {}})
            node["n"] += count
    return root


def color(name):
    h = sum(ord(c) for c in name)
    if "cairn" in name:
        return f"rgb({200 + h % 55},{90 + h % 70},40)"
    if "[k]" in name or name.startswith(("__", "entry_SYSCALL", "do_", "sys_")):
        return f"rgb({210 + h % 45},{170 + h % 60},{60 + h % 40})"
    return f"rgb({220 + h % 35},{110 + h % 90},{50 + h % 40})"


def draw(root, title):
    total = root["n"] or 1
    depth = [0]

    def walk(node, x, level, out):
        depth[0] = max(depth[0], level)
        for name, child in sorted(node["c"].items()):
            w = child["n"] / total * (WIDTH - 20)
            if w >= MIN_PX:
                out.append((name, child["n"], x, level, w))
                walk(child, x, level + 1, out)
            x += w

    boxes = []
    walk(root, 10.0, 0, boxes)
    height = (depth[0] + 1) * ROW + 60
    svg = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'font-family="monospace" font-size="{FONT}">',
        f'<rect width="100%" height="100%" fill="#f8f8f0"/>',
        f'<text x="{WIDTH / 2}" y="20" text-anchor="middle" font-size="15">'
        f"{html.escape(title)} ({total} samples)</text>",
    ]
    for name, n, x, level, w in boxes:
        y = height - 30 - (level + 1) * ROW
        label = html.escape(name)
        svg.append(
            f'<g><title>{label} ({n} samples, {100 * n / total:.2f}%)</title>'
            f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{ROW - 1}" '
            f'fill="{color(name)}" rx="2"/>'
        )
        chars = int(w / (FONT * 0.6))
        if chars >= 4:
            text = name if len(name) <= chars else name[: chars - 2] + ".."
            svg.append(f'<text x="{x + 2:.1f}" y="{y + ROW - 4}">{html.escape(text)}</text>')
        svg.append("</g>")
    svg.append("</svg>")
    return "\n".join(svg)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("input", nargs="?",
                   help="perf script output (default: stdin), or collapsed stacks "
                        "(*.folded, *.folded.gz)")
    p.add_argument("--title", default="flamegraph")
    p.add_argument("--folded", help="also write the collapsed stacks here")
    args = p.parse_args()
    if args.input and re.search(r"\.folded(\.gz)?$", args.input):
        stacks = read_folded(args.input)
    else:
        stacks = collapse(open(args.input, errors="replace") if args.input else sys.stdin)
    if args.folded:
        with open(args.folded, "w") as f:
            for stack, count in sorted(stacks.items()):
                f.write(f"{stack} {count}\n")
    sys.stdout.write(draw(tree(stacks), args.title))


if __name__ == "__main__":
    main()
