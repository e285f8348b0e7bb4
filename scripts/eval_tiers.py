#!/usr/bin/env python3
"""Service levels of access tiers under the built-in policy, on the zoo classifiers.

For each model of fixtures/zoo (the digits, vowels, osuleaf and families classifiers)
and each ladder, with --keys fresh keys:

    onnx-protect keygen -o K --tiers N
    onnx-protect encrypt MODEL -o P --key-file K --tiers N [SHARES] -q
    onnx-protect decrypt P -o D_t --key-file K.tier{t} --tier t -q      (t = 1 … N-1)
    onnx-protect decrypt P -o D_N --key-file K -q

and records the onnxruntime accuracy on the model's test split of: the protected file
as is (no key), D_1 … D_(N-1) and D_N (checked to be the original byte for byte).

Ladders (--ladders):
    default      no share option: by class on a classifier (every zoo model), else the default
                 tier shares;
    importance   the default tier shares in the importance order (a policy file with
                 `tier_order = "importance"`);
    fit          tier order and shares fitted to an even ladder on the training split
                 (`encrypt --dry-run --json --tiers N --tier-data TRAIN_X --tier-labels TRAIN_Y`,
                 once per model: the fit is key-independent), then `--policy` of a file with
                 the fit's `tiers`, `tier_shares` and `tier_order` (the built-in rules);
    levels=L,…   likewise with `--tier-levels L,…`;
    equal        `--tier-shares` 1/N each.

Per ladder and model: mean, min and max per level over the keys; the smallest mean step
as a share of the range (mean top − mean no key); and the keys for which a level is
below the one two tiers down ("inversions two apart").

Usage:
    python3 scripts/eval_tiers.py [--bin PATH] [--keys 20] [--tiers 3] [--ladders default,fit]
                                  [--models digits/cnn,…] [--json bench-data/tiers.json]
"""
import argparse
import json
import os
import pathlib
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort

ROOT = pathlib.Path(__file__).resolve().parents[1]
ZOO = ROOT / "fixtures" / "zoo"
# model -> data set (the families models are trained on the digits and vowels splits)
MODELS = {
    "digits/cnn": "digits", "digits/mlp": "digits", "digits/convmixer": "digits", "digits/vit": "digits",
    "vowels/lstm": "vowels", "vowels/gru": "vowels", "vowels/cnn": "vowels", "vowels/mlp": "vowels",
    "vowels/vit": "vowels", "osuleaf/conv1d": "osuleaf", "osuleaf/convmixer": "osuleaf",
    "osuleaf/vit": "osuleaf", "families/digits-resnet": "digits", "families/vowels-transformer": "vowels",
}


def data_dir(ds):
    return ROOT / "fixtures" / "digits" if ds == "digits" else ZOO / ds


def split(ds, which):
    d = data_dir(ds)
    return np.load(d / f"{which}_x.npy").astype(np.float32), np.load(d / f"{which}_y.npy")


def cli(binary, *args):
    r = subprocess.run([binary, *map(str, args)], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))}: exit {r.returncode}: {r.stderr}")
    return r.stdout


def accuracy(path, x, y):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    logits = sess.run([sess.get_outputs()[0].name], {sess.get_inputs()[0].name: x})[0]
    # A row with a NaN logit counts as wrong.
    ok = (logits.argmax(axis=1) == y) & np.isfinite(logits).all(axis=1)
    return float(ok.mean())


def shares_of(binary, model, ladder, tiers, tmp):
    """The share option of a ladder (fitted once per model for `fit` and `levels=`)."""
    if ladder == "default":
        return [], None
    if ladder == "importance":
        policy = tmp / "importance.toml"
        policy.write_text(f"version = 1\ntiers = {tiers}\ntier_order = \"importance\"\n")
        return ["--policy", policy], None
    if ladder == "equal":
        return ["--tier-shares", ",".join([f"{1 / tiers:.17g}"] * tiers)], None
    ds = MODELS[model]
    extra = ["--tier-levels", ladder.split("=", 1)[1]] if ladder.startswith("levels=") else []
    t0 = time.monotonic()
    out = cli(binary, "encrypt", ZOO / f"{model}.onnx", "--dry-run", "--json", "--tiers", tiers,
              "--tier-data", data_dir(ds) / "train_x.npy", "--tier-labels", data_dir(ds) / "train_y.npy", *extra)
    fit = json.loads(out)["tier_fit"]
    fit["seconds"] = time.monotonic() - t0
    policy = tmp / f"{model.replace('/', '_')}-{ladder}.toml"
    policy.write_text(f"version = 1\ntiers = {tiers}\ntier_shares = [{', '.join(f'{s:.17g}' for s in fit['shares'])}]\n"
                      f"tier_order = \"{fit['order']}\"\n")
    return ["--policy", policy], fit


