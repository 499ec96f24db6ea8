#!/usr/bin/env python3
"""Medians and spread of `scripts/bench.sh` rounds.

    bench-aggregate.py RAW_DIR MEDIAN_DIR SPREAD_JSON

RAW_DIR holds one directory per round (r1, r2, ...) of SERVER.CASE.json files. For every
file name seen in any round, MEDIAN_DIR/NAME gets the same JSON with each number replaced by
its median over the rounds that have it (nested objects too; strings and the like from the
first round). SPREAD_JSON maps "SERVER.CASE" to {field: [min, max]} for the top-level
numbers. Standard library only.
"""

import json
import os
import statistics
import sys


def merge(values):
    """The median of numbers, field by field for objects, the first value otherwise."""
    first = values[0]
    if isinstance(first, dict):
        keys = {k for v in values if isinstance(v, dict) for k in v}
        return {k: merge([v[k] for v in values if isinstance(v, dict) and k in v]) for k in keys}
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if numbers and len(numbers) == len(values):
        median = statistics.median(numbers)
        return int(median) if all(isinstance(v, int) for v in numbers) else median
    return first


def main():
    raw, median_dir, spread_path = sys.argv[1:4]
    rounds = sorted(d for d in os.listdir(raw) if os.path.isdir(os.path.join(raw, d)))
    by_name = {}
    for r in rounds:
        for name in os.listdir(os.path.join(raw, r)):
            if not name.endswith(".json"):
                continue
            try:
                with open(os.path.join(raw, r, name)) as f:
                    value = json.load(f)
            except ValueError:
                continue  # an empty or cut file: that round left the case blank
            by_name.setdefault(name, []).append(value)
    os.makedirs(median_dir, exist_ok=True)
    spread = {}
    for name, values in by_name.items():
        with open(os.path.join(median_dir, name), "w") as f:
            json.dump(merge(values), f)
        fields = {}
        for v in values:
            if isinstance(v, dict):
                for k, x in v.items():
                    if isinstance(x, (int, float)) and not isinstance(x, bool):
                        fields.setdefault(k, []).append(x)
        spread[name[: -len(".json")]] = {k: [min(xs), max(xs)] for k, xs in fields.items()}
    with open(spread_path, "w") as f:
        json.dump(spread, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
