#!/usr/bin/env python3
"""Recipient fingerprints on the digits models: accuracy cost, robustness, what breaks them.

For each model of fixtures/digits it makes a fingerprint secret, a key and a ledger of 50
recipients (`encrypt --fingerprint ID` then `decrypt`, so each copy is what a recipient
who decrypts gets), then:

  accuracy   onnxruntime accuracy of 5 recipients' copies against the original, on the
             540 test images and on all 1,797 images, and the share of images whose
             predicted class is unchanged
  attacks    each applied to recipient r00's copy (or to several copies), then traced
             with `onnx-protect trace --json` against the 50-recipient ledger:
               none            the copy as decrypted
               fp16            every float initializer rounded to float16 and back
               onnx-resave     onnx.load + onnx.save with every tensor in external data
               int8-dynamic    onnxruntime.quantization.quantize_dynamic (QInt8)
               int8-per-chan   the same, per channel
               prune-10%       the 10% smallest |w| of every weight tensor set to 0
               finetune-1ep    1 epoch of AdamW (lr 1e-3) on 10% of the training split
               finetune-heavy  30 epochs of AdamW (lr 3e-3) on the whole training split
               collude-K       the element-wise mean of K recipients' copies
               collude-5+noise the mean of 5 copies plus Gaussian noise of 4x the mark's
                               amplitude (alpha * sigma) in every weight
               distill         a fresh model of the same architecture trained on the
                               copy's outputs (not its weights)
             For each: accuracy on the test split, the score z of the true recipient(s),
             the best score of an innocent recipient, and whom trace names (threshold
             sqrt(2 ln(50 / 1e-6)) = 5.95).

Usage (from the repository root, after `cargo build -p onnx-protect --no-default-features`):
  python3 scripts/eval_tracing.py [--bin target/debug/onnx-protect] [--models cnn mlp ...]
                                  [--json FILE]
Needs numpy, onnx, onnxruntime and torch (fine-tuning and distillation import the model
classes of fixtures/digits/train.py). Fixed seeds; the fingerprint secret is fresh each
run, so scores move in their last digits. About 2 minutes on 2 cores for all four models.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(ROOT, "fixtures", "digits")
RECIPIENTS = [f"r{i:02d}" for i in range(50)]
ALPHA = 0.002
ATTACKS = True

ort.set_default_logger_severity(3)


def sh(args, ok=(0,)):
    p = subprocess.run(args, capture_output=True, text=True)
    if p.returncode not in ok:
        sys.exit(f"{' '.join(args)} failed ({p.returncode}): {p.stderr.strip()}")
    return p


def data():
    load = lambda n: np.load(os.path.join(DIGITS, n))  # noqa: E731
    return load("train_x.npy"), load("train_y.npy"), load("test_x.npy"), load("test_y.npy")


def predict(path_or_bytes, x):
    s = ort.InferenceSession(path_or_bytes, providers=["CPUExecutionProvider"])
    return s.run(None, {"input": x})[0]


def float_inits(m):
    return [t for t in m.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]


def is_weight(t):
    return len(t.dims) >= 2


def set_init(t, a):
    t.CopyFrom(numpy_helper.from_array(a.astype(np.float32), t.name))


def save(m, path, external=False):
    if external:
        onnx.save(m, path, save_as_external_data=True, all_tensors_to_one_file=True,
                  location=os.path.basename(path) + ".data", size_threshold=0)
    else:
        onnx.save(m, path)
    return path


# ---------------------------------------------------------------- torch side

def torch_model(name, m):
    """The PyTorch module of fixtures/digits/train.py with the weights of ONNX model m."""
    sys.path.insert(0, DIGITS)
    import torch
    import train as T  # noqa: E402
    module = T.CONFIGS[name][0]()
    sd = module.state_dict()
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    for k in sd:
        if k in inits:
            sd[k] = torch.from_numpy(inits[k].copy())
        elif k.endswith(".weight") and k[:-len(".weight")] + ".weight_t" in inits:
            sd[k] = torch.from_numpy(inits[k[:-len(".weight")] + ".weight_t"].T.copy())
        elif not k.endswith("num_batches_tracked"):
            sys.exit(f"{name}: no ONNX initializer for {k}")
    module.load_state_dict(sd)
    return module


def write_back(module, m):
    """Model m with its initializers replaced by the module's parameters and buffers."""
    out = onnx.ModelProto()
    out.CopyFrom(m)
    sd = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    for t in out.graph.initializer:
        if t.name in sd:
            set_init(t, sd[t.name])
        elif t.name.endswith(".weight_t") and t.name[:-2] in sd:
            set_init(t, sd[t.name[:-2]].T)
    return out


