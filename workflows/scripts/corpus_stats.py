#!/usr/bin/env python3
"""Counts documents, bytes and words in JSON Lines (or plain text) files."""
import json
import sys

name, out = sys.argv[1], sys.argv[2]
docs = words = nbytes = 0
for path in sys.argv[3:]:
    with open(path, encoding="utf-8") as f:
        if path.endswith(".jsonl"):
            texts = (json.loads(line)["text"] for line in f if line.strip())
        else:
            texts = [f.read()]
        for t in texts:
            docs += 1
            words += len(t.split())
            nbytes += len(t.encode("utf-8"))
with open(out, "w") as f:
    json.dump({"domain": name, "documents": docs, "words": words, "bytes": nbytes}, f, indent=1, sort_keys=True)
    f.write("\n")
