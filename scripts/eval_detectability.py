#!/usr/bin/env python3
"""Can a key-less observer tell encrypted rows from clear rows by their values?

For each digits model, mode (ctr, fp, dp) and selection (even, l1) at coefficient
0.2 (fresh key each time):

    onnx-protect encrypt MODEL -o P --key-file K --mode '*=MODE' --coefficient '*=0.2' \
        --selection '*=SEL' -q
    onnx-protect inspect --json P

Every initializer of 2+ dimensions used by a Conv, Gemm or MatMul node is cut into
rows (first-dimension slices). A row is labelled encrypted if its element bytes
overlap a span of the manifest, clear otherwise. Features per row, from the values
AS STORED in P: mean, std, excess kurtosis, max |x| (non-finite values replaced by
a sentinel 1e30 first) and the fraction of non-finite values. A logistic
regression (features sign*log1p|f|, standardised) and a gradient-boosting
classifier (same transformed features) are scored by 5-fold stratified cross-validated ROC AUC (0.5 = cannot
tell). The same labels with the features of the ORIGINAL model give the baseline:
what the selection rule alone gives away (the positions are public anyway in the
manifest; this measures whether the stored VALUES betray encryption).

Rows are pooled over the four models (one classifier per mode and selection); the
per-model AUC (logistic regression, when a model has >= 5 rows of each class) is
reported too. An extra "relative" feature set divides each feature by the median
of the same feature over the rows of its tensor (a detector that compares a row
with its siblings).

Usage: python3 scripts/eval_detectability.py [--bin PATH] [--json bench-data/detectability.json]
"""
import argparse
import json
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # the histogram GBM oversubscribes a loaded machine
import pathlib
import subprocess
import tempfile
import time
import warnings

import numpy as np
import onnx
from onnx import numpy_helper
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

ROOT = pathlib.Path(__file__).resolve().parents[1]
DIGITS = ROOT / "fixtures" / "digits"
MODELS = ["cnn", "mlp", "convmixer", "vit"]
MODES = ["ctr", "fp", "dp"]
SELECTIONS = ["even", "l1"]
OPS = {"Conv", "Gemm", "MatMul"}
SENTINEL = 1e30
FEATURES = ["mean", "std", "kurtosis", "max_abs", "nonfinite_frac"]


def cli(binary, *args):
    r = subprocess.run([binary, *map(str, args)], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))}: exit {r.returncode}: {r.stderr}")
    return r.stdout


def row_features(v):
    with np.errstate(all="ignore"):
        v = v.astype(np.float64).ravel()
    nf = ~np.isfinite(v)
    w = np.where(nf, SENTINEL, v)
    with np.errstate(all="ignore"):
        m = w.mean()
        s = w.std()
        k = ((w - m) ** 4).mean() / s ** 4 - 3.0 if s > 0 else 0.0
    f = np.array([m, s, k, np.abs(w).max(), nf.mean()])
    return np.nan_to_num(f, nan=0.0, posinf=SENTINEL, neginf=-SENTINEL)


def initializers(model):
    out = {}
    for init in model.graph.initializer:
        out[init.name] = numpy_helper.to_array(init)
    return out


def rows_of(binary, prot_path, orig_model, prot_model):
    """[(model-tensor id, features stored, features original, label)]"""
    info = json.loads(cli(binary, "inspect", "--json", prot_path))
    spans = {}
    for e in info["protection"]["tensors"]:
        spans.setdefault(e["name"], []).extend(e["spans"])
    wanted = []
    for t in info["tensors"]:
        ops = {u["op_type"] for u in t.get("uses", [])}
        if ops & OPS and len(t["dims"]) >= 2 and t["data_type"] == "FLOAT":
            wanted.append(t["name"])
    po, pp = initializers(orig_model), initializers(prot_model)
    out = []
    for name in wanted:
        a_o, a_p = po[name], pp[name]
        n = a_o.shape[0]
        rb = a_o.itemsize * int(np.prod(a_o.shape[1:]))
        sp = spans.get(name, [])
        for i in range(n):
            b, e = i * rb, (i + 1) * rb
            lab = int(any(s0 < e and b < s1 for s0, s1 in sp))
            out.append((name, row_features(a_p[i]), row_features(a_o[i]), lab))
    return out


def slog(X):
    return np.sign(X) * np.log1p(np.abs(X))


