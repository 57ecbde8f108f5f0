#!/usr/bin/env python3
"""Writes the K most frequent words of JSON Lines (or plain text) files."""
import collections
import json
import re
import sys

k, out, paths = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
counts = collections.Counter()
for path in paths:
    with open(path, encoding="utf-8") as f:
        if path.endswith(".jsonl"):
            texts = (json.loads(line)["text"] for line in f if line.strip())
        else:
            texts = [f.read()]
        for t in texts:
            counts.update(w.lower() for w in re.findall(r"\w+", t))
with open(out, "w") as f:
    for word, n in sorted(counts.items(), key=lambda x: (-x[1], x[0]))[:k]:
        f.write(f"{n}\t{word}\n")