def one_key(binary, model, tiers, share_args, tmp, x, y, i):
    tag = tmp / f"{model.replace('/', '_')}-{i}-{time.monotonic_ns()}"
    key = f"{tag}.key"
    src = ZOO / f"{model}.onnx"
    cli(binary, "keygen", "-o", key, "--tiers", tiers)
    prot = f"{tag}.p.onnx"
    cli(binary, "encrypt", src, "-o", prot, "--key-file", key, "--tiers", tiers, *share_args, "-q")
    levels = [accuracy(prot, x, y)]
    for t in range(1, tiers):
        d = f"{tag}.t{t}.onnx"
        cli(binary, "decrypt", prot, "-o", d, "--key-file", f"{key}.tier{t}", "--tier", t, "-q")
        levels.append(accuracy(d, x, y))
    d = f"{tag}.top.onnx"
    cli(binary, "decrypt", prot, "-o", d, "--key-file", key, "-q")
    levels.append(accuracy(d, x, y))
    exact = pathlib.Path(d).read_bytes() == src.read_bytes()
    for p in pathlib.Path(tmp).glob(f"{tag.name}*"):
        p.unlink()
    return levels, exact


def summarise(runs, tiers):
    a = np.array(runs)
    mean = a.mean(axis=0)
    rng = mean[-1] - mean[0]
    steps = np.diff(mean) / rng if rng > 0 else np.zeros(tiers)
    inversions = int(sum(any(r[t + 2] < r[t] for t in range(tiers - 1)) for r in runs))
    adjacent = int(sum(any(r[t + 1] < r[t] for t in range(tiers)) for r in runs))
    return {"mean": mean.tolist(), "min": a.min(axis=0).tolist(), "max": a.max(axis=0).tolist(),
            "min_step_of_range": float(steps.min()), "inversions_two_apart": inversions,
            "keys_with_adjacent_swap": adjacent}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default=str(ROOT / "target" / "release" / "onnx-protect"))
    ap.add_argument("--keys", type=int, default=20, help="fresh keys per model and ladder")
    ap.add_argument("--tiers", type=int, default=3)
    ap.add_argument("--ladders", default="default,fit")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json", default=str(ROOT / "bench-data" / "tiers.json"))
    args = ap.parse_args()

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="tiers-"))
    results = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "binary": args.bin, "keys": args.keys,
               "tiers": args.tiers, "rows": []}
    names = ["no key"] + [f"tier {t}" for t in range(1, args.tiers)] + ["top"]
    for ladder in args.ladders.split(","):
        print(f"\nladder {ladder}, {args.tiers} tiers, {args.keys} keys: mean (min–max) per level")
        print(f"{'model':28} | " + " | ".join(f"{n:^17}" for n in names) + " | min step | inv2 | swaps")
        for model in args.models.split(","):
            x, y = split(MODELS[model], "test")
            share_args, fit = shares_of(args.bin, model, ladder, args.tiers, tmp)
            with ThreadPoolExecutor(args.jobs) as ex:
                out = list(ex.map(lambda i: one_key(args.bin, model, args.tiers, share_args, tmp, x, y, i),
                                  range(args.keys)))
            runs = [r for r, _ in out]
            s = summarise(runs, args.tiers)
            shares = fit["shares"] if fit else (share_args[1] if ladder == "equal" else None)
            order = fit["order"] if fit else {"default": "auto", "equal": "importance"}.get(ladder, ladder)
            s.update({"model": model, "ladder": ladder, "shares": shares, "order": order, "fit": fit,
                      "top_exact": all(e for _, e in out), "runs": runs})
            results["rows"].append(s)
            cells = " | ".join(f"{m:.3f} ({lo:.2f}–{hi:.2f})" for m, lo, hi in zip(s["mean"], s["min"], s["max"]))
            print(f"{model:28} | {cells} | {s['min_step_of_range']:8.2f} | {s['inversions_two_apart']:4} | "
                  f"{s['keys_with_adjacent_swap']:5}" + ("" if s["top_exact"] else "  TOP NOT EXACT")
                  + (f"  fit: {fit['order']} order, shares {','.join(f'{x:.4f}' for x in fit['shares'])}, "
                     f"{fit['seconds']:.1f} s" if fit else ""), flush=True)

    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=1)
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
