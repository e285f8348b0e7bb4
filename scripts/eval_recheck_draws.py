"""The gap of one search point on one vowels model at many draws, by both implementations
of the attacks: the re-check of tests/python/test_assess_recheck.py (PyTorch modules, its
own draws) and the search's (`onnx_protect.assess.attack`, `lr_choice="best"`, both
recipes), each the mean and standard deviation of its per-draw gaps (the better of finetune
and relearn minus scratch, for both).

    python3 scripts/eval_recheck_draws.py gru last+first [--draws 12] [--only recheck|search]
    python3 scripts/eval_recheck_draws.py gru last+first --paired [--draws 2]

The re-check's test decides at 3 draws (a mean gap of at most 2 points holds); this shows
how far 3 draws are from the mean of many on a model whose per-draw gaps spread widely.

``--paired`` compares the two implementations on the same computation instead: per draw of
the search (its samples and its reset), scratch (the architecture, no BatchNorm added) and
each attack start from the same weights and train on the same samples with the re-check's
recipe (Adam at a constant rate, 200 steps, every step on the whole draw) in the
re-check's PyTorch module and in the search's ONNX interpreter; it prints both test
accuracies of each training. Needs torch and the test dependencies (tests/requirements.txt).
"""
import argparse
import pathlib
import sys
import tempfile
import warnings

import numpy as np
import onnx
import torch
from onnx import numpy_helper

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))

import test_assess_recheck as recheck_test  # noqa: E402
import onnx_protect  # noqa: E402
from onnx_protect import _torch_graph as tg  # noqa: E402
from onnx_protect import assess  # noqa: E402

MODELS = {"mlp": recheck_test.MLP, "cnn": recheck_test.CNN, "gru": recheck_test.GRU, "vit": recheck_test.ViT}


def summary(name, gaps, runs):
    g = 100 * np.array(gaps)
    mean = {k: 100 * float(np.mean([r[k] for r in runs])) for k in ("scratch", "finetune", "relearn")}
    print(f"{name}: {len(g)} draws, gap mean {g.mean():+.1f} points (sd {g.std(ddof=1):.1f}, "
          f"standard error {g.std(ddof=1) / np.sqrt(len(g)):.1f}); mean accuracy scratch {mean['scratch']:.1f}%, "
          f"finetune {mean['finetune']:.1f}%, relearn {mean['relearn']:.1f}%; per draw {', '.join(f'{x:+.1f}' for x in g)}")


def paired(model, cls, policy, data, d, draws):
    """Both implementations from the same start on the same samples (module docs)."""
    key = onnx_protect.new_key()
    (d / "paired.toml").write_text(policy)
    enc, dec = d / "paired.onnx", d / "paired-dec.onnx"
    onnx_protect.encrypt(model, enc, key=key, policy=d / "paired.toml")
    onnx_protect.decrypt(enc, dec, key=key)
    info, decrypted, protected = onnx_protect.inspect(enc), onnx.load(dec), onnx.load(enc)
    p = recheck_test.Protected(cls, decrypted, info)
    locators = frozenset(t["locator"] for t in info["protection"]["tensors"])
    masks = assess.encrypted_masks(info, tg.TorchGraph(protected, trainable=locators))
    setup = assess.Setup(protected, masks, batchnorm=False)
    stored = {t.name: numpy_helper.to_array(t) for t in decrypted.graph.initializer}
    x, y, xt, yt = data
    fraction = recheck_test.SEARCH_BUDGET["sizes"][0]
    diffs = []
    for s in range(draws):
        idx = assess.draw(y, fraction, np.random.default_rng(1_000 + s))
        for kind in ("scratch", "relearn", "finetune"):
            row = []
            for lr in recheck_test.LRS:
                gen = torch.Generator().manual_seed(assess.RESET_SEED_BASE + s)
                g = setup.scratch(gen) if kind == "scratch" else setup.reset(gen)
                # The interpreter's start as the module's weights (named as the file's initializers).
                arrays = {k: g.tensor(g.by_value[k]).detach().numpy().reshape(v.shape) if k in g.by_value else v
                          for k, v in stored.items()}
                weights, _ = recheck_test.module_arrays(decrypted, arrays, p.keys)
                net = cls()
                net.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in weights.items()})
                recheck_test.fit(net, torch.from_numpy(x[idx]).float(), torch.from_numpy(y[idx]), lr,
                                 masks=p.masks if kind == "relearn" else None)
                a_module = recheck_test.accuracy(net, torch.from_numpy(xt).float(), torch.from_numpy(yt))
                params = assess._relearn_only(g, masks) if kind == "relearn" else list(g.params.values())
                assess.train(g, params, x[idx], y[idx], lr, recheck_test.STEPS, seed=s, recipe="constant")
                a_graph = assess.accuracy(g, xt, yt)
                diffs.append(a_graph - a_module)
                row.append(f"{lr:g}: {100 * a_module:.1f} / {100 * a_graph:.1f}")
            print(f"draw {s} ({len(idx)} samples) {kind}: module / interpreter %, " + "; ".join(row), flush=True)
    d_abs = 100 * np.abs(diffs)
    print(f"paired: {int(np.sum(d_abs < 0.05))} of {len(diffs)} trainings at the same test accuracy, "
          f"largest difference {d_abs.max():.1f} points, mean difference (interpreter - module) "
          f"{100 * np.mean(diffs):+.2f} points")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", choices=sorted(MODELS))
    ap.add_argument("point", help="a search point (assess.SEARCH), e.g. last+first")
    ap.add_argument("--draws", type=int, default=12)
    ap.add_argument("--only", choices=("recheck", "search"))
    ap.add_argument("--paired", action="store_true",
                    help="both implementations from the same start on the same draw (module docs)")
    a = ap.parse_args()
    if a.draws < (1 if a.paired else 2):
        raise SystemExit(f"error: --draws must be at least {1 if a.paired else 2}")
    if a.point not in assess.SEARCH:
        raise SystemExit(f"error: unknown point {a.point!r}; points: {', '.join(assess.SEARCH)}")
    torch.set_num_threads(1)
    model = recheck_test.VOWELS / f"{a.model}.onnx"
    data = [np.load(recheck_test.VOWELS / f"{n}.npy") for n in ("train_x", "train_y", "test_x", "test_y")]
    policy = assess.policy_toml(a.point)
    with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if a.paired:
            paired(model, MODELS[a.model], policy, data, pathlib.Path(d), a.draws)
            return
        if a.only != "search":
            gaps, runs = recheck_test.recheck(model, MODELS[a.model], policy, data, pathlib.Path(d), draws=a.draws)
            summary("re-check", gaps, runs)
        if a.only != "recheck":
            enc = pathlib.Path(d) / "search.onnx"
            import onnx_protect

            (pathlib.Path(d) / "search.toml").write_text(policy)
            onnx_protect.encrypt(model, enc, key=onnx_protect.new_key(), policy=pathlib.Path(d) / "search.toml")
            r = assess.attack(enc, *data, sizes=recheck_test.SEARCH_BUDGET["sizes"], seeds=a.draws, lr_choice="best",
                              recipes=assess.RECIPES, stop_early=False)
            row = r["sizes"][0]
            runs = [{k: row[k][s] for k in ("scratch", "finetune", "relearn")} for s in range(a.draws)]
            summary("search", [max(x["finetune"], x["relearn"]) - x["scratch"] for x in runs], runs)


if __name__ == "__main__":
    main()
