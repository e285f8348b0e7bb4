"""The gap of one search point on one vowels model at many draws, by both implementations
of the attacks: the re-check of tests/python/test_assess_recheck.py (PyTorch modules, its
own draws) and the search's (`onnx_protect.assess.attack`, `lr_choice="best"`, both
recipes), each the mean and standard deviation of its per-draw gaps (the better of finetune
and relearn minus scratch, for both).

    python3 scripts/eval_recheck_draws.py gru last+first [--draws 12] [--only recheck|search]

The re-check's test decides at 3 draws (a mean gap of at most 2 points holds); this shows
how far 3 draws are from the mean of many on a model whose per-draw gaps spread widely.
Needs torch and the test dependencies (tests/requirements.txt).
"""
import argparse
import pathlib
import sys
import tempfile
import warnings

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))

import test_assess_recheck as recheck_test  # noqa: E402
from onnx_protect import assess  # noqa: E402

MODELS = {"mlp": recheck_test.MLP, "cnn": recheck_test.CNN, "gru": recheck_test.GRU, "vit": recheck_test.ViT}


def summary(name, gaps, runs):
    g = 100 * np.array(gaps)
    mean = {k: 100 * float(np.mean([r[k] for r in runs])) for k in ("scratch", "finetune", "relearn")}
    print(f"{name}: {len(g)} draws, gap mean {g.mean():+.1f} points (sd {g.std(ddof=1):.1f}, "
          f"standard error {g.std(ddof=1) / np.sqrt(len(g)):.1f}); mean accuracy scratch {mean['scratch']:.1f}%, "
          f"finetune {mean['finetune']:.1f}%, relearn {mean['relearn']:.1f}%; per draw {', '.join(f'{x:+.1f}' for x in g)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", choices=sorted(MODELS))
    ap.add_argument("point", help="a search point (assess.SEARCH), e.g. last+first")
    ap.add_argument("--draws", type=int, default=12)
    ap.add_argument("--only", choices=("recheck", "search"))
    a = ap.parse_args()
    if a.draws < 2:
        raise SystemExit("error: --draws must be at least 2")
    if a.point not in assess.SEARCH:
        raise SystemExit(f"error: unknown point {a.point!r}; points: {', '.join(assess.SEARCH)}")
    torch.set_num_threads(1)
    model = recheck_test.VOWELS / f"{a.model}.onnx"
    data = [np.load(recheck_test.VOWELS / f"{n}.npy") for n in ("train_x", "train_y", "test_x", "test_y")]
    policy = assess.policy_toml(a.point)
    with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
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
