"""The training attacks of ``onnx_protect.assess`` on the small ViT of fixtures/zoo.

Encrypting only the last layer (the policy ``last``, the classifier head) leaves a
trained feature extractor in clear: re-learning the head alone, everything else frozen
(linear probing), from 63 labelled images beats training the same graph from scratch
by far. Encrypting the first and the last layer (``last+first``) leaves the attention
blocks clear: the best of re-learning and fine-tuning still beats scratch by far
(docs/protection.md#training-attacks). The built-in policy encrypts every weight whole,
the one-element attention scale included: the attacks then start where scratch starts
and gain nothing over it.

Small budgets on fixed seeds so that the file runs in about two minutes on one core: one
data size (5% of the training split, 63 images), two draws, 150 steps, one learning
rate; scratch runs are shared by the tests. The margins below are wide against that
budget's noise (docs/protection.md has the full study's gaps).
"""
import pathlib

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the training attacks need torch (tests/requirements.txt)")
onnx = pytest.importorskip("onnx", reason="the training attacks need onnx (tests/requirements.txt)")

import onnx_protect  # noqa: E402
from onnx_protect import assess  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODEL = ROOT / "fixtures" / "zoo" / "digits" / "vit.onnx"
DIGITS = ROOT / "fixtures" / "digits"
BUDGET = dict(sizes=(0.05,), seeds=2, steps=150, lrs=(3e-3,))


@pytest.fixture(scope="module")
def data():
    return [np.load(DIGITS / f"{n}.npy") for n in ("train_x", "train_y", "test_x", "test_y")]


@pytest.fixture(scope="module")
def scratch():
    """Scratch runs are shared by both protected copies (they do not depend on the key)."""
    return {}


def protect(tmp_path, policy_point=None):
    out = tmp_path / "vit.enc.onnx"
    kwargs = {}
    if policy_point:
        pol = tmp_path / "policy.toml"
        pol.write_text(assess.policy_toml(policy_point))
        kwargs["policy"] = pol
    if policy_point:
        # encrypt warns: a vision transformer with most of its weights clear.
        with pytest.warns(UserWarning, match="vision transformer"):
            onnx_protect.encrypt(MODEL, out, key=onnx_protect.new_key(), **kwargs)
    else:
        onnx_protect.encrypt(MODEL, out, key=onnx_protect.new_key(), **kwargs)
    return out


def test_relearning_the_head_alone_recovers_a_vit_whose_head_only_is_encrypted(tmp_path, data, scratch):
    r = assess.attack(protect(tmp_path, "last"), *data, attacks=("relearn",), scratch_cache=scratch, **BUDGET)
    assert r["share"] < 0.02, r["share"]
    row = r["sizes"][0]
    # Only the head trains (every clear weight frozen): the frozen features carry the model.
    assert float(np.mean(row["relearn"])) - float(np.mean(row["scratch"])) > 0.30, row
    assert min(row["relearn"]) > max(row["scratch"]), row
    assert max(row["start"]) < 0.3, row
    assert r["gap"] > 0.30 and not r["holds"], r["gap"]


def test_relearning_recovers_a_vit_with_only_its_end_layers_encrypted(tmp_path, data, scratch):
    r = assess.attack(protect(tmp_path, "last+first"), *data, scratch_cache=scratch, **BUDGET)
    assert r["share"] < 0.05, r["share"]
    row = r["sizes"][0]
    best = max(float(np.mean(row[a])) for a in ("relearn", "finetune"))
    base = float(np.mean(row["scratch"]))
    # The attacks work: the best is far above scratch, and the headline says the policy fails.
    assert best - base > 0.08, row
    assert r["gap"] > 0.08 and not r["holds"], r["gap"]
    assert row["reused"] == [], row