def train_on(module, x, y, epochs, lr, seed, soft=None):
    import torch
    import torch.nn.functional as F
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=1e-4)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    st = None if soft is None else torch.from_numpy(soft)
    for _ in range(epochs):
        module.train()
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), 32):
            idx = perm[i:i + 32]
            out = module(xt[idx])
            if st is None:
                loss = F.cross_entropy(out, yt[idx])
            else:
                loss = F.kl_div(F.log_softmax(out, 1), F.softmax(st[idx], 1), reduction="batchmean")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    module.eval()
    return module


# ---------------------------------------------------------------- attacks

def attacks(name, copies, original, work, tx, ty):
    """(label, path of the attacked model, recipients whose marks it carries)."""
    m = onnx.load(copies[0])
    marked = [onnx.load(c) for c in copies]
    out = []

    out.append(("none", copies[0], RECIPIENTS[:1]))

    a = onnx.load(copies[0])
    for t in float_inits(a):
        set_init(t, numpy_helper.to_array(t).astype(np.float16).astype(np.float32))
    out.append(("fp16", save(a, os.path.join(work, "fp16.onnx")), RECIPIENTS[:1]))

    out.append(("onnx-resave", save(onnx.load(copies[0]), os.path.join(work, "resave.onnx"), external=True),
                RECIPIENTS[:1]))

    from onnxruntime.quantization import QuantType, quantize_dynamic
    for label, per_channel in [("int8-dynamic", False), ("int8-per-chan", True)]:
        q = os.path.join(work, f"{label}.onnx")
        quantize_dynamic(copies[0], q, weight_type=QuantType.QInt8, per_channel=per_channel)
        out.append((label, q, RECIPIENTS[:1]))

    a = onnx.load(copies[0])
    for t in float_inits(a):
        if is_weight(t):
            w = numpy_helper.to_array(t).copy()
            w[np.abs(w) <= np.quantile(np.abs(w), 0.10)] = 0.0
            set_init(t, w)
    out.append(("prune-10%", save(a, os.path.join(work, "prune.onnx")), RECIPIENTS[:1]))

    x_tr, y_tr = tx
    rng = np.random.default_rng(0)
    few = rng.choice(len(x_tr), len(x_tr) // 10, replace=False)
    ft = train_on(torch_model(name, m), x_tr[few], y_tr[few], epochs=1, lr=1e-3, seed=0)
    out.append(("finetune-1ep", save(write_back(ft, m), os.path.join(work, "ft1.onnx")), RECIPIENTS[:1]))
    ft = train_on(torch_model(name, m), x_tr, y_tr, epochs=30, lr=3e-3, seed=0)
    out.append(("finetune-heavy", save(write_back(ft, m), os.path.join(work, "ftheavy.onnx")), RECIPIENTS[:1]))

    def mean_of(k, noise=0.0):
        a = onnx.load(copies[0])
        orig = {t.name: numpy_helper.to_array(t) for t in float_inits(original)}
        for i, t in enumerate(float_inits(a)):
            w = np.mean([numpy_helper.to_array(float_inits(c)[i]) for c in marked[:k]], axis=0)
            if noise and orig[t.name].size > 1:
                w = w + rng.normal(0.0, noise * ALPHA * orig[t.name].std(), w.shape)
            set_init(t, w)
        return a

    for k in (2, 3, 5):
        out.append((f"collude-{k}", save(mean_of(k), os.path.join(work, f"collude{k}.onnx")), RECIPIENTS[:k]))
    out.append(("collude-5+noise", save(mean_of(5, noise=4.0), os.path.join(work, "collude5n.onnx")),
                RECIPIENTS[:5]))

    import torch
    fresh_seed = 1
    torch.manual_seed(fresh_seed)
    sys.path.insert(0, DIGITS)
    import train as T  # noqa: E402
    student = T.CONFIGS[name][0]()
    soft = predict(copies[0], x_tr)
    student = train_on(student, x_tr, y_tr, epochs=T.CONFIGS[name][1] // 2, lr=2e-3, seed=fresh_seed, soft=soft)
    out.append(("distill", save(write_back(student, m), os.path.join(work, "distill.onnx")), RECIPIENTS[:1]))
    return out


def trace(bin_, suspect, ledger, secret, original):
    p = sh([bin_, "trace", suspect, "--ledger", ledger, "--fingerprint-secret", secret, "--original", original,
            "--json"], ok=(0, 9))
    return json.loads(p.stdout)


def acc(path, x, y):
    try:
        return float((predict(path, x).argmax(1) == y).mean())
    except Exception as e:  # a runtime without the quantised kernels
        return f"n/a ({type(e).__name__})"


def run_model(bin_, name, work):
    x_tr, y_tr, x_te, y_te = data()
    x_all = np.concatenate([x_tr, x_te])
    y_all = np.concatenate([y_tr, y_te])
    original = os.path.join(DIGITS, f"{name}.onnx")
    secret, key, ledger = (os.path.join(work, n) for n in ("fp.secret", "k.key", "ledger.txt"))
    sh([bin_, "keygen", "--fingerprint-secret", "-o", secret, "-q"])
    sh([bin_, "keygen", "-o", key, "-q"])
    copies = []
    for i, r in enumerate(RECIPIENTS):
        enc = os.path.join(work, f"{r}.protected.onnx")
        sh([bin_, "encrypt", original, "-o", enc, "--key-file", key, "--fingerprint", r,
            "--fingerprint-secret", secret, "--ledger", ledger, "--fingerprint-strength", str(ALPHA), "-q"])
        if i < 5:
            dec = os.path.join(work, f"{r}.onnx")
            sh([bin_, "decrypt", enc, "-o", dec, "--key-file", key, "-q"])
            copies.append(dec)
        os.remove(enc)

    base_te, base_all = predict(original, x_te).argmax(1), predict(original, x_all).argmax(1)
    res = {"model": name, "alpha": ALPHA, "accuracy": {
        "original_test": float((base_te == y_te).mean()), "original_all": float((base_all == y_all).mean()),
        "copies": []}}
    for c in copies:
        p_te, p_all = predict(c, x_te).argmax(1), predict(c, x_all).argmax(1)
        res["accuracy"]["copies"].append({
            "test": float((p_te == y_te).mean()), "all": float((p_all == y_all).mean()),
            "same_class": float((p_all == base_all).mean())})
    cs = res["accuracy"]["copies"]
    res["accuracy"]["max_change_points_test"] = 100 * max(abs(c["test"] - res["accuracy"]["original_test"]) for c in cs)
    res["accuracy"]["max_change_points_all"] = 100 * max(abs(c["all"] - res["accuracy"]["original_all"]) for c in cs)
    res["accuracy"]["min_same_class"] = min(c["same_class"] for c in cs)

    res["attacks"] = []
    for label, path, guilty in ([] if not ATTACKS else attacks(name, copies, onnx.load(original), work, (x_tr, y_tr), None)):
        t = trace(bin_, path, ledger, secret, original)
        scores = {s["recipient"]: s["z"] for s in t["scores"]}
        innocent = max(z for r, z in scores.items() if r not in guilty)
        named = [m["recipient"] for m in t["matches"]]
        res["attacks"].append({
            "attack": label, "test_acc": acc(path, x_te, y_te),
            "z_guilty": [round(scores[g], 2) for g in guilty], "z_best_innocent": round(innocent, 2),
            "threshold": round(t["threshold"], 2), "named": named,
            "false_match": any(n not in guilty for n in named),
            "tensors": f'{t["tensors"]["matched"]}/{t["tensors"]["planned"]}'})
    return res


def main():
    global ALPHA, ATTACKS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "debug", "onnx-protect"))
    ap.add_argument("--models", nargs="+", default=["cnn", "mlp", "convmixer", "vit"])
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--alpha", type=float, default=ALPHA, help=f"fingerprint strength (default {ALPHA})")
    ap.add_argument("--accuracy-only", action="store_true", help="measure the copies' accuracy, no attacks")
    a = ap.parse_args()
    ALPHA, ATTACKS = a.alpha, not a.accuracy_only
    results = []
    for name in a.models:
        with tempfile.TemporaryDirectory() as work:
            r = run_model(a.bin, name, work)
        results.append(r)
        ac = r["accuracy"]
        print(f"\n{name}: test accuracy {ac['original_test']:.4f}; copies (alpha {ALPHA}): max change "
              f"{ac['max_change_points_test']:.2f} points on test, {ac['max_change_points_all']:.2f} on all "
              f"1797 images; same class for >= {100 * ac['min_same_class']:.2f}% of images")
        print(f"  {'attack':<16} {'test acc':>9} {'z guilty':>24} {'best innocent':>14} {'named':>18} tensors")
        for x in r["attacks"]:
            ta = f"{x['test_acc']:.4f}" if isinstance(x["test_acc"], float) else x["test_acc"]
            zg = ",".join(f"{z:.1f}" for z in x["z_guilty"])
            named = ",".join(x["named"]) or "none"
            flag = "  FALSE MATCH" if x["false_match"] else ""
            print(f"  {x['attack']:<16} {ta:>9} {zg:>24} {x['z_best_innocent']:>14.2f} {named:>18} "
                  f"{x['tensors']}{flag}")
        sys.stdout.flush()
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
