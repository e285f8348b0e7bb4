#!/usr/bin/env python3
"""How much the format-preserving mode (fp) leaks: ciphertext magnitudes vs plaintext.

fp XORs the keystream into the sign and mantissa bits of each float and keeps the
exponent, so every encrypted value stays in the binade of its plaintext. This script
measures what an attacker who has only the protected file learns from that, on real
models: every float weight is encrypted (`--mode '*=fp' --coefficient '*=1'`), then the
ciphertext values c are compared with the plaintext values p element by element.

Per model it prints:
  floats      encrypted float elements compared (finite, nonzero plaintext)
  within_x2   share with 0.5 <= |c| / |p| <= 2 (the magnitude known within a factor of 2)
  log_corr    Pearson correlation of log2|c| and log2|p|
  sign_same   share of elements whose sign survived (about 0.5: the sign is encrypted)
  row_l1_corr Pearson correlation of the L1 norms of rows (first dimension) computed from
              c and from p: how well the ciphertext ranks rows by importance
  top10_rows  share of the 10% largest-L1 rows of p that are also among the 10%
              largest-L1 rows computed from c

Usage (from the repository root, after `cargo build`):
  python3 scripts/eval_fp_leakage.py [--bin target/debug/onnx-protect] [MODEL ...]
Without models: fixtures/digits/mlp.onnx and every model under fixtures/zoo/.
Needs numpy and onnx. Each run draws fresh data keys, so the last digit may move.
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnx
from onnx import numpy_helper

FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}


def all_tensors(graph, out):
    """Every TensorProto of a graph and its subgraphs, by name (None for duplicates)."""
    def add(t):
        out[t.name] = None if t.name in out else t

    for t in graph.initializer:
        add(t)
    for n in graph.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                # A Constant's value is named after the node's output.
                t = onnx.TensorProto()
                t.CopyFrom(a.t)
                if not t.name and n.op_type == "Constant" and n.output:
                    t.name = n.output[0]
                add(t)
            elif a.type == onnx.AttributeProto.GRAPH:
                all_tensors(a.g, out)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    all_tensors(g, out)
    return out


def pearson(a, b):
    if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def measure(binary, model_path, work):
    key = os.path.join(work, "key")
    if not os.path.exists(key):
        subprocess.run([binary, "keygen", "-o", key, "-q"], check=True)
    out = os.path.join(work, "protected.onnx")
    subprocess.run(
        [binary, "encrypt", model_path, "-o", out, "--key-file", key, "--mode", "*=fp",
         "--coefficient", "*=1", "--force", "--allow-empty", "-q"],
        check=True,
    )
    info = json.loads(subprocess.run([binary, "inspect", out, "--json"], check=True,
                                     capture_output=True, text=True).stdout)
    plain = all_tensors(onnx.load(model_path).graph, {})
    cipher = all_tensors(onnx.load(out).graph, {})
    ps, cs, row_p, row_c, top_hits, top_total = [], [], [], [], 0, 0
    for entry in (info["protection"] or {"tensors": []})["tensors"]:
        tp, tc = plain.get(entry["name"]), cipher.get(entry["name"])
        if tp is None or tc is None or tp.data_type not in FLOAT_TYPES:
            continue
        p = numpy_helper.to_array(tp).astype(np.float64)
        c = numpy_helper.to_array(tc).astype(np.float64)
        size = np.dtype(numpy_helper.to_array(tp).dtype).itemsize
        mask = np.zeros(p.size, dtype=bool)
        for a, b in entry["spans"]:
            mask[a // size:b // size] = True
        fp, fc = p.reshape(-1)[mask], c.reshape(-1)[mask]
        keep = np.isfinite(fp) & np.isfinite(fc) & (fp != 0) & (fc != 0)
        ps.append(fp[keep])
        cs.append(fc[keep])
        if p.ndim >= 2 and p.shape[0] >= 10 and mask.all():
            lp = np.abs(p.reshape(p.shape[0], -1)).sum(axis=1)
            lc = np.abs(c.reshape(c.shape[0], -1)).sum(axis=1)
            row_p.append(lp)
            row_c.append(lc)
            k = max(1, p.shape[0] // 10)
            top_hits += len(set(np.argsort(-lp)[:k]) & set(np.argsort(-lc)[:k]))
            top_total += k
    if not ps or sum(len(x) for x in ps) == 0:
        return None
    p, c = np.concatenate(ps), np.concatenate(cs)
    ratio = np.abs(c) / np.abs(p)
    return {
        "floats": int(p.size),
        "within_x2": float(np.mean((ratio >= 0.5) & (ratio <= 2.0))),
        "log_corr": pearson(np.log2(np.abs(c)), np.log2(np.abs(p))),
        "sign_same": float(np.mean(np.sign(c) == np.sign(p))),
        "row_l1_corr": pearson(np.concatenate(row_c), np.concatenate(row_p)) if row_p else float("nan"),
        "top10_rows": top_hits / top_total if top_total else float("nan"),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="target/debug/onnx-protect")
    ap.add_argument("models", nargs="*")
    args = ap.parse_args()
    models = args.models or ["fixtures/digits/mlp.onnx"] + sorted(glob.glob("fixtures/zoo/**/*.onnx", recursive=True))
    cols = ["floats", "within_x2", "log_corr", "sign_same", "row_l1_corr", "top10_rows"]
    print("| model | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    totals = []
    with tempfile.TemporaryDirectory() as work:
        for m in models:
            r = measure(args.bin, m, work)
            if r is None:
                print(f"| {m} | no float weights encrypted |", file=sys.stderr)
                continue
            totals.append(r)
            cells = [str(r["floats"])] + [f"{r[c]:.3f}" for c in cols[1:]]
            print(f"| {m} | " + " | ".join(cells) + " |")
    if totals:
        n = sum(r["floats"] for r in totals)
        w = sum(r["within_x2"] * r["floats"] for r in totals) / n
        print(f"\n{len(totals)} models, {n} floats: within a factor of 2: {w:.4f} (weighted by floats)")
        big = [r for r in totals if r["floats"] >= 1000]
        for c in ["log_corr", "row_l1_corr", "top10_rows"]:
            v = [r[c] for r in big if not np.isnan(r[c])]
            if v:
                print(f"{c} over the {len(v)} models with at least 1000 encrypted floats: "
                      f"min {min(v):.3f}, median {float(np.median(v)):.3f}, max {max(v):.3f}")

if __name__ == "__main__":
    main()