def relative(X, groups):
    R = np.empty_like(X)
    for g in np.unique(groups):
        idx = groups == g
        med = np.median(np.abs(X[idx]), axis=0)
        R[idx] = X[idx] / np.where(med > 0, med, 1.0)
    R = np.clip(np.nan_to_num(R, nan=0.0), -SENTINEL, SENTINEL)
    return np.concatenate([X, R], axis=1)


def auc_cv(X, y, kind, seed=0):
    if min(np.bincount(y, minlength=2)) < 5:
        return None
    cv = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    if kind == "lr":
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        Xf = slog(X)
    else:
        clf = GradientBoostingClassifier(n_estimators=100, max_depth=3, random_state=seed)
        Xf = slog(X)  # monotone, so it only keeps float32 (used inside the trees) finite
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = cross_val_predict(clf, Xf, y, cv=cv, method="predict_proba")[:, 1]
    return float(roc_auc_score(y, p))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default=str(ROOT / "target" / "release" / "onnx-protect"))
    ap.add_argument("--coefficient", type=float, default=0.2)
    ap.add_argument("--json", default=str(ROOT / "bench-data" / "detectability.json"))
    args = ap.parse_args()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="detect-"))
    origs = {m: onnx.load(str(DIGITS / f"{m}.onnx")) for m in MODELS}
    results = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "load": os.getloadavg(),
               "binary": args.bin, "coefficient": args.coefficient, "features": FEATURES, "cells": []}
    print(f"{'sel':5} {'mode':4} | {'rows':>5} {'enc':>5} | {'LR':>5} {'GB':>5} {'LRrel':>5} {'GBrel':>5} | "
          f"{'base LR':>7} {'base GB':>7} {'bLRrel':>6} {'bGBrel':>6} | per-model LR stored/base")
    for sel in SELECTIONS:
        for mode in MODES:
            rows, groups, per_model = [], [], {}
            for m in MODELS:
                key = tmp / f"{m}-{mode}-{sel}-{time.monotonic_ns()}.key"
                cli(args.bin, "keygen", "-o", key)
                prot = tmp / f"{m}-{mode}-{sel}.onnx"
                cli(args.bin, "encrypt", DIGITS / f"{m}.onnx", "-o", prot, "--key-file", key,
                    "--mode", f"*={mode}", "--coefficient", f"*={args.coefficient}",
                    "--selection", f"*={sel}", "-q")
                r = rows_of(args.bin, prot, origs[m], onnx.load(str(prot)))
                Xs = np.array([t[1] for t in r]); Xo = np.array([t[2] for t in r])
                yy = np.array([t[3] for t in r])
                per_model[m] = {"rows": len(r), "encrypted_rows": int(yy.sum()),
                                "auc_lr": auc_cv(Xs, yy, "lr"), "auc_lr_base": auc_cv(Xo, yy, "lr")}
                rows += r
                groups += [f"{m}/{t[0]}" for t in r]
            Xs = np.array([t[1] for t in rows]); Xo = np.array([t[2] for t in rows])
            y = np.array([t[3] for t in rows]); g = np.array(groups)
            cell = {"selection": sel, "mode": mode, "rows": int(len(y)), "encrypted_rows": int(y.sum()),
                    "auc": {"lr": auc_cv(Xs, y, "lr"), "gb": auc_cv(Xs, y, "gb"),
                            "lr_rel": auc_cv(relative(Xs, g), y, "lr"), "gb_rel": auc_cv(relative(Xs, g), y, "gb")},
                    "auc_baseline": {"lr": auc_cv(Xo, y, "lr"), "gb": auc_cv(Xo, y, "gb"),
                                     "lr_rel": auc_cv(relative(Xo, g), y, "lr"),
                                     "gb_rel": auc_cv(relative(Xo, g), y, "gb")},
                    "per_model": per_model,
                    "nonfinite_rows_stored": int((Xs[:, 4] > 0).sum())}
            results["cells"].append(cell)
            a, b = cell["auc"], cell["auc_baseline"]
            fmt = lambda v: "  n/a" if v is None else f"{v:5.3f}"
            pm = " ".join(f"{m}:{fmt(v['auc_lr'])}/{fmt(v['auc_lr_base'])}" for m, v in per_model.items())
            print(f"{sel:5} {mode:4} | {len(y):5d} {int(y.sum()):5d} | {fmt(a['lr'])} {fmt(a['gb'])} "
                  f"{fmt(a['lr_rel'])} {fmt(a['gb_rel'])} |   {fmt(b['lr'])}   {fmt(b['gb'])}  {fmt(b['lr_rel'])}  "
                  f"{fmt(b['gb_rel'])} | {pm}", flush=True)
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=1)
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
