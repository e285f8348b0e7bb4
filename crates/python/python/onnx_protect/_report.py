"""The text report of :mod:`onnx_protect.assess`'s command line."""

from __future__ import annotations

import numpy as np


def summary(r: dict) -> str:
    """The report of :func:`onnx_protect.assess.attack` as the command line prints it."""
    r2 = r.get("metric") == "r2"
    unit = "" if r2 else "%"
    score = "scores: R² × 100, clipped at 0 (the targets' mean)" if r2 else f"test chance {100 * r['chance']:.1f}%"
    lines = [f"encrypted share {100 * r['share']:.2f}% of the weight bytes; {score}",
             f"scratch: {r['scratch_reference']}; every run's augmentation: {r['augmentation']}; "
             f"{r['seeds']} draw(s) per data size",
             f"every run: {'+'.join(r['recipes'])} at rates {', '.join(f'{lr:g}' for lr in r['lrs'])}, "
             + ("the best test accuracy kept" if r["lr_choice"] == "best"
                else "the one chosen on a held-out fifth of the draw retrained")]
    lines.append("data     samples  scratch  " + "  ".join(f"{a:>8}" for a in r["sizes"][0]["mean"]
                                                        if a not in ("scratch", "start")) + "  best-gap")
    for row in r["sizes"]:
        attacks = [a for a in row["mean"] if a not in ("scratch", "start")]
        lines.append(f"{row['fraction']:>5.0%}  {int(np.mean(row['samples'])):>8}  {100 * row['mean']['scratch']:6.1f}{unit}  "
                     + "  ".join(f"{100 * row['mean'][a]:7.1f}{unit}" for a in attacks)
                     + f"  {100 * row['gap']:+6.1f} ({row['best_attack']})")
    verdict = "holds" if r["holds"] else "does NOT hold"
    stopped = " (stopped at the first size over the target)" if r.get("stopped_early") else ""
    bound = r.get("bound")
    spread = "" if bound is None else f"; upper bound {100 * bound:+.1f} (one-sided 95%, {r['seeds']} draws)"
    lines.append(f"gap over scratch: {100 * r['gap']:+.1f} points at {r['worst_fraction']:.0%} of the data{spread}: "
                 f"the protection {verdict} (target: at most {100 * r['target']:.0f} points){stopped}")
    if r.get("undecided"):
        lines.append("the mean gap is under the target, its bound is not: the draws cannot tell, so it does not hold")
    elif r["holds"] and bound is not None and bound > r["target"]:
        lines.append("the mean gap is under the target, its bound is not: more draws (--seeds) would tell")
    return "\n".join(lines)
