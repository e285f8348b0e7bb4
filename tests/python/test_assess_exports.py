"""``onnx_protect.assess`` on models as ``torch.onnx.export(..., dynamo=False)`` writes
them, with a dynamic batch axis: a small vision transformer (GELU, a class token
concatenated to the patches, ``x.reshape(B, ...)``) and a small ResNet-style CNN whose
BatchNorm the export folds into its convolutions. The models are built and briefly
trained here (random init, a few steps on fixtures/digits); the attack budgets are a
few dozen steps, one data size, one draw: what is checked is that the attacks run and
what the report says, not a study's numbers (docs/protection.md#training-attacks).
"""
import json
import pathlib
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the training attacks need torch (tests/requirements.txt)")
onnx = pytest.importorskip("onnx", reason="the training attacks need onnx (tests/requirements.txt)")
ort = pytest.importorskip("onnxruntime", reason="the interpreter check needs onnxruntime")

import onnx_protect  # noqa: E402
from onnx import helper, numpy_helper, TensorProto  # noqa: E402
from onnx_protect import assess  # noqa: E402
from onnx_protect import _torch_graph as tg  # noqa: E402

nn = torch.nn
ROOT = pathlib.Path(__file__).resolve().parents[2]
DIGITS = ROOT / "fixtures" / "digits"
TINY = dict(sizes=(0.05,), seeds=1, steps=60, lrs=(1e-2,))


