"""The policy search of :mod:`onnx_protect.assess`: the cheapest of a fixed list of
policies whose training attacks stay within the target on the user's model and data
(docs/protection.md). Imported into :mod:`onnx_protect.assess`, whose names these are;
the attacks are looked up there when a search runs."""
from __future__ import annotations

import os
import tempfile
from typing import Any, Callable, Sequence

from . import assess as _assess

# Candidate policies, cheapest first (docs/policy.md). Each is TOML for `encrypt --policy`.
_ROLES_ALL = ("weight", "recurrent", "embedding", "bias", "norm", "position-embedding", "scale", "other")
_ROLES_MAIN = ("weight", "recurrent", "embedding")
_ROLES_SMALL = ("bias", "norm", "position-embedding", "scale")


def policy_toml(point: str) -> str:
    """The TOML of a search point: parts joined by ``+``, each adding whole tensors
    (``ctr``) to what the others encrypt:

    * ``first``, ``last``: that layer (docs/policy.md: its nodes' main and bias weights);
    * ``small``: biases, normalisation parameters, position embeddings and scales;
    * a role name (``norm``, ``bias``, ``position-embedding``, ``scale``, ``weight``,
      ``recurrent``, ``embedding``): every constant of that role;
    * an operator type (``MatMul``, ``Conv``, ``LSTM``): every weight it reads;
    * a number (``0.25``): that share of every main weight's rows, largest L1 first;
    * ``weights``: every main weight (roles ``weight``, ``recurrent``, ``embedding``);
    * ``all``: every floating-point constant.

    ``builtin`` alone is the built-in policy. An unknown part raises :class:`AttackError`."""
    if point == "builtin":
        return "version = 1\n"
    parts = point.split("+")
    text = 'version = 1\ninherit_builtin = false\n\n[defaults]\nmode = "ctr"\n'
    roles: dict[str, float] = {}
    ops: list[str] = []
    share = None
    for p in parts:
        if p == "all":
            roles.update({r: 1.0 for r in _ROLES_ALL})
        elif p == "small":
            roles.update({r: 1.0 for r in _ROLES_SMALL})
        elif p == "weights":
            roles.update({r: 1.0 for r in _ROLES_MAIN})
        elif p in _ROLES_ALL:
            roles[p] = 1.0
        elif p.replace(".", "", 1).isdigit() and 0 < float(p) < 1:
            share = float(p)
        elif p[:1].isupper() and p.isalnum():
            ops.append(p)
        elif p not in ("first", "last"):
            raise _assess.AttackError(f"unknown policy point part {p!r} in {point!r}")
    if share is not None:
        for r in _ROLES_MAIN:
            roles.setdefault(r, share)
    for r, c in roles.items():
        extra = '\nselection = "l1"' if c < 1 else ""
        text += f"\n[roles.{r}]\ncoefficient = {c}{extra}\n"
    for op in ops:
        text += f"\n[ops.{op}]\ncoefficient = 1.0\n"
    for layer in ("first", "last"):
        if layer in parts:
            text += f"\n[layers.{layer}]\ncoefficient = 1.0\n"
    return text


# The search's candidates. Which is cheapest depends on the model (the first layer of an
# MLP is most of it): plan() orders them by the share they encrypt.
SEARCH = ("first", "last", "last+first", "last+first+norm", "last+first+small", "last+first+small+0.25",
          "last+first+small+0.5", "weights", "all")


def plan(model: str | os.PathLike, points: Sequence[str], directory: str | os.PathLike, key=None,
         ) -> list[dict[str, Any]]:
    """Encrypts the plain ``model`` with each point (``key``, or a throwaway one) into
    ``directory`` and returns them cheapest first: dicts with ``point``, ``path`` (the
    protected copy), ``share`` (of the weight bytes) and ``same`` (later points that
    encrypt exactly the same spans, left out of the list). A point that encrypts nothing
    is left out."""
    from . import encrypt, inspect, new_key

    key = key if key is not None else new_key()
    by_spans: dict[tuple, dict[str, Any]] = {}
    for i, point in enumerate(points):
        pol = os.path.join(directory, f"policy-{i}.toml")
        with open(pol, "w") as f:
            f.write(policy_toml(point))
        out = os.path.join(directory, f"protected-{i}.onnx")
        if os.path.exists(out):
            os.remove(out)
        encrypt(model, out, key=key, policy=pol, allow_empty=True)
        info = inspect(out)
        tensors = (info.get("protection") or {}).get("tensors", [])
        spans = tuple(sorted((t["locator"], tuple(map(tuple, t["spans"]))) for t in tensors))
        if not spans:
            continue
        if spans in by_spans:
            by_spans[spans]["same"].append(point)
            continue
        by_spans[spans] = {"point": point, "path": out, "share": _assess.weight_share(info), "same": []}
    return sorted(by_spans.values(), key=lambda p: p["share"])


