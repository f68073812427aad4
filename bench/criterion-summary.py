#!/usr/bin/env python3
"""Prints criterion medians as a table: one row per group, one column per
contender, plus ratios against a baseline column.

usage: bench/criterion-summary.py GROUP_PREFIX [BASELINE] [target/criterion]
"""
import json
import os
import sys

prefix = sys.argv[1]
baseline = sys.argv[2] if len(sys.argv) > 2 else None
root = sys.argv[3] if len(sys.argv) > 3 else os.path.join(os.path.dirname(__file__), "..", "target", "criterion")


def fmt(ns):
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} µs"
    return f"{ns:.1f} ns"


rows = {}
cols = []
for group in sorted(os.listdir(root)):
    if not group.startswith(prefix.replace("/", "_")):
        continue
    gdir = os.path.join(root, group)
    for bench in sorted(os.listdir(gdir)):
        est = os.path.join(gdir, bench, "new", "estimates.json")
        bjson = os.path.join(gdir, bench, "new", "benchmark.json")
        if not os.path.exists(est):
            continue
        with open(bjson) as f:
            meta = json.load(f)
        with open(est) as f:
            median = json.load(f)["median"]["point_estimate"]
        name = meta.get("function_id") or bench
        rows.setdefault(meta["group_id"], {})[name] = median
        if name not in cols:
            cols.append(name)

header = ["group"] + cols + ([f"{c} / {baseline}" for c in cols if c != baseline] if baseline else [])
print("| " + " | ".join(header) + " |")
print("|" + "---|" * len(header))
for group, vals in rows.items():
    cells = [group] + [fmt(vals[c]) if c in vals else "" for c in cols]
    if baseline and baseline in vals:
        cells += [f"{vals[c] / vals[baseline]:.2f}×" if c in vals else "" for c in cols if c != baseline]
    print("| " + " | ".join(cells) + " |")
