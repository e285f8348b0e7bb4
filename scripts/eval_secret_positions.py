#!/usr/bin/env python3
"""What do secret positions (`encrypt --positions secret`) buy against a key-less attacker?

For each zoo model, mode (`fp`, `dp`; `ctr` is refused with secret positions) and
positions (public, secret), the model is encrypted with

    onnx-protect encrypt MODEL -o P --key-env K --mode '*=MODE' --coefficient '*=C' \
        --selection '*=l1' [--positions secret] -q

(every known operator type, the rows of largest L1 norm; in `dp` mode, weights whose rows
have fewer than 16 elements, which `dp` refuses, get `fp`; with secret positions the C·n
encrypted rows of a weight are drawn with the key among its 2·C·n rows of largest L1
norm). The truth, which rows are encrypted, comes from decrypting the file with the key
and comparing; the attacker never sees it. The *rows* are the first-dimension slices of
every floating-point initializer of rank >= 2 with more than one row.

1. **Detectability.** Features per row from the stored values (mean, std, excess
   kurtosis, max |x|, each also divided by its median over the rows of the same tensor),
   logistic regression on sign·log1p. An attacker can label rows of models of their
   own, encrypted with their own key, so the detector is trained on the other models
   and scored (ROC AUC) on the held-out one (leave one model out). Two row sets: every
   row, and only the candidate rows (the 2·C·n largest by L1 of the stored values, which
   `fp` keeps within a factor of 2 per element and `dp` keeps exactly per row set).
2. **Fills that must guess.** With public positions the attacker fills exactly the
   encrypted rows. With secret positions they guess: `stored` (the file as it is: no
   fill), `pool` (fill all 2·C·n candidate rows by stored L1, so every encrypted row
   and as many clear ones), `detector` (fill the C·n rows the detector ranks highest).
   Each guess is filled with zeros, the clear mean, and init-fill (N(0, σ of the
   tensor's unfilled elements); 1-D tensors are whole, so their positions are public
   either way: normalisation scales and variances get 1, everything else 0). The
   best test accuracy over fills and guesses is the best key-less attack.

Accuracy runs in onnxruntime on the test split of each model's data set.

    python3 scripts/eval_secret_positions.py [--bin target/release/onnx-protect]
        [--models digits/cnn,...] [--coefficient 0.2] [--json out.json]
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import numpy_helper  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import eval_policies as ep  # noqa: E402

MODELS = ["digits/cnn", "digits/mlp", "digits/convmixer", "digits/vit", "vowels/mlp", "osuleaf/conv1d"]
MODES = ["fp", "dp"]
NORM_ONE = {("LayerNormalization", 1), ("BatchNormalization", 1), ("BatchNormalization", 4),
            ("InstanceNormalization", 1), ("GroupNormalization", 1)}
SEED = 0


def floats(model):
    return {t.name: numpy_helper.to_array(t).copy() for t in model.graph.initializer if t.data_type == 1}


def users(model):
    out = {}
    for n in model.graph.node:
        for i, name in enumerate(n.input):
            out.setdefault(name, (n.op_type, i))
    return out


def row_features(v):
    v = v.astype(np.float64).ravel()
    v = np.where(np.isfinite(v), v, 1e30)
    m, s = v.mean(), v.std()
    k = ((v - m) ** 4).mean() / s ** 4 - 3.0 if s > 0 else 0.0
    return np.nan_to_num(np.array([m, s, k, np.abs(v).max()]), posinf=1e30, neginf=-1e30)


def rows_of(stored, truth):
    """[(tensor, row, features, label)] over the multi-row tensors with an encrypted row."""
    out = []
    for name, enc in truth.items():
        a = stored[name]
        if a.ndim < 2 or a.shape[0] < 2 or not enc.any():
            continue
        feats = np.array([row_features(a[i]) for i in range(a.shape[0])])
        med = np.median(np.abs(feats), axis=0)
        rel = feats / np.where(med > 0, med, 1.0)
        for i in range(a.shape[0]):
            out.append((name, i, np.concatenate([feats[i], rel[i]]), int(enc[i])))
    return out


def slog(x):
    return np.sign(x) * np.log1p(np.abs(x))


def detector(train_rows):
    X = slog(np.array([r[2] for r in train_rows]))
    y = np.array([r[3] for r in train_rows])
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(X, y)
    return clf


def score_rows(clf, rows):
    return clf.predict_proba(slog(np.array([r[2] for r in rows])))[:, 1]


def auc(y, p):
    return float(roc_auc_score(y, p)) if 0 < sum(y) < len(y) else None


def accuracy(model, params, x, y):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for t in m.graph.initializer:
        if t.name in params:
            t.CopyFrom(numpy_helper.from_array(params[t.name].astype(np.float32), t.name))
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    out = s.run(None, {s.get_inputs()[0].name: x})[0]
    return float((out.argmax(1) == y).mean())


def fill(stored, guess, users_, kind, rng):
    """`stored` with the rows of `guess` (name → boolean row mask) filled."""
    out = {}
    for name, rows in guess.items():
        a = stored[name].copy()
        if not rows.any():
            continue
        if a.ndim < 2 or a.shape[0] < 2:
            op = users_.get(name, ("", 0))
            a[...] = 1.0 if kind == "init" and op in NORM_ONE else 0.0
        else:
            clear = a[~rows]
            if kind == "zero":
                a[rows] = 0.0
            elif kind == "mean":
                a[rows] = clear.mean() if clear.size else 0.0
            else:
                sigma = clear.std() if clear.size else 0.0
                a[rows] = rng.normal(0.0, sigma, size=a[rows].shape)
        out[name] = a
    merged = dict(stored)
    merged.update(out)
    return merged


def best_fill(model, stored, guess, users_, x, y):
    best = (-1.0, "")
    for kind in ("zero", "mean", "init"):
        draws = 3 if kind == "init" else 1
        accs = [accuracy(model, fill(stored, guess, users_, kind, np.random.default_rng(SEED + d)), x, y)
                for d in range(draws)]
        best = max(best, (float(np.mean(accs)), kind))
    return best


def pool_guess(stored, truth, c):
    """The 2·C·n rows of largest stored L1 per tensor with encrypted rows; 1-D tensors whole."""
    g = {}
    for name, enc in truth.items():
        if not enc.any():
            continue
        a = stored[name]
        if a.ndim < 2 or a.shape[0] < 2:
            g[name] = np.ones(enc.shape, bool)
            continue
        n = a.shape[0]
        k = min(n, int(np.ceil(2 * c * n)))
        l1 = np.nan_to_num(np.abs(a.reshape(n, -1).astype(np.float64)), posinf=1e30).sum(1)
        m = np.zeros(n, bool)
        m[np.argsort(-l1, kind="stable")[:k]] = True
        g[name] = m
    return g


def detector_guess(clf, stored, truth, rows, c):
    g = {n: (np.ones(e.shape, bool) if stored[n].ndim < 2 or stored[n].shape[0] < 2 else np.zeros(e.shape, bool))
         for n, e in truth.items() if e.any()}
    if not rows:
        return g
    p = score_rows(clf, rows)
    for name in {r[0] for r in rows}:
        idx = [i for i, r in enumerate(rows) if r[0] == name]
        n = stored[name].shape[0]
        k = int(np.ceil(c * n))
        top = sorted(idx, key=lambda i: -p[i])[:k]
        for i in top:
            g[name][rows[i][1]] = True
    return g


def encrypt(binary, src, mode, c, secret, tmp, env):
    """Encrypts `src`; in dp mode, weights whose rows are under 16 elements (refused by dp)
    get fp instead, one by one as encrypt names them."""
    out = tmp / "p.onnx"
    fp_names = []
    while True:
        args = ["encrypt", src, "-o", out, "--key-env", "ONNXP_EVAL_KEY", "--mode", f"*={mode}",
                "--coefficient", f"*={c}", "--selection", "*=l1", "-q", "--force"]
        for n in fp_names:
            args += ["--mode", f"name:{n}=fp", "--coefficient", f"name:{n}={c}", "--selection", f"name:{n}=l1"]
        if secret:
            args += ["--positions", "secret"]
        r = subprocess.run([binary, *map(str, args)], capture_output=True, text=True, env=env)
        if r.returncode == 0:
            break
        short = r.stderr.split("but '", 1)[1].split("'", 1)[0] if "at least 16 elements" in r.stderr else None
        if short is None or short in fp_names:
            sys.exit(f"{' '.join(map(str, args))}: {r.stderr}")
        fp_names.append(short)
    back = tmp / "back.onnx"
    ep.cli(binary, "decrypt", out, "-o", back, "--key-env", "ONNXP_EVAL_KEY", "-q", "--force", env=env)
    stored, plain = floats(onnx.load(out)), floats(onnx.load(back))
    truth = {}
    for name, a in plain.items():
        diff = (a.view(np.uint32) != stored[name].view(np.uint32))
        if diff.any():
            truth[name] = diff.reshape(a.shape[0], -1).any(1) if a.ndim >= 2 else np.array([True])
    return stored, truth


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default=os.environ.get("ONNX_PROTECT_BIN", str(ep.ROOT / "target/release/onnx-protect")))
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--coefficient", type=float, default=0.2)
    ap.add_argument("--json")
    args = ap.parse_args()
    models = args.models.split(",")
    env = dict(os.environ, ONNXP_EVAL_KEY=ep.KEY_HEX)
    results = {"coefficient": args.coefficient, "cells": []}
    with tempfile.TemporaryDirectory() as d:
        tmp = pathlib.Path(d)
        for mode in MODES:
            enc = {}
            for m in models:
                for secret in (False, True):
                    stored, truth = encrypt(args.bin, ep.ZOO / f"{m}.onnx", mode, args.coefficient, secret, tmp, env)
                    enc[(m, secret)] = (stored, truth, rows_of(stored, truth))
            for m in models:
                model = onnx.load(ep.ZOO / f"{m}.onnx")
                us = users(model)
                tx, ty, _ = ep.data(m)
                x, y = np.load(tx), np.load(ty)
                orig = accuracy(model, {}, x, y)
                chance = float(np.bincount(y).max() / len(y))
                cell = {"model": m, "mode": mode, "original": orig, "chance": chance}
                for secret in (False, True):
                    stored, truth, rows = enc[(m, secret)]
                    others = [r for (o, s), v in enc.items() if o != m and s == secret for r in v[2]]
                    clf = detector(others)
                    labels = [r[3] for r in rows]
                    det_all = auc(labels, score_rows(clf, rows)) if rows else None
                    pool = pool_guess(stored, truth, args.coefficient)
                    in_pool = [r for r in rows if pool[r[0]][r[1]]]
                    det_pool = auc([r[3] for r in in_pool], score_rows(clf, in_pool)) if in_pool else None
                    covered = sum(int((pool[n] & e).sum()) for n, e in truth.items())
                    total = sum(int(e.sum()) for e in truth.values())
                    key = "secret" if secret else "public"
                    r = {"auc_all_rows": det_all, "auc_pool_rows": det_pool, "pool_covers": covered / total,
                         "stored": accuracy(model, stored, x, y)}
                    if secret:
                        r["pool_fill"] = best_fill(model, stored, pool, us, x, y)
                        r["detector_fill"] = best_fill(model, stored, detector_guess(clf, stored, truth, rows,
                                                                                     args.coefficient), us, x, y)
                        r["best"] = max(r["stored"], r["pool_fill"][0], r["detector_fill"][0])
                    else:
                        r["exact_fill"] = best_fill(model, stored, truth, us, x, y)
                        r["best"] = max(r["stored"], r["exact_fill"][0])
                    cell[key] = r
                results["cells"].append(cell)
                pub, sec = cell["public"], cell["secret"]
                f = lambda v: "  n/a" if v is None else f"{v:5.3f}"  # noqa: E731
                print(f"{m:17} {mode} orig {100 * orig:5.1f} chance {100 * chance:5.1f} | public: AUC {f(pub['auc_all_rows'])}"
                      f" exact {100 * pub['exact_fill'][0]:5.1f} ({pub['exact_fill'][1]}) stored {100 * pub['stored']:5.1f}"
                      f" | secret: AUC {f(sec['auc_all_rows'])} / pool {f(sec['auc_pool_rows'])} covers"
                      f" {100 * sec['pool_covers']:4.0f}% stored {100 * sec['stored']:5.1f} pool-fill"
                      f" {100 * sec['pool_fill'][0]:5.1f} ({sec['pool_fill'][1]}) detector-fill"
                      f" {100 * sec['detector_fill'][0]:5.1f} ({sec['detector_fill'][1]})", flush=True)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
