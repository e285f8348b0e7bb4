#!/usr/bin/env python3
"""What secret positions (`encrypt --positions secret`) leave to the training attacks.

For each model, C of every weight's rows (largest L1 first) are encrypted in `dp`
(`fp` for weights whose rows are under 16 elements) twice, as
scripts/eval_secret_positions.py makes them:

* **public** positions: the attacker resets exactly the encrypted elements;
* **secret** positions: the attacker starts from the stored file and resets what it
  must guess, the 2·C·n rows of largest stored L1 of every encrypted tensor (the
  candidate pool, which holds nearly every encrypted row).

Then the training attacks of `onnx_protect.assess` run on the unknown elements
(`assess.attack_masks`): re-learning them with everything else frozen, fine-tuning
everything after the reset, and scratch as the reference, on `--sizes` of the training
split (three draws; the learning rate chosen on a held-out fifth of the attacker's data,
never the test data). The *gap* is the best attack's mean test accuracy minus scratch's
at the worst size, in points.

Needs torch and the binary (for `--positions secret`, which the Python package encrypts
too, and `decrypt` to find the truth). Single-threaded PyTorch.

    python3 scripts/finetune_study.py [--bin target/release/onnx-protect] [--secret 0.2]
        [--models digits/cnn,digits/mlp,vowels/gru,osuleaf/conv1d] [--sizes 0.1] [--seeds 3]
        [--steps 300] [--json FILE]
"""
import argparse
import json
import os
import pathlib
import sys
import tempfile

os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np  # noqa: E402
import onnx  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import eval_policies as ep  # noqa: E402
import eval_secret_positions as sp  # noqa: E402

ROOT = ep.ROOT
MODELS = ["digits/cnn", "digits/mlp", "vowels/gru", "osuleaf/conv1d"]


def masks_of(model, rows):
    """locator -> element mask of the initializers whose rows (name -> bool per row) are
    unknown to the attacker."""
    out = {}
    for k, t in enumerate(model.graph.initializer):
        if t.name not in rows or t.data_type != onnx.TensorProto.FLOAT:
            continue
        shape = tuple(t.dims) or (1,)
        r = rows[t.name]
        full = np.broadcast_to(r.reshape(-1, *([1] * (len(shape) - 1))), shape) if len(shape) >= 2 \
            else np.ones(shape, bool)
        out[f"7.0/5.{k}"] = np.ascontiguousarray(full).reshape(-1)
    return out


def main():
    from onnx_protect import assess

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default=os.environ.get("ONNX_PROTECT_BIN", str(ROOT / "target" / "release" / "onnx-protect")))
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--secret", type=float, default=0.2, help="C: the share of every weight's rows encrypted")
    ap.add_argument("--sizes", default="0.1", help="shares of the training split (default 0.1)")
    ap.add_argument("--seeds", type=int, default=assess.SEEDS)
    ap.add_argument("--steps", type=int, default=assess.STEPS)
    ap.add_argument("--json", help="write the reports here")
    args = ap.parse_args()
    sizes = tuple(float(s) for s in args.sizes.split(","))
    env = dict(os.environ, ONNXP_EVAL_KEY=ep.KEY_HEX)
    results = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = pathlib.Path(d)
        for name in args.models.split(","):
            src = ep.ZOO / f"{name}.onnx"
            test_x, test_y, train_x = ep.data(name)
            data = [np.load(f) for f in (train_x, train_x.with_name("train_y.npy"), test_x, test_y)]
            scratch = {}
            results[name] = {}
            for secret in (False, True):
                stored, truth = sp.encrypt(args.bin, src, "dp", args.secret, secret, tmp, env)
                rows = sp.pool_guess(stored, truth, args.secret) if secret else truth
                start = onnx.load(tmp / "p.onnx") if secret else onnx.load(src)
                r = assess.attack_masks(start, masks_of(start, rows), *data, sizes=sizes, seeds=args.seeds,
                                       steps=args.steps, scratch_cache=scratch)
                label = "secret" if secret else "public"
                results[name][label] = r
                print(f"{name:18} dp {args.secret:.2f} {label:7} gap {100 * r['gap']:+5.1f}  "
                      + "  ".join(f"{row['fraction']:.0%}: scratch {100 * row['mean']['scratch']:.1f} relearn "
                                  f"{100 * row['mean']['relearn']:.1f} finetune {100 * row['mean']['finetune']:.1f}"
                                  for row in r["sizes"]), flush=True)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
