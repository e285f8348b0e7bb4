#!/usr/bin/env python3
"""Accuracy cost of recipient fingerprints on the model zoo (docs/tracing.md).

For every model of fixtures/zoo (digits, vowels, osuleaf) it makes a fingerprint secret,
a key and a ledger, protects COPIES recipients' copies with `encrypt --fingerprint` (the
built-in policy), decrypts each (what a recipient who decrypts gets), and measures the
onnxruntime accuracy of each copy on the data set's test split against the original's.
Prints one row per model: original accuracy, the largest change over the copies in
points, and how many test samples changed their predicted class in the worst copy.
`--check train|test` passes that split's inputs to `encrypt --fingerprint-check` (the
first variant of each mark that changes no prediction on them is used) and adds the
variants tried.

Usage (from the repository root, after `cargo build -p onnx-protect`; `--check` needs the
default `tract` feature):
  python3 scripts/eval_fingerprint_accuracy.py [--bin target/debug/onnx-protect] [--copies 5] [--check train|test]
Needs numpy and onnxruntime.
"""

import argparse
import json
import os
import subprocess
import tempfile

import numpy as np
import onnxruntime as ort

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ZOO = os.path.join(ROOT, "fixtures", "zoo")
MODELS = {
    "digits": ["cnn", "mlp", "convmixer", "vit"],
    "vowels": ["lstm", "gru", "cnn", "mlp", "vit"],
    "osuleaf": ["conv1d", "convmixer", "vit"],
}


def split_dir(dataset):
    return os.path.join(ROOT, "fixtures", "digits") if dataset == "digits" else os.path.join(ZOO, dataset)


def test_split(dataset):
    d = split_dir(dataset)
    return np.load(os.path.join(d, "test_x.npy")), np.load(os.path.join(d, "test_y.npy"))


def predict(path, x):
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    return s.run(None, {name: x.astype(np.float32)})[0].argmax(axis=1)


def sh(args):
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, args))}: {r.stderr.strip()}")
    return r.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "debug", "onnx-protect"))
    ap.add_argument("--copies", type=int, default=5)
    ap.add_argument("--alpha", type=float, help="--fingerprint-strength (default: the tool's)")
    ap.add_argument("--check", choices=["train", "test"], help="split passed to --fingerprint-check")
    a = ap.parse_args()
    print("| model | test samples | original accuracy | largest change (points) | samples changed (worst copy) | variants tried |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    with tempfile.TemporaryDirectory() as work:
        for dataset, names in MODELS.items():
            x, y = test_split(dataset)
            for name in names:
                model = os.path.join(ZOO, dataset, f"{name}.onnx")
                d = os.path.join(work, dataset, name)
                os.makedirs(d)
                key, secret, ledger = (os.path.join(d, f) for f in ("k.key", "fp.secret", "ledger.jsonl"))
                sh([a.bin, "keygen", "-o", key, "-q"])
                sh([a.bin, "keygen", "--fingerprint-secret", "-o", secret, "-q"])
                base = predict(model, x)
                acc0 = float((base == y).mean()) * 100
                worst, changed, tried = 0.0, 0, []
                extra = ["--fingerprint-strength", str(a.alpha)] if a.alpha else []
                if a.check:
                    check = os.path.join(d, "check.npy")
                    np.save(check, np.load(os.path.join(split_dir(dataset), f"{a.check}_x.npy")).astype(np.float32))
                    extra += ["--fingerprint-check", check]
                for i in range(a.copies):
                    enc, dec = os.path.join(d, f"e{i}.onnx"), os.path.join(d, f"d{i}.onnx")
                    out = sh([a.bin, "encrypt", model, "-o", enc, "--key-file", key, "--fingerprint", f"r{i:02d}",
                              "--fingerprint-secret", secret, "--ledger", ledger, "--json", *extra])
                    checked = json.loads(out)["fingerprint"].get("checked")
                    if checked:
                        tried.append(str(checked["tried"]))
                    sh([a.bin, "decrypt", enc, "-o", dec, "--key-file", key, "-q"])
                    p = predict(dec, x)
                    delta = float((p == y).mean()) * 100 - acc0
                    if abs(delta) >= abs(worst):
                        worst = delta
                    changed = max(changed, int((p != base).sum()))
                print(f"| {dataset}/{name} | {len(y)} | {acc0:.2f}% | {worst:+.2f} | {changed} | {','.join(tried)} |",
                      flush=True)


if __name__ == "__main__":
    main()