def test_the_built_in_policy_leaves_the_attacks_nothing_over_scratch(tmp_path, data, scratch):
    r = assess.attack(protect(tmp_path), *data, scratch_cache=scratch, **dict(BUDGET, seeds=1))
    assert r["share"] == 1.0, r["share"]
    row = r["sizes"][0]
    # The encrypted attention scale is unknown to scratch too: scratch is not handicapped
    # by a scale read from the ciphertext (it learns as well as the attacks do).
    assert float(np.mean(row["scratch"])) > 0.3, row
    assert r["gap"] <= assess.TARGET and r["holds"], row
    # Every weight encrypted: the attacks start from scratch's state, so its run is reused.
    assert row["reused"] == ["relearn", "finetune"], row


def test_a_reused_run_is_the_run_it_replaces(tmp_path, data, monkeypatch):
    """The attacks' runs reused from scratch's (same start state) give what running them gives."""
    enc = protect(tmp_path)
    small = dict(sizes=(0.02,), seeds=1, steps=20, lrs=(3e-3,))
    reused = assess.attack(enc, *data, **small)
    monkeypatch.setattr(assess, "start_state", lambda *a, **k: None)
    ran = assess.attack(enc, *data, **small)
    assert reused["sizes"][0]["reused"] == ["relearn", "finetune"] and ran["sizes"][0]["reused"] == []
    for name in ("scratch", "relearn", "finetune"):
        assert reused["sizes"][0][name] == ran["sizes"][0][name], name


def test_the_search_tries_the_cheapest_points_first_and_stops_at_the_first_that_holds(data):
    """Order and stopping only: a budget of a few steps, targets that every point meets or none."""
    mlp = ROOT / "fixtures" / "zoo" / "digits" / "mlp.onnx"
    tiny = dict(sizes=(0.02,), seeds=1, steps=3, lrs=(3e-3,))
    every = assess.policy_search(mlp, *data, target=1.0, **tiny)
    # The MLP's first layer is half of its bytes: its last layer alone is the cheapest point.
    assert every["chosen"] == "last" and [p["point"] for p in every["points"]] == ["last"], every["chosen"]
    assert every["points"][0]["share"] < 0.05
    none = assess.policy_search(mlp, *data, target=-1.0, **tiny)
    assert none["chosen"] is None
    points = [p["point"] for p in none["points"]]
    shares = [p["share"] for p in none["points"]]
    assert points[:3] == ["last", "first", "last+first"] and points[-1] == "all", points
    assert shares == sorted(shares) and len(set(shares)) == len(shares), shares
    # A point that encrypts the same spans as a cheaper one is not run again.
    same = {q: p["point"] for p in none["points"] for q in p["same"]}
    assert same == {"last+first+norm": "last+first"}, same
    assert set(points) | set(same) == set(assess.SEARCH)


def test_the_attacks_run_on_a_gru_whose_encrypted_initial_state_is_reset_to_zero(tmp_path):
    """The built-in policy encrypts the zero scalar the GRU's initial state is expanded from."""
    vowels = ROOT / "fixtures" / "zoo" / "vowels"
    x, y, xt, yt = (np.load(vowels / f"{n}.npy") for n in ("train_x", "train_y", "test_x", "test_y"))
    out = tmp_path / "gru.enc.onnx"
    onnx_protect.encrypt(vowels / "gru.onnx", out, key=onnx_protect.new_key())
    info = onnx_protect.inspect(out)
    scalars = [t["locator"] for t in info["protection"]["tensors"] if t["nbytes"] == 4]
    assert scalars, info["protection"]["tensors"]
    model = onnx.load(out)
    graph = assess.tg.TorchGraph(model, trainable=frozenset(scalars))
    for loc in scalars:
        assert ("GRU", 5) in graph.constants[loc].users, graph.constants[loc].users
        reset = assess.default_init(graph, {}, loc, torch.Generator().manual_seed(0))
        assert float(reset) == 0.0
    r = assess.attack(out, x, y, xt, yt, sizes=(0.05,), seeds=1, steps=3, lrs=(3e-3,))
    assert r["share"] == 1.0 and r["sizes"][0]["reused"] == ["relearn", "finetune"], r["sizes"][0]