def policy_search(model: str | os.PathLike, x, y, x_test, y_test, *, points: Sequence[str] = SEARCH,
                  target: float = _assess.TARGET, seeds: int = _assess.SEEDS, screen_seeds: int = 1,
                  max_seeds: int = _assess.MAX_SEEDS, lr_choice: str = "best",
                  recipes: Sequence[str] = _assess.RECIPES, progress: Callable[[str], None] | None = None,
                  **kwargs) -> dict[str, Any]:
    """Encrypts the plain ``model`` with each search point (a throwaway key) and attacks
    them cheapest first (:func:`plan`) in two passes, every run (attacks and scratch)
    trained at each rate with each of ``recipes`` and kept at its best test accuracy
    (``lr_choice``, ``assess.attack_masks``; both passes alike, the screening's runs
    reused):

    * screening: ``assess.attack`` with ``screen_seeds`` draws per data size, stopping at
      the first size whose gap is above the target;
    * confirmation, only for a point that holds in screening: ``seeds`` draws (the
      screening's runs are kept, not run again). The point holds when the upper bound of
      its gap (``assess.upper_bound``, one-sided 95%, at every data size) is at most the
      target, and fails when its mean gap is above it; in between, the draws cannot tell,
      and the point gets ``assess.MORE_SEEDS`` more draws, up to ``max_seeds``, where a
      point still undecided fails (``undecided`` in its report). With ``seeds=1`` there is
      no spread to bound: the mean decides.

    The first point confirmed is chosen. Returns every point's last report (``stage``:
    ``screening`` or ``confirmation``; a point that failed confirmation is followed by
    the next) and that point (``chosen``, ``None`` if none holds)."""
    if seeds < 1 or screen_seeds < 1:
        raise _assess.AttackError("seeds and screen_seeds must be at least 1")
    screen_seeds = min(screen_seeds, seeds)
    max_seeds = max(max_seeds, seeds)
    results = []
    chosen = None
    kwargs.setdefault("scratch_cache", {})
    kwargs.update(lr_choice=lr_choice, recipes=tuple(recipes))
    with tempfile.TemporaryDirectory(prefix="onnx-protect-search-") as d:
        for p in plan(model, points, d):
            point = p["point"]
            runs: dict = {}
            r = _assess.attack(p["path"], x, y, x_test, y_test, target=target, seeds=screen_seeds,
                               run_cache=runs, stop_early=True, progress=progress, **kwargs)
            r["stage"] = "screening"
            n = seeds
            while r["holds"]:
                bound = r.get("bound")
                if r["seeds"] < n:
                    if progress:
                        progress(f"{point}: gap {100 * r['gap']:+.1f} points at {r['seeds']} draw(s)"
                                 f"{'' if bound is None else f', bound {100 * bound:+.1f}'}: confirming at {n}")
                    r = _assess.attack(p["path"], x, y, x_test, y_test, target=target, seeds=n,
                                       run_cache=runs, progress=progress, **kwargs)
                    r["stage"] = "confirmation"
                elif bound is not None and bound > target and n < max_seeds:
                    n = min(n + _assess.MORE_SEEDS, max_seeds)
                elif bound is not None and bound > target:
                    r.update(holds=False, undecided=True)
                else:
                    break
            r.update(point=point, same=p["same"], policy=policy_toml(point))
            results.append(r)
            if progress:
                progress(f"{point}: share {100 * r['share']:.1f}%, gap {100 * r['gap']:+.1f} points ({r['stage']})")
            if r["holds"]:
                chosen = point
                break
    return {"chosen": chosen, "points": results, "target": target, "seeds": seeds, "screen_seeds": screen_seeds,
            "max_seeds": max_seeds}
