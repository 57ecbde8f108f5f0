#!/usr/bin/env python3
"""Joins per-domain statistics into one Markdown table."""
import json
import sys

out, paths = sys.argv[1], sys.argv[2:]
rows = [json.load(open(p)) for p in paths]
with open(out, "w") as f:
    f.write("| domain | documents | words | bytes |\n|---|---:|---:|---:|\n")
    for r in rows:
        f.write(f"| {r['domain']} | {r['documents']} | {r['words']} | {r['bytes']} |\n")
    f.write(f"| total | {sum(r['documents'] for r in rows)} | {sum(r['words'] for r in rows)} | {sum(r['bytes'] for r in rows)} |\n")
