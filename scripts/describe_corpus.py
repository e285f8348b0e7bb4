#!/usr/bin/env python3
"""Describe every .onnx file under a directory with the onnx package, one JSON line each.

Each line is fixtures/gen/describe.py's description plus "file" (relative path);
a file the onnx package cannot load gets {"file": ..., "error": "..."} instead.
"""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "gen"))
from describe import describe  # noqa: E402

root = sys.argv[1]
paths = []
for d, _, files in os.walk(root):
    for f in files:
        if f.endswith(".onnx"):
            paths.append(os.path.join(d, f))
for p in sorted(paths):
    rel = os.path.relpath(p, root)
    try:
        desc = describe(p)
        desc["file"] = rel
    except Exception as e:  # the reference could not read it; the Rust side must still not panic
        desc = {"file": rel, "error": f"{type(e).__name__}: {e}"}
    print(json.dumps(desc, sort_keys=True))
