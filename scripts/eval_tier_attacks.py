#!/usr/bin/env python3
"""The tier-k holder's best training attack: does it reach tier k+1's level?

For each model (default: the four digits classifiers of fixtures/zoo and vowels/lstm), one
fresh key, 3 tiers as `--tiers 3` alone gives them (by class on the zoo classifiers; with
`--ladder fit`, the tier order and shares fitted once per model on its training split,
`scripts/eval_tiers.py`'s `fit` ladder, given to every encryption as a policy file):

    onnx-protect keygen -o K --tiers 3
    onnx-protect encrypt MODEL -o P --key-file K --tiers 3 -q
    onnx-protect decrypt P -o D_k --key-file K.tier{k} --tier k -q      (k = 1, 2)
    onnx-protect decrypt P -o D_3 --key-file K -q                       (checked: the original)

For k = 0 (the protected file, no key), 1 and 2 the holder of tier k has D_k: every weight of
tiers 1 … k clear, the elements of tiers k+1 … 3 still encrypted at public positions
(`inspect`: each encrypted span's `tier`). The attacks of `onnx_protect.assess`
(`attack_masks`) run on D_k with the mask of those still-encrypted elements: `relearn` (reset
them, train only them, everything clear frozen) and `finetune` (reset them, train everything),
on 1%, 5% and 10% of the training split (stratified draws), measured on the test split; `best`
is the better of the two. Scratch (the architecture trained from a fresh start on the same
data) is run too, as `attack_masks` always does, and shared by the three k of a model.

The target is tier k+1's level: the mean onnxruntime test accuracy of D_(k+1) over
`--level-keys` fresh keys (the first of them is the attack key); `reaches` says whether the
best attack's accuracy is at least that mean.

Usage:
    python3 scripts/eval_tier_attacks.py [--bin PATH] [--models digits/cnn,…] [--seeds 1]
        [--steps 300] [--level-keys 10] [--jobs 2] [--ladder default|fit] [--json bench-data/tier-attacks.json] [--quick]
    python3 scripts/eval_tier_attacks.py --table bench-data/tier-attacks.json

`--quick`: digits/mlp only, 1% and 5% of the data, 100 steps, 3 level keys (a check that the
script runs, under a minute). Single-threaded PyTorch per model process
(ONNX_PROTECT_THREADS, default 1); `--jobs` processes run models in parallel.
"""
import argparse
import concurrent.futures
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import eval_tiers  # noqa: E402  (the zoo's data, the CLI runner and the accuracy measure)
from eval_tiers import ROOT, ZOO, accuracy, cli, data_dir  # noqa: E402
MODELS = ("digits/cnn", "digits/mlp", "digits/convmixer", "digits/vit", "vowels/lstm")
TIERS = 3
SIZES = (0.01, 0.05, 0.10)


def data_of(model):
    d = data_dir(eval_tiers.MODELS[model])
    return [np.load(d / f"{n}.npy") for n in ("train_x", "train_y", "test_x", "test_y")]


def ort_accuracy(path, x, y):
    # A row with a non-finite logit counts as wrong (scripts/eval_tiers.py's measure).
    return accuracy(path, x.astype(np.float32), y)


def tier_files(binary, model, tmp, tag, share_args=()):
    """keygen + encrypt (with `share_args`) + decrypt at every tier: [P, D_1, …, D_(N-1), D_N]
    and whether D_N is the original byte for byte."""
    src = ZOO / f"{model}.onnx"
    key = tmp / f"{tag}.key"
    cli(binary, "keygen", "-o", key, "--tiers", TIERS)
    files = [tmp / f"{tag}.t0.onnx"]
    cli(binary, "encrypt", src, "-o", files[0], "--key-file", key, "--tiers", TIERS, *share_args, "-q")
    for t in range(1, TIERS):
        files.append(tmp / f"{tag}.t{t}.onnx")
        cli(binary, "decrypt", files[0], "-o", files[t], "--key-file", f"{key}.tier{t}", "--tier", t, "-q")
    files.append(tmp / f"{tag}.t{TIERS}.onnx")
    cli(binary, "decrypt", files[0], "-o", files[TIERS], "--key-file", key, "-q")
    fingerprint = json.loads(cli(binary, "inspect", files[0], "--json")).get("protection", {}).get("recipients")
    return files, files[TIERS].read_bytes() == src.read_bytes(), fingerprint


