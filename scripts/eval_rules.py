#!/usr/bin/env python3
"""Selection rules compared: accuracy destroyed per encrypted byte, and resistance to
the key-less attacks that use the public positions (docs/protection-tiers.md §3).

For each model in fixtures/digits (cnn, mlp, convmixer, vit), each selection rule
(even, l1, l2, sample-l1), mode (fp, ctr) and coefficient (0.05, 0.2), with a fresh
key per repeat:

    onnx-protect keygen -o K
    onnx-protect encrypt MODEL -o P --key-file K --selection '*=RULE' --mode '*=MODE' \
        --coefficient '*=C' --seed R --json
    onnx-protect assess MODEL P --inputs test_x.npy --labels test_y.npy --json

`assess` without a key gives the original, no-key, zero-fill and mean-fill rows
(`decrypted` is skipped). `--seed R` (R = repeat index) only changes sample-l1, so its
repeats also cover different draws; the other rules pick the same positions every time,
so their zero-fill/mean-fill rows cannot vary between repeats.

Per run: share = encrypted bytes / weight bytes (from `encrypt --json`);
destruction per encrypted byte = (original - no key) / share, and the same with the best
attack = max(zero-fill, mean-fill) in place of no key. A value of 10 means: each 1 % of
the weight bytes encrypted removes 10 accuracy points. Cells report mean, min and max
over the repeats.

Usage:
    python3 scripts/eval_rules.py [--bin PATH] [--repeats 3] [--coefficients 0.05,0.2]
        [--json bench-data/rules.json] [--markdown FILE]
    python3 scripts/eval_rules.py --tables-from bench-data/rules.json
"""
import argparse
import itertools
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
DIGITS = ROOT / "fixtures" / "digits"
MODELS = ["cnn", "mlp", "convmixer", "vit"]
RULES = ["even", "l1", "l2", "sample-l1"]
MODES = ["fp", "ctr"]
VARIANTS = ["original", "no_key", "zero_fill", "mean_fill"]
METRICS = ["share", "no_key", "zero_fill", "mean_fill", "best_attack", "no_key_non_finite",
           "destruction_no_key", "destruction_attack"]


def cli(binary, *args):
    r = subprocess.run([binary, *map(str, args)], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))}: exit {r.returncode}: {r.stderr}")
    return r.stdout


def run_one(binary, model, rule, mode, coef, rep, tmp):
    tag = f"{model}-{rule}-{mode}-{coef}-{rep}-{time.monotonic_ns()}"
    key = tmp / f"{tag}.key"
    prot = tmp / f"{tag}.onnx"
    src = DIGITS / f"{model}.onnx"
    cli(binary, "keygen", "-o", key)
    enc = json.loads(cli(binary, "encrypt", src, "-o", prot, "--key-file", key,
                         "--selection", f"*={rule}", "--mode", f"*={mode}",
                         "--coefficient", f"*={coef}", "--seed", rep, "--json"))
    r = json.loads(cli(binary, "assess", src, prot, "--inputs", DIGITS / "test_x.npy",
                       "--labels", DIGITS / "test_y.npy", "--json"))
    by = {v["variant"]: v for v in r["variants"]}
    for v in VARIANTS:
        if by[v]["status"] != "ok":
            raise RuntimeError(f"{tag}: variant {v} {by[v]['status']}: {by[v].get('error')}")
    share = enc["encrypted_bytes"] / enc["weight_bytes"]
    row = {v: by[v]["accuracy"] for v in VARIANTS}
    row["no_key_non_finite"] = by["no_key"]["non_finite"]
    row["share"] = share
    row["share_assess"] = r["encrypted_bytes"] / r["weight_bytes"]
    row["best_attack"] = max(row["zero_fill"], row["mean_fill"])
    row["destruction_no_key"] = (row["original"] - row["no_key"]) / share if share else None
    row["destruction_attack"] = (row["original"] - row["best_attack"]) / share if share else None
    row["policy"] = r["policy"]
    prot.unlink()
    key.unlink()
    for f in tmp.glob(f"{tag}*"):  # external data, if any
        f.unlink()
    return row


def summarise(runs):
    out = {}
    for m in METRICS:
        vals = [r[m] for r in runs if r[m] is not None]
        out[m] = {"mean": sum(vals) / len(vals), "min": min(vals), "max": max(vals)} if vals else None
    return out


def acc(s):
    """mean (min–max) of an accuracy, 3 decimals; the range only if it is not a point."""
    if s["max"] - s["min"] < 5e-4:
        return f"{s['mean']:.3f}"
    return f"{s['mean']:.3f} ({s['min']:.3f}–{s['max']:.3f})"


def dest(s):
    if s["max"] - s["min"] < 0.05:
        return f"{s['mean']:.1f}"
    return f"{s['mean']:.1f} ({s['min']:.1f}–{s['max']:.1f})"