@pytest.fixture(scope="module")
def data():
    return [np.load(DIGITS / f"{n}.npy") for n in ("train_x", "train_y", "test_x", "test_y")]


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x):
        B, N, D = x.shape
        q, k, v = self.qkv(self.n1(x)).reshape(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        a = (q @ k.transpose(-2, -1) * (D // self.heads) ** -0.5).softmax(-1)
        x = x + self.proj((a @ v).transpose(1, 2).reshape(B, N, D))
        return x + self.mlp(self.n2(x))


class ViT(nn.Module):
    """4x4 patches of the 8x8 digits, a class token, two blocks."""

    def __init__(self, d=16):
        super().__init__()
        self.patch = nn.Conv2d(1, d, 4, 4)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.pos = nn.Parameter(torch.randn(1, 5, d) * 0.02)
        self.blocks = nn.Sequential(Block(d, 2), Block(d, 2))
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, 10)

    def forward(self, x):
        B = x.shape[0]
        x = self.patch(x).reshape(B, self.cls.shape[-1], -1).transpose(1, 2)
        x = torch.cat([self.cls.expand(B, -1, -1), x], 1) + self.pos
        return self.head(self.norm(self.blocks(x)[:, 0]))


class Residual(nn.Module):
    def __init__(self, c_in, c, stride):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(c_in, c, 3, stride, 1, bias=False), nn.BatchNorm2d(c)
        self.c2, self.b2 = nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c)
        self.down = None if stride == 1 and c_in == c else nn.Sequential(
            nn.Conv2d(c_in, c, 1, stride, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        out = self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))
        return torch.relu(out + (x if self.down is None else self.down(x)))


class ResNet(nn.Module):
    """A stem and two residual blocks (the second with a 1x1 downsampling): 6 Conv,
    each followed by a BatchNorm."""

    def __init__(self, w=8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.blocks = nn.Sequential(Residual(w, w, 1), Residual(w, 2 * w, 2))
        self.head = nn.Linear(2 * w, 10)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


def trained_export(net, data, path, opset=None, steps=30):
    """A few Adam steps on the digits (BatchNorm statistics move), then the exporter
    that folds BatchNorm in eval mode, with a dynamic batch axis."""
    torch.manual_seed(0)
    x, y = torch.from_numpy(data[0]), torch.from_numpy(data[1])
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    net.train()
    for i in range(steps):
        idx = torch.arange(i * 32, i * 32 + 32) % len(x)
        loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    kwargs = {} if opset is None else {"opset_version": opset}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's warnings about Python values
        torch.onnx.export(net, (x[:2],), str(path), dynamo=False, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, **kwargs)
    return path


def sensible(r):
    row = r["sizes"][0]
    for name in ("start", "scratch", "relearn", "finetune"):
        assert len(row[name]) == 1 and 0.0 <= row[name][0] <= 1.0, (name, row)
    assert r["gap"] == pytest.approx(row["gap"]) and row["samples"] == [60], row
    assert row["scratch"][0] > 0.2, row  # chance is 10%
    return row


# ---------------------------------------------------------------- the interpreter on 0-d constants


def scalar_graph():
    """x (B, 3, 4) -> (B, 12) through the ops that take or give 0-d tensors: a scalar
    Gather index on Shape, Unsqueeze, Concat into a Reshape target, a 0-d divisor, Range
    on scalars, ConstantOfShape of an empty shape (a 0-d tensor) whose empty Shape joins
    the Reshape target, Squeeze back to 0-d."""
    i64 = lambda name, v: numpy_helper.from_array(np.array(v, dtype=np.int64), name)  # noqa: E731
    inits = [i64("zero", 0), i64("two", 2), i64("one", 1), i64("minus_one", [-1]), i64("axes0", [0]),
             numpy_helper.from_array(np.array(1.4142135, dtype=np.float32), "divisor")]
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["batch"]),  # 0-d
        helper.make_node("Unsqueeze", ["batch", "axes0"], ["batch1"]),  # (1,)
        helper.make_node("Constant", [], ["empty"], value=numpy_helper.from_array(np.zeros(0, np.int64))),
        helper.make_node("ConstantOfShape", ["empty"], ["two_f"],
                         value=numpy_helper.from_array(np.array([2.0], np.float32))),  # 0-d
        helper.make_node("Shape", ["two_f"], ["no_dims"]),  # (0,)
        helper.make_node("Concat", ["batch1", "no_dims", "minus_one"], ["target"], axis=0),  # (2,)
        helper.make_node("Reshape", ["x", "target"], ["flat"]),
        helper.make_node("Div", ["flat", "divisor"], ["divided"]),
        helper.make_node("Gather", ["shape", "two"], ["last"]),  # 0-d: 4
        helper.make_node("Range", ["zero", "last", "one"], ["steps"]),  # (4,)
        helper.make_node("Cast", ["steps"], ["steps_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["steps_f"], ["total"], keepdims=0),  # 0-d: 6
        helper.make_node("Unsqueeze", ["total", "axes0"], ["total1"]),
        helper.make_node("Squeeze", ["total1", "axes0"], ["total0"]),  # 0-d again
        helper.make_node("Mul", ["divided", "two_f"], ["scaled"]),
        helper.make_node("Add", ["scaled", "total0"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "scalars", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 12])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("batch", [1, 5])
def test_the_interpreter_keeps_0d_constants_0d_as_onnxruntime_does(batch):
    model = scalar_graph()
    x = np.random.default_rng(0).standard_normal((batch, 3, 4)).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess.run(None, {"x": x})[0]
    assert want.shape == (batch, 12)
    g = tg.TorchGraph(model)
    assert g.fixed["zero"].dim() == 0 and g.fixed["divisor"].dim() == 0
    with torch.no_grad():
        got = g(torch.from_numpy(x)).numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert tg.check(model, x) <= 1e-6
    # An encrypted 0-d constant is a trainable parameter: still 0-d.
    assert assess.tg.TorchGraph(model, trainable=frozenset({"7.0/5.5"})).tensor("7.0/5.5").dim() == 0


def test_a_normalisation_statistic_shared_with_a_trained_bias_trains_as_onnxruntime_runs_it():
    """The TorchScript exporter merges equal initializers of a fresh model (torchvision's
    DenseNet: a BatchNormalization's zero running mean is another layer's zero bias, read
    through Identity): the graph trains (the statistic is not updated in place) and runs as
    onnxruntime runs it."""
    zeros, ones = np.zeros(4, np.float32), np.ones(4, np.float32)
    w = np.random.default_rng(0).standard_normal((4, 1, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Identity", ["b"], ["mean"]), helper.make_node("Identity", ["g"], ["var"]),
             helper.make_node("BatchNormalization", ["c", "g", "b", "mean", "var"], ["y"])]
    inits = [numpy_helper.from_array(a, n) for a, n in ((w, "w"), (zeros, "b"), (ones, "g"))]
    g = helper.make_graph(nodes, "shared", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    x = np.random.default_rng(1).standard_normal((5, 1, 8, 8)).astype(np.float32)
    assert tg.check(m, x) <= 1e-5
    graph = tg.TorchGraph(m).train()
    graph(torch.from_numpy(x)).sum().backward()
    assert graph.tensor("7.0/5.0").grad is not None and float(graph.tensor("7.0/5.1").abs().sum()) == 0.0


def test_an_input_the_interpreter_cannot_run_is_a_one_line_refusal_naming_the_node():
    # A rank-2 input: the Gather of dimension 2 of its shape has no such index.
    with pytest.raises(tg.Unsupported, match=r"cannot run a Gather node on inputs of shapes \(2,\), \(\): ") as e:
        tg.TorchGraph(scalar_graph())(torch.zeros(2, 5))
    assert "\n" not in str(e.value)


def test_the_check_compares_non_finite_outputs_by_position():
    model = scalar_graph()
    x = np.ones((2, 3, 4), np.float32)
    x[0, 0, 0] = np.inf
    # Same inf in both engines: checked on the finite rest.
    assert tg.check(model, x) <= 1e-6
    model.graph.initializer[5].CopyFrom(numpy_helper.from_array(np.array(0.0, np.float32), "divisor"))
    with pytest.raises(tg.Unsupported, match="no finite value"):
        tg.check(model, np.ones((2, 3, 4), np.float32))


def test_data_of_the_wrong_shape_is_a_one_line_error_and_exit_1(tmp_path, capsys):
    enc = tmp_path / "mlp.enc.onnx"
    onnx_protect.encrypt(ROOT / "fixtures" / "zoo" / "digits" / "mlp.onnx", enc, key=onnx_protect.new_key())
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((20, 1, 8, 9), np.float32), y=np.arange(20) % 10)
    assert assess.main([str(enc), "--data", str(bad), "--test", str(bad), "--steps", "2", "-q"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: onnxruntime cannot run the model on inputs of shape (20, 1, 8, 9)"), err
    assert err.count("\n") == 1 and "Traceback" not in err, err


def test_the_module_runs_as_the_docs_give_it(tmp_path, data):
    """`python3 -m onnx_protect.assess PROTECTED --data --test` (protection.md's command), in a
    fresh interpreter: a report and the verdict's exit code (0 holds, 3 not), no traceback."""
    import subprocess
    import sys
    enc = tmp_path / "mlp.enc.onnx"
    onnx_protect.encrypt(ROOT / "fixtures" / "zoo" / "digits" / "mlp.onnx", enc, key=onnx_protect.new_key())
    train, test = tmp_path / "train.npz", tmp_path / "test.npz"
    np.savez(train, x=data[0], y=data[1])
    np.savez(test, x=data[2], y=data[3])
    r = subprocess.run([sys.executable, "-m", "onnx_protect.assess", str(enc), "--data", str(train), "--test",
                        str(test), "--sizes", "0.05", "--seeds", "1", "--steps", "10"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode in (0, 3) and "gap over scratch" in r.stdout, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr


# ---------------------------------------------------------------- exported models under assess


def test_assess_runs_on_an_exported_vit_with_a_dynamic_batch_reshape(tmp_path, data):
    """The exporter's Gather of the batch size from Shape has a 0-d index; the batch
    size then goes through Unsqueeze and Concat into the Reshape of x.reshape(B, ...)."""
    plain = trained_export(ViT(), data, tmp_path / "vit.onnx")
    ops = {n.op_type for n in onnx.load(plain).graph.node}
    assert {"Gelu", "Concat", "Gather", "Shape", "Unsqueeze", "Reshape"} <= ops, ops
    enc = tmp_path / "vit.enc.onnx"
    onnx_protect.encrypt(plain, enc, key=onnx_protect.new_key())
    r = assess.attack(enc, *data, **TINY)
    row = sensible(r)
    assert r["share"] == 1.0 and r["scratch_reference"] == "exported graph, shift augmentation (up to 1 pixel)"
    assert r["reinserted_batchnorm"] == 0 and r["augmentation"] == "shifts of up to 1 pixel"
    # Every weight encrypted, scratch the exported graph: the attacks start from scratch's state.
    assert row["reused"] == ["relearn", "finetune"] and r["gap"] == 0.0 and r["holds"], row
    assert max(row["start"]) < 0.3, row


def test_the_interpreter_check_survives_the_built_in_policy_on_a_decomposed_gelu(tmp_path, data):
    """At opset 17 GELU is x * 0.5 * (1 + Erf(x / 1.4142)): the built-in policy encrypts
    the 0-d divisor; zero-filling it would make the check's reference x / 0. The check
    runs on the weights the attacks start from (the divisor reset to 1)."""
    plain = trained_export(ViT(), data, tmp_path / "vit17.onnx", opset=17)
    model = onnx.load(plain)
    divisors = [i for i, n in enumerate(model.graph.node) if n.op_type == "Constant"
                and numpy_helper.to_array(n.attribute[0].t).shape == ()
                and numpy_helper.to_array(n.attribute[0].t) == np.float32(1.4142135)]
    assert len(divisors) == 2, "one GELU divisor per block"
    enc = tmp_path / "vit17.enc.onnx"
    onnx_protect.encrypt(plain, enc, key=onnx_protect.new_key())
    info = onnx_protect.inspect(enc)
    encrypted = {t["locator"] for t in info["protection"]["tensors"]}
    assert {f"7.0/1.{i}/5.0/5.0" for i in divisors} <= encrypted
    # The hazard is real: with every encrypted element 0, the divisors too, 0 / 0 makes
    # onnxruntime's output NaN.
    zero = onnx.load(enc)
    for loc in encrypted:
        t = assess._tensor_at(zero, loc)
        t.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(t)), t.name))
    del zero.metadata_props[:]
    sess = ort.InferenceSession(zero.SerializeToString(), providers=["CPUExecutionProvider"])
    assert np.isnan(sess.run(None, {"x": data[2][:64]})[0]).all()
    r = assess.attack(enc, *data, **TINY)
    sensible(r)
    assert r["share"] == 1.0 and r["holds"], r["gap"]
    assert set(r["scalars"]) >= {f"7.0/1.{i}/5.0/5.0" for i in divisors}


def test_folded_batchnorm_is_found_after_convs_read_by_an_activation_or_a_residual_sum():
    def conv(name, x):
        return helper.make_node("Conv", [x, f"{name}_w"], [name], kernel_shape=[1, 1])

    nodes = [
        conv("c_relu", "x"), helper.make_node("Relu", ["c_relu"], ["r1"]),
        conv("c_bn", "r1"), helper.make_node("BatchNormalization", ["c_bn", "s", "b", "m", "v"], ["bn"]),
        helper.make_node("Relu", ["bn"], ["r2"]),
        conv("c_mixer", "r2"), helper.make_node("Gelu", ["c_mixer"], ["g"]),
        helper.make_node("BatchNormalization", ["g", "s", "b", "m", "v"], ["bn2"]),
        conv("c_res", "bn2"), helper.make_node("Add", ["c_res", "bn2"], ["sum"]),
        helper.make_node("Relu", ["sum"], ["r3"]),
        conv("c_out", "r3"), helper.make_node("Flatten", ["c_out"], ["y"]),
    ]
    inits = [numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), f"{n}_w")
             for n in ("c_relu", "c_bn", "c_mixer", "c_res", "c_out")]
    inits += [numpy_helper.from_array(np.full(2, v, np.float32), n) for n, v in
              (("s", 1.0), ("b", 0.0), ("m", 0.0), ("v", 1.0))]
    graph = helper.make_graph(nodes, "convs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    # Conv->Relu and Conv->Add->Relu lost their norm; Conv->BatchNorm kept it; a ConvMixer's
    # Conv->Gelu->BatchNorm normalises after the activation; the last Conv feeds no activation.
    assert tg.folded_batchnorm_convs(model) == ["c_relu", "c_res"]


def test_scratch_gets_back_the_batchnorm_the_export_folded(tmp_path, data):
    plain = trained_export(ResNet(), data, tmp_path / "resnet.onnx")
    model = onnx.load(plain)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Conv") == 6 and "BatchNormalization" not in ops, ops
    enc = tmp_path / "resnet.enc.onnx"
    onnx_protect.encrypt(plain, enc, key=onnx_protect.new_key())
    r = assess.attack(enc, *data, **TINY)
    row = sensible(r)
    assert r["scratch_reference"] == ("exported graph + re-inserted BatchNorm after 6 Conv, "
                                      "shift augmentation (up to 1 pixel)")
    assert r["reinserted_batchnorm"] == 6
    # Scratch is no longer the graph the attacks train: only finetune reuses relearn's run
    # (every weight encrypted, both train everything from the same reset).
    assert row["reused"] == ["finetune"], row
    # With its BatchNorms back, scratch learns far more than the exported graph from the
    # same draws (the attacks, every weight reset): 69% against 21% on this budget.
    assert row["scratch"][0] > row["finetune"][0] + 0.2, row
    plainer = assess.attack(enc, *data, batchnorm=False, augment=False, **TINY)
    assert plainer["scratch_reference"] == "exported graph" and plainer["augmentation"] == "none"
    assert plainer["sizes"][0]["reused"] == ["relearn", "finetune"]

    # The BatchNorm sits after each Conv: in training mode, scaling a Conv's weights
    # (here the stem's, 10x) changes nothing downstream with it, everything without it.
    masks = assess.encrypted_masks(onnx_protect.inspect(enc), tg.TorchGraph(onnx.load(enc)))
    setup = assess.Setup(onnx.load(enc), masks)
    stem = next(loc for loc, c in tg.TorchGraph(onnx.load(enc)).constants.items()
                if c.users and c.users[0] == ("Conv", 1) and c.array.size == 8 * 9)
    x = torch.from_numpy(data[0][:16])
    for with_bn, changes in ((True, False), (False, True)):
        gen = torch.Generator().manual_seed(0)
        # scratch, or the attacks' reset of the exported graph (every weight drawn afresh)
        g = setup.scratch(gen) if with_bn else setup.reset(gen)
        assert len(g.inserted) == (6 if with_bn else 0)
        g.train()
        before = g(x).detach()
        with torch.no_grad():
            g.tensor(stem).mul_(10)
        after = g(x).detach()
        assert (not torch.allclose(before, after, rtol=1e-3, atol=1e-4)) == changes, with_bn


def test_shifts_move_each_image_by_at_most_the_shift():
    x = torch.zeros(64, 1, 8, 8)
    x[:, 0, 3, 4] = 1.0
    out = assess.shifted(x, 1, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and torch.all(out.sum((1, 2, 3)) == 1.0)
    where = out[:, 0].reshape(64, -1).argmax(1)
    rows, cols = where // 8, where % 8
    assert set(rows.tolist()) == {2, 3, 4} and set(cols.tolist()) == {3, 4, 5}
    assert assess.image_shift((10, 1, 8, 8)) == 1 and assess.image_shift((10, 3, 32, 32)) == 4
    assert assess.image_shift((10, 3, 224, 224)) == 4
    assert assess.image_shift((10, 12, 16)) == 0 and assess.image_shift((10, 1, 4, 4)) == 0
    # Channels last (tf2onnx): the same shifts along H and W.
    assert assess.image_shift((10, 8, 8, 1)) == 1 and assess.image_shift((10, 32, 32, 3)) == 4
    assert not assess.channels_last((10, 3, 32, 3)) and assess.image_shift((10, 8, 8, 8)) == 1
    nchw = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    a = assess.shifted(nchw, 2, torch.Generator().manual_seed(3))
    b = assess.shifted(nchw.permute(0, 2, 3, 1), 2, torch.Generator().manual_seed(3))
    assert torch.equal(a.permute(0, 2, 3, 1), b)


# ---------------------------------------------------------------- the search's two passes


def test_the_search_screens_at_one_draw_and_confirms_only_the_candidate(data, monkeypatch):
    mlp = ROOT / "fixtures" / "zoo" / "digits" / "mlp.onnx"
    runs = []
    real = assess._one

    def counted(*a, **k):
        runs.append(1)
        return real(*a, **k)

    monkeypatch.setattr(assess, "_one", counted)
    tiny = dict(sizes=(0.02, 0.05), steps=3, lrs=(3e-3,))
    every = assess.policy_search(mlp, *data, target=1.0, seeds=3, **tiny)
    assert every["chosen"] == "last" and [p["point"] for p in every["points"]] == ["last"]
    last = every["points"][0]
    assert last["stage"] == "confirmation" and last["seeds"] == 3
    assert all(len(row["scratch"]) == 3 for row in last["sizes"])
    # Screening: 2 sizes x 1 draw x (scratch, relearn, finetune); confirmation adds draws
    # 1 and 2 only (draw 0 is kept from screening).
    assert len(runs) == 2 * 3 + 2 * 2 * 3, len(runs)

    runs.clear()
    none = assess.policy_search(mlp, *data, target=-1.0, seeds=3, **tiny)
    assert none["chosen"] is None and len(none["points"]) > 3
    assert all(p["stage"] == "screening" and p["seeds"] == 1 for p in none["points"])
    # Each point fails at its first size and stops there; scratch runs once for all points,
    # an attack run reused from an identical start is not run.
    assert all(len(p["sizes"]) == 1 and p["stopped_early"] for p in none["points"])
    attack_runs = sum(2 - len(p["sizes"][0]["reused"]) for p in none["points"])
    assert len(runs) == 1 + attack_runs, len(runs)


def test_a_point_that_fails_its_confirmation_is_never_recommended(data, monkeypatch):
    """Screening at one draw only nominates: a point whose confirmation at three draws
    fails is not chosen and the next point is tried; with none confirmed, none is
    recommended. The attacks are replaced by a stand-in that holds at one draw and, at
    three, only from the ``confirmed_from``-th point on (cheapest first)."""
    mlp = ROOT / "fixtures" / "zoo" / "digits" / "mlp.onnx"
    points = ("all", "last+first", "last")
    calls = []

    def stand_in(path, *args, seeds, **kwargs):
        calls.append((path, seeds))
        rank = list(dict.fromkeys(p for p, _ in calls)).index(path)
        holds = seeds == 1 or rank >= confirmed_from
        return {"holds": holds, "gap": 0.0 if holds else 0.05, "share": 0.5, "seeds": seeds}

    monkeypatch.setattr(assess, "attack", stand_in)
    confirmed_from = 1
    r = assess.policy_search(mlp, *data, points=points, seeds=3)
    assert [(p["point"], p["stage"], p["seeds"], p["holds"]) for p in r["points"]] == [
        ("last", "confirmation", 3, False), ("last+first", "confirmation", 3, True)]
    assert r["chosen"] == "last+first" and [s for _, s in calls] == [1, 3, 1, 3]

    calls.clear()
    confirmed_from = len(points)
    r = assess.policy_search(mlp, *data, points=points, seeds=3)
    assert r["chosen"] is None and [s for _, s in calls] == [1, 3] * 3
    assert [(p["point"], p["stage"], p["holds"]) for p in r["points"]] == [
        ("last", "confirmation", False), ("last+first", "confirmation", False), ("all", "confirmation", False)]


def test_confirmation_decides_on_the_upper_bound_and_adds_draws_while_the_draws_cannot_tell(data, monkeypatch):
    """A confirmed point holds when the one-sided 95% upper bound of its gap is within
    the target, fails when its mean gap is over it, and in between gets three more draws,
    up to nine, where a point still undecided is not recommended. The attacks are
    replaced by a stand-in whose per-draw gaps are given."""
    mlp = ROOT / "fixtures" / "zoo" / "digits" / "mlp.onnx"
    calls = []

    def stand_in(path, *args, seeds, target, **kwargs):
        calls.append(seeds)
        g = per_draw[:seeds]
        mean = float(np.mean(g))
        return {"holds": mean <= target, "gap": mean, "bound": assess.upper_bound(g), "share": 0.5, "seeds": seeds}

    monkeypatch.setattr(assess, "attack", stand_in)
    cases = [
        ([0.0, 0.001, -0.001], [1, 3], "last"),  # tight: holds at three
        ([0.0, 0.05, -0.05, -0.01, 0.0, -0.01, -0.01, 0.0, -0.01], [1, 3, 6, 9], "last"),  # tells at nine
        ([0.0, 0.1, -0.1] * 3, [1, 3, 6, 9], None),  # never tells: not recommended
        ([0.0, 0.04, 0.05], [1, 3], None),  # mean over the target: fails at once
    ]
    for (per_draw, draws, chosen), undecided in zip(cases, (False, False, True, False)):
        calls.clear()
        r = assess.policy_search(mlp, *data, points=("last",), seeds=3)
        assert (calls, r["chosen"]) == (draws, chosen), per_draw
        last = r["points"][-1]
        assert last["seeds"] == draws[-1] and last.get("undecided", False) is undecided
    # The bound: mean + t(n - 1) * sd / sqrt(n); one draw has none.
    assert assess.upper_bound([0.0, 0.02, 0.04]) == pytest.approx(0.02 + 2.920 * 0.02 / np.sqrt(3))
    assert assess.upper_bound([0.01]) is None
    calls.clear()
    per_draw = [0.0, 0.05, -0.05] * 3
    assert assess.policy_search(mlp, *data, points=("last",), seeds=3, max_seeds=3)["chosen"] is None
    assert calls == [1, 3]


def test_the_report_bounds_the_gap_over_its_draws_and_says_so(tmp_path, capsys):
    """With two or more draws the report gives, per size and overall, the upper bound of
    the gap (:func:`assess.upper_bound` of the per-draw differences best attack - scratch),
    and the summary prints it; with one draw there is none."""
    pol = tmp_path / "last.toml"
    pol.write_text(assess.policy_toml("last"))
    enc = tmp_path / "mlp.enc.onnx"
    onnx_protect.encrypt(ROOT / "fixtures" / "zoo" / "digits" / "mlp.onnx", enc, key=onnx_protect.new_key(), policy=pol)
    train, test = tmp_path / "train.npz", tmp_path / "test.npz"
    np.savez(train, x=np.load(DIGITS / "train_x.npy"), y=np.load(DIGITS / "train_y.npy"))
    np.savez(test, x=np.load(DIGITS / "test_x.npy")[:100], y=np.load(DIGITS / "test_y.npy")[:100])
    out = tmp_path / "r.json"
    common = [str(enc), "--data", str(train), "--test", str(test), "--steps", "2", "--sizes", "0.02,0.05", "-q"]
    assert assess.main([*common, "--seeds", "2", "--json", str(out)]) in (0, 3)
    r = json.loads(out.read_text())
    for row in r["sizes"]:
        diffs = np.subtract(row[row["best_attack"]], row["scratch"])
        assert row["bound"] == pytest.approx(assess.upper_bound(diffs))
        assert row["bound"] >= row["gap"]
    assert r["bound"] == max(row["bound"] for row in r["sizes"])
    assert f"upper bound {100 * r['bound']:+.1f} (one-sided 95%, 2 draws)" in capsys.readouterr().out
    assert assess.main([*common, "--seeds", "1", "--json", str(out)]) in (0, 3)
    assert json.loads(out.read_text())["bound"] is None and "upper bound" not in capsys.readouterr().out


def test_the_learning_rate_is_chosen_by_held_out_accuracy_then_cross_entropy():
    # A fifth of a small draw holds a few samples: accuracies tie often. The tie goes to
    # the lower cross-entropy, not to the smallest rate.
    assert assess.best_lr({1e-3: (2 / 3, 0.9), 3e-3: (2 / 3, 0.4), 1e-2: (1 / 3, 0.1)}) == 3e-3
    assert assess.best_lr({1e-3: (1.0, 0.9), 3e-3: (2 / 3, 0.1), 1e-2: (2 / 3, 0.05)}) == 1e-3
    assert assess.best_lr({1e-3: (0.5, 0.3), 3e-3: (0.5, float("inf")), 1e-2: (0.5, 0.3)}) == 1e-3


def test_best_keeps_the_highest_test_accuracy_of_every_rate_and_recipe_for_attacks_and_scratch(
        tmp_path, data, monkeypatch):
    """``lr_choice="best"``: each run trains at every rate with every recipe on the whole
    draw (no held-out fifth, no retraining), records each training's test accuracy, and
    keeps the highest; scratch gets the same. The recorded accuracies are those of the
    trainings, measured here on the graphs they trained."""
    pol = tmp_path / "last.toml"
    pol.write_text(assess.policy_toml("last"))
    enc = tmp_path / "mlp.enc.onnx"
    onnx_protect.encrypt(ROOT / "fixtures" / "zoo" / "digits" / "mlp.onnx", enc, key=onnx_protect.new_key(), policy=pol)
    trained = []
    real = assess.train

    def measured(g, params, x, y, lr, steps, seed, shift=0, recipe="one-cycle"):
        real(g, params, x, y, lr, steps, seed, shift=shift, recipe=recipe)
        trained.append((len(x), f"{recipe}@{lr:g}", assess.accuracy(g, data[2], data[3].astype(np.int64))))
        return g

    monkeypatch.setattr(assess, "train", measured)
    lrs, recipes = (1e-3, 3e-2), ("one-cycle", "constant")
    r = assess.attack(enc, *data, sizes=(0.05,), seeds=1, steps=15, lrs=lrs, lr_choice="best", recipes=recipes)
    assert r["lr_choice"] == "best" and r["recipes"] == list(recipes)
    row = r["sizes"][0]
    assert row["reused"] == []
    names = ["one-cycle@0.001", "one-cycle@0.03", "constant@0.001", "constant@0.03"]
    # Four trainings per run, in order scratch, relearn, finetune, each on the whole draw.
    assert [n for _, n, _ in trained] == names * 3 and {k for k, _, _ in trained} == {row["samples"][0]}
    for i, name in enumerate(("scratch", "relearn", "finetune")):
        run = row["runs"][name][0]
        assert run["test"] == {n: a for _, n, a in trained[4 * i:4 * i + 4]}, name
        assert row[name] == [max(run["test"].values())], name
        assert run["test"][f"{run['recipe']}@{run['lr']:g}"] == row[name][0]
    # The trainings differ: the maximum is a choice among different accuracies.
    assert len({a for _, _, a in trained}) > 3

    trained.clear()
    held = assess.attack(enc, *data, sizes=(0.05,), seeds=1, steps=15, lrs=lrs, recipes=recipes)
    assert held["lr_choice"] == "held_out"
    n = row["samples"][0]
    # Held out: each run trains four on four fifths of the draw, then the chosen one on all of it.
    assert [k for k, _, _ in trained] == ([n - n // 5] * 4 + [n]) * 3
    assert set(held["sizes"][0]["runs"]["relearn"][0]["validation"]) == set(names)


def test_the_constant_recipe_trains_the_encrypted_elements_alone_at_a_constant_rate(monkeypatch):
    """``constant``: Adam at the given rate every step (no schedule, no weight decay); with
    a partly encrypted tensor, relearning moves its encrypted elements and no clear one."""
    model = onnx.load(ROOT / "fixtures" / "zoo" / "digits" / "mlp.onnx")
    graph = tg.TorchGraph(model)
    loc = max((k for k, c in graph.constants.items() if c.array.ndim == 2), key=lambda k: graph.constants[k].array.size)
    mask = np.zeros(graph.constants[loc].array.size, bool)
    mask[::3] = True
    setup = assess.Setup(model, {loc: mask}, batchnorm=False)
    rates = []
    real_step = torch.optim.Adam.step

    def step(opt, *a, **k):
        rates.append((type(opt).__name__, opt.param_groups[0]["lr"], opt.param_groups[0]["weight_decay"]))
        return real_step(opt, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    g = setup.reset(torch.Generator().manual_seed(1))
    params = assess._relearn_only(g, setup.masks)
    before = g.tensor(loc).detach().clone().flatten()
    x = np.random.default_rng(0).normal(size=(40, 1, 8, 8)).astype(np.float32)
    assess.train(g, params, x, np.arange(40) % 10, 0.02, 7, seed=3, recipe="constant")
    after = g.tensor(loc).detach().flatten()
    assert rates == [("Adam", 0.02, 0)] * 7
    assert torch.equal(after[~torch.from_numpy(mask)], before[~torch.from_numpy(mask)])
    assert (after[torch.from_numpy(mask)] != before[torch.from_numpy(mask)]).float().mean() > 0.9
    with pytest.raises(assess.AttackError, match="unknown recipe 'sgd'; recipes are one-cycle, constant"):
        assess.train(g, params, x, np.arange(40) % 10, 0.02, 1, seed=3, recipe="sgd")


def test_the_search_attacks_with_every_recipe_at_the_best_rate(data, monkeypatch):
    """``policy_search``'s attacks (both passes) keep the best test accuracy over the rates
    and both recipes, unless told otherwise; a bad choice is refused in one line."""
    mlp = ROOT / "fixtures" / "zoo" / "digits" / "mlp.onnx"
    seen = []

    def stand_in(path, *args, seeds, **kwargs):
        seen.append((seeds, kwargs["lr_choice"], kwargs["recipes"]))
        return {"holds": True, "gap": 0.0, "share": 0.5, "seeds": seeds}

    monkeypatch.setattr(assess, "attack", stand_in)
    assert assess.policy_search(mlp, *data, points=("last",), seeds=3)["chosen"] == "last"
    assert seen == [(1, "best", ("one-cycle", "constant")), (3, "best", ("one-cycle", "constant"))]
    monkeypatch.undo()
    with pytest.raises(assess.AttackError, match="unknown lr_choice 'test'"):
        assess.attack_masks(onnx.load(mlp), {}, *data, lr_choice="test")
    with pytest.raises(assess.AttackError, match="recipes must be some of one-cycle, constant"):
        assess.attack_masks(onnx.load(mlp), {}, *data, recipes=("adam",))


def test_scores_give_accuracy_and_cross_entropy():
    x = np.eye(3, dtype=np.float32)
    node = helper.make_node("Identity", ["x"], ["y"])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])])
    graph = tg.TorchGraph(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    acc, loss = assess.scores(graph, x, np.array([0, 1, 0]))
    assert acc == pytest.approx(2 / 3)
    want = -np.mean([np.log(np.exp(1) / (np.exp(1) + 2)), np.log(np.exp(1) / (np.exp(1) + 2)),
                     np.log(1 / (np.exp(1) + 2))])
    assert loss == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("dynamo", [False, True])
@pytest.mark.parametrize("net", ["vit", "resnet"])
def test_assess_runs_on_exports_with_the_batch_size_fixed(net, dynamo, batch, tmp_path, data):
    """`torch.onnx.export(model, example, path)` with no dynamic axis fixes the batch size (1
    or 3 here) in the input and in the graph's shapes (`Reshape` constants, a class token left
    unexpanded or expanded to that batch and folded): onnxruntime runs such a model that many
    samples at a time. The interpreter runs a batch-1 export at any batch size with the
    export's batch size in those shapes made the batch's, and a larger one that many at a
    time too (the last step padded: 64 is not a multiple of 3)."""
    torch.manual_seed(0)
    model = {"vit": ViT, "resnet": ResNet}[net]().eval()
    plain = tmp_path / f"{net}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.from_numpy(data[0][:batch]),), str(plain), input_names=["x"],
                          output_names=["y"], dynamo=dynamo)
    m = onnx.load(plain)
    assert [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim][0] == batch
    assert tg.check(m, data[2][:64]) <= 1e-4
    g = tg.TorchGraph(m).eval()
    with torch.no_grad():
        got = g(torch.from_numpy(data[2][:64])).numpy()
    sess = ort.InferenceSession(str(plain), providers=["CPUExecutionProvider"])
    want = np.concatenate([sess.run(None, {"x": data[2][i:i + batch]})[0] for i in range(0, 63, batch)])
    assert got.shape[0] == 64 and np.allclose(got[:63], want, atol=1e-4)
    enc = tmp_path / f"{net}.enc.onnx"
    onnx_protect.encrypt(plain, enc, key=onnx_protect.new_key())
    r = assess.attack(enc, *data, **TINY)
    assert r["share"] == 1.0 and 0.0 <= r["sizes"][0]["scratch"][0] <= 1.0


def test_a_final_softmax_is_left_out_of_training_and_scoring_but_not_of_the_check(tmp_path, data):
    """An export ending in Softmax: the attacks and scratch train and score the scores before
    it (cross-entropy on probabilities barely trains: on this MLP, 5% of the digits, scratch
    reached 68.3% that way and 77.6% on the scores), and the check compares the output itself
    with onnxruntime's."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10), nn.Softmax(-1)).eval()
    plain = tmp_path / "softmax.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.from_numpy(data[0][:2]),), str(plain), input_names=["x"], output_names=["p"],
                          dynamic_axes={"x": {0: "b"}, "p": {0: "b"}}, dynamo=False)
    model = onnx.load(plain)
    assert model.graph.node[-1].op_type == "Softmax"
    g = tg.TorchGraph(model)
    assert g.read == model.graph.node[-1].input[0]
    with torch.no_grad():
        scores = g(torch.from_numpy(data[2][:16]))
    assert not torch.allclose(scores.sum(1), torch.ones(16))
    assert tg.check(model, data[2][:16]) <= 1e-4


class FunctionBlock(nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.lin, self.norm = nn.Linear(d, d), nn.LayerNorm(d)

    def forward(self, x):
        return self.norm(torch.relu(self.lin(x)) + x * 0.5)


def test_assess_runs_a_model_whose_blocks_are_local_functions(tmp_path, data):
    """`torch.onnx.export(..., export_modules_as_functions={Block})`: each block a model-local
    function whose weights the call passes. The interpreter runs it inlined and matches
    onnxruntime; every constant keeps the file's locator (its value is the one stored there);
    the weights read by a Gemm inside a function are reset as a Linear's; the attacks run."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), FunctionBlock(), FunctionBlock(), nn.Linear(16, 10))
    plain = tmp_path / "functions.onnx"
    x = torch.from_numpy(data[0][:2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), (x,), str(plain), dynamo=False, export_modules_as_functions={FunctionBlock},
                          opset_version=17, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
    model = onnx.load(plain)
    assert len(model.functions) == 1 and sum(n.domain == model.functions[0].domain for n in model.graph.node) == 2
    assert tg.check(model, data[2][:64]) <= 1e-4
    g = tg.TorchGraph(model)
    assert {n.op_type for n in g.graph.node} >= {"Gemm", "LayerNormalization"} and not any(
        n.domain == model.functions[0].domain for n in g.graph.node)
    for loc, c in g.constants.items():
        assert np.array_equal(numpy_helper.to_array(assess._tensor_at(model, loc)).ravel(), c.array.ravel()), loc
    inner = [c for c in g.constants.values() if c.name.startswith("2.lin.weight")]
    assert inner and inner[0].users == [("Gemm", 1)], [(c.name, c.users) for c in g.constants.values()]
    # The body's 0.5, encrypted by the built-in policy at its one place in the file: one
    # parameter that both calls read.
    half = next(f"25.0/7.{i}/5.0/5.0" for i, n in enumerate(model.functions[0].node) if n.op_type == "Constant")
    g = tg.TorchGraph(model, trainable=frozenset({half}))
    assert len([v for v, loc in g.by_value.items() if loc == half]) == 2
    assert g.tensor(half).item() == 0.5 and sum(p.numel() == 1 for p in g.params.values()) == 1
    enc = tmp_path / "functions.enc.onnx"
    onnx_protect.encrypt(plain, enc, key=onnx_protect.new_key())
    r = assess.attack(enc, *data, **TINY)
    assert r["share"] == 1.0
    sensible(r)


def test_nested_functions_with_attribute_references_run_as_onnxruntime_runs_them():
    """`Outer(x; alpha)` calls `Inner(x; alpha)` twice (LeakyRelu's alpha a reference to the
    caller's, given once and left to the function's default once), then adds a constant of its
    own body: values renamed per call, references resolved, defaults taken."""
    leaky = helper.make_node("LeakyRelu", ["a"], ["b"])
    leaky.attribute.append(onnx.AttributeProto(name="alpha", ref_attr_name="alpha", type=onnx.AttributeProto.FLOAT))
    inner = helper.make_function("local", "Inner", ["a"], ["b"], [leaky], [helper.make_opsetid("", 17)],
                                 attributes=[])
    inner.attribute_proto.append(helper.make_attribute("alpha", 0.3))
    call = helper.make_node("Inner", ["p"], ["q"], domain="local")
    call.attribute.append(onnx.AttributeProto(name="alpha", ref_attr_name="alpha", type=onnx.AttributeProto.FLOAT))
    outer = helper.make_function("local", "Outer", ["p"], ["r"], [
        call, helper.make_node("Inner", ["q"], ["q2"], domain="local"),
        helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.float32([0.25, -1.0]))),
        helper.make_node("Add", ["q2", "k"], ["r"])], [helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
        attributes=["alpha"])
    nodes = [helper.make_node("Outer", ["x"], ["h"], domain="local", alpha=0.01),
             helper.make_node("Outer", ["h"], ["y"], domain="local", alpha=2.0)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])])
    m = helper.make_model(g, functions=[inner, outer],
                          opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)])
    m.ir_version = 9
    x = np.random.default_rng(0).standard_normal((16, 2)).astype(np.float32)
    assert tg.check(m, x) <= 1e-6
    flat, origins = tg.inline(m)
    assert [n.op_type for n in flat.graph.node] == ["LeakyRelu", "LeakyRelu", "Constant", "Add"] * 2
    assert [a.f for n in flat.graph.node if n.op_type == "LeakyRelu" for a in n.attribute] == [
        pytest.approx(0.01), pytest.approx(0.3), pytest.approx(2.0), pytest.approx(0.3)]
    assert sorted(set(origins.values())) == ["25.1/7.2/5.0/5.0"] and len(origins) == 2