def still_encrypted(path, k):
    """The tier-k file as an ONNX model and locator -> mask of its elements still encrypted
    (the spans of tiers above k), from `inspect`'s public positions."""
    import onnx
    import onnx_protect
    from onnx_protect import _torch_graph as tg
    from onnx_protect import assess

    info = onnx_protect.inspect(str(path))
    prot = info["protection"]
    if prot.get("restored_tiers", 0) != k:
        raise RuntimeError(f"{path}: restored_tiers {prot.get('restored_tiers')}, expected {k}")
    kept = dict(info, protection=dict(prot, tensors=[t for t in prot["tensors"] if t["tier"] > k]))
    model = onnx.load(str(path))
    locators = frozenset(t["locator"] for t in kept["protection"]["tensors"])
    masks = assess.encrypted_masks(kept, tg.TorchGraph(model, trainable=locators))
    return model, masks


def run_model(model, args):
    from onnx_protect import assess

    t0 = time.time()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="tier-attacks-"))
    try:
        x, y, xt, yt = data_of(model)
        xt = xt.astype(np.float32)
        share_args, fit = eval_tiers.shares_of(args.bin, model, args.ladder, TIERS, tmp)
        # Tier levels over the level keys; key 0 is the attack key (its files are kept).
        levels, exact, attack_files, recipients = [], True, None, None
        for i in range(args.level_keys):
            files, same, rec = tier_files(args.bin, model, tmp, f"k{i}", share_args)
            levels.append([ort_accuracy(f, xt, yt) for f in files])
            exact &= same
            if i == 0:
                attack_files, recipients = files, rec
            else:
                for f in files:
                    f.unlink()
        levels = np.array(levels)
        row = {"model": model, "ladder": args.ladder, "fit": fit, "recipients": recipients, "top_exact": exact,
               "levels_attack_key": levels[0].tolist(), "levels_mean": levels.mean(axis=0).tolist(),
               "levels_min": levels.min(axis=0).tolist(), "levels_max": levels.max(axis=0).tolist(),
               "tiers": []}
        scratch = {}
        for k in range(TIERS):
            m, masks = still_encrypted(attack_files[k], k)
            elements = int(sum(int(v.sum()) for v in masks.values()))
            r = assess.attack_masks(m, masks, x, y, xt, yt, sizes=args.sizes, seeds=args.seeds,
                                    steps=args.steps, scratch_cache=scratch)
            target = float(levels[:, k + 1].mean())
            sizes = []
            for s in r["sizes"]:
                best = max(assess.ATTACKS, key=lambda a: s["mean"][a])
                sizes.append({"fraction": s["fraction"], "samples": s["samples"],
                              "relearn": s["mean"]["relearn"], "finetune": s["mean"]["finetune"],
                              "scratch": s["mean"]["scratch"], "start": s["mean"]["start"],
                              "best": s["mean"][best], "best_attack": best,
                              "reaches": bool(s["mean"][best] >= target)})
            row["tiers"].append({"k": k, "level_k": float(levels[0, k]), "target_level": target,
                                 "still_encrypted_elements": elements, "sizes": sizes,
                                 "scratch_reference": r["scratch_reference"], "augmentation": r["augmentation"]})
        row["seconds"] = round(time.time() - t0, 1)
        return row
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def table(rows, sizes):
    head = ("| model | k | tier k (attack key) | tier k+1: mean (attack key) | "
            + " | ".join(f"best at {f:.0%} (relearn / finetune)" for f in sizes) + " | reaches tier k+1 at | "
            + "scratch at " + " / ".join(f"{f:.0%}" for f in sizes) + " |")
    lines = [head, "|" + "---|" * (6 + len(sizes))]
    for r in rows:
        for t in r["tiers"]:
            k = t["k"]
            cells = []
            for s in t["sizes"]:
                cells.append(f"**{s['best']:.3f}** ({s['relearn']:.3f} / {s['finetune']:.3f})")
            reached = [f"{s['fraction']:.0%}" for s in t["sizes"] if s["reaches"]]
            lines.append(f"| {r['model']} | {k} | {t['level_k']:.3f} | {t['target_level']:.3f} "
                         f"({r['levels_attack_key'][k + 1]:.3f}) | " + " | ".join(cells)
                         + f" | {', '.join(reached) if reached else 'no'} | "
                         + " / ".join(f"{s['scratch']:.3f}" for s in t["sizes"]) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default=str(ROOT / "target" / "debug" / "onnx-protect"))
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--seeds", type=int, default=1, help="draws per data size (default 1)")
    ap.add_argument("--steps", type=int, default=300, help="training steps per run (default 300, assess's)")
    ap.add_argument("--sizes", default=",".join(str(s) for s in SIZES), help="shares of the training split")
    ap.add_argument("--level-keys", type=int, default=10, help="fresh keys for the tier levels (default 10)")
    ap.add_argument("--jobs", type=int, default=2, help="models run in parallel (processes)")
    ap.add_argument("--json", default=str(ROOT / "bench-data" / "tier-attacks.json"))
    ap.add_argument("--ladder", choices=("default", "fit"), default="default",
                    help="the tiers: as --tiers 3 alone gives them, or order and shares fitted on the training split")
    ap.add_argument("--quick", action="store_true", help="digits/mlp, 1%% and 5%%, 100 steps, 3 level keys")
    ap.add_argument("--table", metavar="JSON", help="print the table of a saved run (runs nothing)")
    args = ap.parse_args()
    if args.table:
        with open(args.table) as f:
            saved = json.load(f)
        print(table(saved["rows"], saved["sizes"]))
        return
    if args.quick:
        args.models, args.sizes, args.steps, args.level_keys = "digits/mlp", "0.01,0.05", 100, 3
    args.sizes = tuple(float(s) for s in args.sizes.split(","))
    models = args.models.split(",")
    unknown = [m for m in models if not (ZOO / f"{m}.onnx").is_file()]
    if unknown:
        sys.exit(f"error: no such zoo model: {', '.join(unknown)}")
    if not os.access(args.bin, os.X_OK):
        sys.exit(f"error: {args.bin}: not an executable (build it, or pass --bin)")
    if min(args.seeds, args.steps, args.level_keys) < 1 or not all(0 < s <= 1 for s in args.sizes):
        sys.exit("error: --seeds, --steps and --level-keys must be at least 1, --sizes in (0, 1]")

    t0 = time.time()
    with concurrent.futures.ProcessPoolExecutor(args.jobs) as ex:
        # The transformers and ConvMixers train slowest: they start first.
        slow = sorted(models, key=lambda m: not any(w in m for w in ("vit", "convmixer", "transformer")))
        futures = {m: ex.submit(run_model, m, args) for m in slow}
        rows = []
        for m in models:
            rows.append(futures[m].result())
            print(f"{m}: {rows[-1]['seconds']} s", file=sys.stderr, flush=True)
    out = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "binary": args.bin, "tiers": TIERS,
           "shares": args.ladder, "seeds": args.seeds, "steps": args.steps, "sizes": list(args.sizes),
           "level_keys": args.level_keys, "seconds": round(time.time() - t0, 1), "rows": rows}
    print(table(rows, args.sizes))
    print(f"\n{len(models)} model(s) in {out['seconds']} s; {args.seeds} draw(s) per size, {args.steps} steps "
          f"per run; tier levels over {args.level_keys} keys")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