def markdown(results):
    """Table per mode (attack columns only in the first: they do not depend on the mode),
    then the mean over the models."""
    cells = results["cells"]
    by = {(c["model"], c["mode"], c["coefficient"], c["rule"]): c["summary"] for c in cells}
    modes = [m for m in MODES if any(c["mode"] == m for c in cells)]
    lines = []
    for i, mode in enumerate(modes):
        full = i == 0
        if full:
            lines += ["| model | coef | rule | encrypted share | no key | zero-fill | mean-fill "
                      "| destruction / byte, no key | destruction / byte, best attack |",
                      "|---|---|---|---|---|---|---|---|---|"]
        else:
            same = all(abs(by[k]["best_attack"]["mean"] - by[(k[0], modes[0], k[2], k[3])]["best_attack"]["mean"]) < 1e-12
                       for k in by if k[1] == mode and (k[0], modes[0], k[2], k[3]) in by)
            lines += ["", f"`{mode}` (zero-fill / mean-fill {'identical to' if same else 'DIFFERENT from'} `{modes[0]}`):", "",
                      "| model | coef | rule | no key | no key: non-finite outputs | destruction / byte, no key |",
                      "|---|---|---|---|---|---|"]
        for c in cells:
            if c["mode"] != mode:
                continue
            s = c["summary"]
            head = f"| {c['model']} | {c['coefficient']} | {c['rule']} | "
            if full:
                lines.append(head + f"{100 * s['share']['mean']:.2f}% | {acc(s['no_key'])} | {acc(s['zero_fill'])} | "
                             f"{acc(s['mean_fill'])} | {dest(s['destruction_no_key'])} | {dest(s['destruction_attack'])} |")
            else:
                lines.append(head + f"{acc(s['no_key'])} | {100 * s['no_key_non_finite']['mean']:.0f}% | "
                             f"{dest(s['destruction_no_key'])} |")
    lines += ["", "| mode | coef | rule | encrypted share | no key | best attack "
              "| destruction / byte, no key | destruction / byte, best attack |",
              "|---|---|---|---|---|---|---|---|"]
    keys = sorted({(c["mode"], c["coefficient"], c["rule"]) for c in cells},
                  key=lambda k: (MODES.index(k[0]) if k[0] in MODES else 9, k[1],
                                 RULES.index(k[2]) if k[2] in RULES else 9))
    for mode, coef, rule in keys:
        cs = [c["summary"] for c in cells if (c["mode"], c["coefficient"], c["rule"]) == (mode, coef, rule)]
        avg = lambda m: sum(s[m]["mean"] for s in cs) / len(cs)
        lines.append(f"| {mode} | {coef} | {rule} | {100 * avg('share'):.2f}% | {avg('no_key'):.3f} | "
                     f"{avg('best_attack'):.3f} | {avg('destruction_no_key'):.1f} | {avg('destruction_attack'):.1f} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default=os.environ.get("ONNX_PROTECT_BIN", str(ROOT / "target" / "release" / "onnx-protect")))
    ap.add_argument("--repeats", type=int, default=3, help="fresh keys per cell (mean, min, max reported)")
    ap.add_argument("--coefficients", default="0.05,0.2")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--rules", default=",".join(RULES))
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--json", default=str(ROOT / "bench-data" / "rules.json"))
    ap.add_argument("--markdown", help="also write the tables (markdown) here")
    ap.add_argument("--tables-from", metavar="JSON", help="only print the tables of an earlier run's JSON")
    args = ap.parse_args()
    if args.tables_from:
        print(markdown(json.loads(pathlib.Path(args.tables_from).read_text())))
        return
    coefficients = [float(c) for c in args.coefficients.split(",")]
    results = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "load_start": os.getloadavg(),
               "binary": args.bin, "version": cli(args.bin, "--version").strip(),
               "repeats": args.repeats, "cells": []}
    t0 = time.time()
    print(f"{'model':9} {'mode':4} {'coef':>4} {'rule':9} | {'share':>6} | {'orig':>5} {'nokey':>5} "
          f"{'zero':>5} {'mean':>5} | {'D nokey':>7} {'D att':>6}", flush=True)
    with tempfile.TemporaryDirectory(prefix="rules-") as d:
        tmp = pathlib.Path(d)
        for model, mode, coef, rule in itertools.product(args.models.split(","), args.modes.split(","),
                                                         coefficients, args.rules.split(",")):
            runs = [run_one(args.bin, model, rule, mode, coef, i, tmp) for i in range(args.repeats)]
            s = summarise(runs)
            results["cells"].append({"model": model, "mode": mode, "coefficient": coef, "rule": rule,
                                     "original": runs[0]["original"], "summary": s, "runs": runs})
            print(f"{model:9} {mode:4} {coef:>4} {rule:9} | {100 * s['share']['mean']:5.2f}% | "
                  f"{runs[0]['original']:.3f} {s['no_key']['mean']:.3f} {s['zero_fill']['mean']:.3f} "
                  f"{s['mean_fill']['mean']:.3f} | {s['destruction_no_key']['mean']:7.1f} "
                  f"{s['destruction_attack']['mean']:6.1f}   ({time.time() - t0:.0f} s)", flush=True)
    results["seconds"] = time.time() - t0
    results["load_end"] = os.getloadavg()
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    pathlib.Path(args.json).write_text(json.dumps(results, indent=1))
    md = markdown(results)
    print("\n" + md)
    if args.markdown:
        pathlib.Path(args.markdown).write_text(md + "\n")
    print(f"wrote {args.json} ({results['seconds']:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
