"""The search's recommendation on one zoo model and its re-check by the independent
attacks of tests/python/test_assess_recheck.py, printed as a row of docs/protection.md's
re-check table (recommended point and share, the search's gap and bound at its last
draws, the re-check's gap per draw and mean, whether it holds, the time of both).

    python3 scripts/eval_recheck.py gru [--json out.json]
    python3 scripts/eval_recheck.py vit --point all     # the re-check of one point alone

The same computation as the test (its search budget, its draws, one thread). Needs torch
and the test dependencies (tests/requirements.txt).
"""
import argparse
import json
import pathlib
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))

import test_assess_recheck as recheck_test  # noqa: E402
from onnx_protect import assess  # noqa: E402

# family id -> (zoo model, module): the test's families.
MODELS = {p.id: tuple(p.values) for p in recheck_test.FAMILIES}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("family", choices=sorted(MODELS))
    ap.add_argument("--json", help="write the search's report and the re-check's runs here")
    ap.add_argument("--point", help="re-check this search point (assess.SEARCH's names) without searching")
    args = ap.parse_args()
    torch.set_num_threads(1)
    name, cls = MODELS[args.family]
    model, data = recheck_test.splits(name)
    start = time.perf_counter()
    if args.point:
        with tempfile.TemporaryDirectory() as d:
            gaps, runs = recheck_test.recheck(model, cls, assess.policy_toml(args.point), data, pathlib.Path(d))
        print(f"{name} `{args.point}`: re-check gaps {' / '.join(f'{100 * g:+.1f}' for g in gaps)}, mean "
              f"{100 * float(np.mean(gaps)):+.1f}, {time.perf_counter() - start:.0f} s; per draw {runs}")
        return 0
    r = assess.policy_search(model, *data, progress=lambda s: print(s, file=sys.stderr, flush=True),
                             **recheck_test.SEARCH_BUDGET)
    if r["chosen"] is None:
        print(f"{name}: no point recommended", [(p["point"], p["gap"]) for p in r["points"]])
        return 1
    final = r["points"][-1]
    with tempfile.TemporaryDirectory() as d:
        gaps, runs = recheck_test.recheck(model, cls, final["policy"], data, pathlib.Path(d))
    seconds = time.perf_counter() - start
    mean = float(np.mean(gaps))
    pts = lambda v: f"{100 * v:+.1f}"  # noqa: E731
    print(f"| {name} | `{r['chosen']}` ({100 * final['share']:.1f}%) | {pts(final['gap'])} "
          f"(bound {pts(final['bound'])}, {final['seeds']} draws) | {' / '.join(pts(g) for g in gaps)} | {pts(mean)} | "
          f"{'yes' if mean <= r['target'] else '**no**'} | {seconds:.0f} s |")
    refused = [(p["point"], round(100 * p["share"], 1), pts(p["gap"]), p["bound"] and pts(p["bound"]), p["seeds"],
                p.get("undecided", False)) for p in r["points"][:-1]]
    print("refused before it (point, share %, gap, bound, draws, undecided):", refused)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"search": r, "recheck": {"gaps": gaps, "runs": runs}},
                                                      indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
