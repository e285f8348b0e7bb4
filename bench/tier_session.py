#!/usr/bin/env python3
"""Sessions of models tiered by class against the same models untiered and plain.

For each session model (bench/make_session_models.py), `--bin` encrypts its external-data copy
untiered and with `--tiers 3` (by class where the model is a classifier); then, in fresh
processes interleaved, `onnx_protect.InferenceSession` opens the untiered copy, the tiered copy
with the top key and with the tier-1 key, and onnxruntime opens the plain file. Prints the
median session time and peak RSS over the rounds after the first.

    python3 bench/tier_session.py [--bin target/release/onnx-protect] [--models vgg16,resnet50_fp16] [--runs 8]
"""
import argparse
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def open_once(path, key):
    t = time.perf_counter()
    if key == "-":
        import onnxruntime as ort

        ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    else:
        import onnx_protect as op

        op.InferenceSession(path, key_file=key, providers=["CPUExecutionProvider"])
    print(f"{time.perf_counter() - t:.4f} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=str(ROOT / "target" / "release" / "onnx-protect"))
    ap.add_argument("--models", default="vgg16,resnet50_fp16")
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--once", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.once:
        return open_once(*a.once)
    work = pathlib.Path(tempfile.mkdtemp(prefix="tier-session-"))
    run = lambda *args: subprocess.run([a.bin, *map(str, args)], check=True, capture_output=True)
    for m in a.models.split(","):
        src = ROOT / "bench-data" / "session-models" / m / "external" / "model.onnx"
        d = work / m
        for sub in ("u", "t"):
            (d / sub).mkdir(parents=True)
        run("keygen", "-o", d / "k1", "-q")
        run("keygen", "-o", d / "k3", "--tiers", "3", "-q")
        run("encrypt", src, "-o", d / "u" / "model.onnx", "--key-file", d / "k1", "-q")
        run("encrypt", src, "-o", d / "t" / "model.onnx", "--key-file", d / "k3", "--tiers", "3", "-q")
        cases = {"plain": (src, "-"), "untiered": (d / "u" / "model.onnx", d / "k1"),
                 "tiers, top key": (d / "t" / "model.onnx", d / "k3"),
                 "tiers, tier-1 key": (d / "t" / "model.onnx", f"{d / 'k3'}.tier1")}
        got = {c: [] for c in cases}
        for r in range(a.runs):
            for c, (path, key) in cases.items():
                out = subprocess.run([sys.executable, __file__, "--once", str(path), str(key)],
                                     check=True, capture_output=True, text=True).stdout.split()
                if r:
                    got[c].append((float(out[0]), float(out[1])))
        for c, v in got.items():
            print(f"{m} {c}: {statistics.median(t for t, _ in v):.3f} s, {statistics.median(r for _, r in v):.0f} MiB")


if __name__ == "__main__":
    main()
