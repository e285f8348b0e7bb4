"""Models as the ONNX tools people run before shipping write them, through the whole path: a
small CNN classifier quantised by onnxruntime (static QOperator, static QDQ per channel), a
two-layer BERT encoder exported by torch (dynamic int8 quantisation; onnxruntime's transformer
optimizer fusing SkipLayerNormalization and BiasGelu (com.microsoft); the fused graph in fp16 with fp32 inputs
and outputs; `MatMulNBits` 4-bit weights). Each is protected with the built-in policy, verified,
decrypted back byte for byte, and run by onnx_protect.InferenceSession with the plain session's
outputs bit for bit. The QDQ classifier is also tiered by class (`--tiers 3` alone): tier 1's
holder gets the first classes' logits exactly and not the last one's; so is a classifier whose
head is a `MatMul` over a `[features, classes]` weight plus a bias (as tf2onnx and hand-written
`x @ W + b` export it), each class a column of that weight."""
import json
import os
import pathlib
import subprocess

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the models are exported by torch (tests/requirements-torch.txt)")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
transformers = pytest.importorskip("transformers")

import onnx_protect as op  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
CPU = ["CPUExecutionProvider"]


def cli(*args):
    exe = os.environ.get("ONNX_PROTECT_BIN") or str(ROOT / "target" / "debug" / "onnx-protect")
    r = subprocess.run([exe, *map(str, args)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


class Cnn(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.b1 = torch.nn.BatchNorm2d(8)
        self.c2 = torch.nn.Conv2d(8, 16, 3, stride=2)
        self.head = torch.nn.Linear(16 * 7 * 7, 10)

    def forward(self, x):
        x = torch.relu(self.c2(torch.relu(self.b1(self.c1(x)))))
        return self.head(x.flatten(1))


class Encoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        cfg = transformers.BertConfig(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=128, max_position_embeddings=32)
        self.bert = transformers.BertModel(cfg).eval()

    def forward(self, ids, mask):
        return self.bert(input_ids=ids, attention_mask=mask).last_hidden_state


class Dense(torch.nn.Module):
    """A classifier whose head is `x @ W + b`, W stored [features, classes]."""

    def __init__(self):
        super().__init__()
        self.hidden = torch.nn.Linear(20, 32)
        self.w = torch.nn.Parameter(torch.randn(32, 9))
        self.b = torch.nn.Parameter(torch.randn(9))

    def forward(self, x):
        return torch.relu(self.hidden(x)) @ self.w + self.b


def feeds(session):
    rng = np.random.default_rng(1)
    out = {}
    for i in session.get_inputs():
        shape = [d if isinstance(d, int) else (1 if n == 0 else 12) for n, d in enumerate(i.shape)]
        if "int64" in i.type:
            out[i.name] = np.ones(shape, np.int64) if "mask" in i.name else rng.integers(0, 300, shape).astype(np.int64)
        else:
            out[i.name] = rng.standard_normal(shape).astype(np.float32)
    return out


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """name -> path of each model, made once."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    from onnxruntime.transformers import optimizer

    d = tmp_path_factory.mktemp("tools")
    torch.manual_seed(0)
    cnn = d / "cnn.onnx"
    torch.onnx.export(Cnn().eval(), (torch.randn(1, 3, 16, 16),), str(cnn), input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}}, opset_version=17, dynamo=False)

    class Calibration(CalibrationDataReader):
        def __init__(self):
            self.left = [{"x": np.random.default_rng(i).random((1, 3, 16, 16), np.float32)} for i in range(4)]

        def get_next(self):
            return self.left.pop() if self.left else None

    out = {}
    for fmt, name, per_channel in [(QuantFormat.QOperator, "cnn_qoperator", False), (QuantFormat.QDQ, "cnn_qdq", True)]:
        out[name] = d / f"{name}.onnx"
        quantize_static(str(cnn), str(out[name]), Calibration(), quant_format=fmt, per_channel=per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    bert = d / "bert.onnx"
    torch.onnx.export(Encoder().eval(), (torch.randint(0, 300, (1, 12)), torch.ones(1, 12, dtype=torch.long)), str(bert),
                      input_names=["input_ids", "attention_mask"], output_names=["hidden"],
                      dynamic_axes={"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"}},
                      opset_version=17, dynamo=False)
    out["bert_int8"] = d / "bert_int8.onnx"
    quantize_dynamic(str(bert), str(out["bert_int8"]), weight_type=QuantType.QInt8)
    fused = optimizer.optimize_model(str(bert), model_type="bert", num_heads=4, hidden_size=64, opt_level=1)
    ops = {n.op_type for n in fused.model.graph.node}
    assert {"SkipLayerNormalization", "BiasGelu"} <= ops, ops
    out["bert_fused"] = d / "bert_fused.onnx"
    fused.save_model_to_file(str(out["bert_fused"]))
    fused.convert_float_to_float16(keep_io_types=True)
    out["bert_fused_fp16"] = d / "bert_fused_fp16.onnx"
    fused.save_model_to_file(str(out["bert_fused_fp16"]))
    nbits = MatMulNBitsQuantizer(onnx.load(str(bert)), block_size=32, is_symmetric=False)
    nbits.process()
    assert any(n.op_type == "MatMulNBits" for n in nbits.model.model.graph.node)
    out["bert_nbits"] = d / "bert_nbits.onnx"
    nbits.model.save_model_to_file(str(out["bert_nbits"]), False)
    return out


@pytest.mark.parametrize("name", ["cnn_qoperator", "cnn_qdq", "bert_int8", "bert_fused", "bert_fused_fp16", "bert_nbits"])
def test_a_tool_written_model_is_protected_restored_and_run_exactly(made, name, tmp_path):
    src = made[name]
    key = tmp_path / "k.key"
    op.keygen(key)
    enc, back = tmp_path / "enc" / "model.onnx", tmp_path / "back" / "model.onnx"
    cli("encrypt", src, "-o", enc, "--key-file", key, "-q")
    report = json.loads(cli("encrypt", src, "--dry-run", "--json"))
    # Every weight is encrypted but quantisation scales and zero points (the built-in policy).
    assert report["encrypted_bytes"] > 0 and not report["skipped"]
    assert all(c["role"] == "quant" for c in report["clear"]), report["clear"]
    assert report["encrypted_bytes"] + sum(c["bytes"] for c in report["clear"]) == report["weight_bytes"]
    cli("verify", enc, "--key-file", key, "-q")
    cli("decrypt", enc, "-o", back, "--key-file", key, "-q")
    assert back.read_bytes() == src.read_bytes()
    plain = ort.InferenceSession(str(src), providers=CPU)
    x = feeds(plain)
    protected = op.InferenceSession(enc, key_file=key, providers=CPU)
    for a, b in zip(plain.run(None, x), protected.run(None, x)):
        assert a.dtype == b.dtype and np.array_equal(a, b), name


def test_the_qdq_classifier_is_tiered_by_class(made, tmp_path):
    src = made["cnn_qdq"]
    key = tmp_path / "k.key"
    op.keygen(key, tiers=3)
    enc = tmp_path / "enc.onnx"
    cli("encrypt", src, "-o", enc, "--key-file", key, "--tiers", "3", "-q")
    assert "tiers        3, by class" in cli("inspect", enc)
    plain = ort.InferenceSession(str(src), providers=CPU)
    x = {"x": np.random.default_rng(2).random((16, 3, 16, 16), np.float32)}
    ref = plain.run(None, x)[0]
    low = op.InferenceSession(enc, key_file=f"{key}.tier1", providers=CPU).run(None, x)[0]
    # Tier 1 serves classes 0-3 of 10 (round(1 + 9/3) = 4); the output is quantised, so a
    # class it lacks may round to the same level on a few samples, not on all of them.
    assert np.array_equal(low[:, :4], ref[:, :4])
    differs = (low[:, 4:] != ref[:, 4:]).mean()
    assert differs > 0.5, differs


def test_a_matmul_head_is_tiered_by_its_columns(tmp_path):
    torch.manual_seed(3)
    src = tmp_path / "dense.onnx"
    torch.onnx.export(Dense().eval(), (torch.randn(1, 20),), str(src), input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}}, opset_version=17, dynamo=False)
    assert "MatMul" in {n.op_type for n in onnx.load(str(src)).graph.node}
    key = tmp_path / "k.key"
    op.keygen(key, tiers=3)
    enc = tmp_path / "enc.onnx"
    cli("encrypt", src, "-o", enc, "--key-file", key, "--tiers", "3", "-q")
    # 9 classes over 3 tiers: round(1 + 8/3) = 4, round(1 + 16/3) = 6.
    assert "classes      tier 1: 0-3, tier 2: 4-5, tier 3: 6-8" in cli("inspect", enc)
    x = {"x": np.random.default_rng(4).standard_normal((32, 20)).astype(np.float32)}
    ref = ort.InferenceSession(str(src), providers=CPU).run(None, x)[0]
    for tier, served in [(1, 4), (2, 6)]:
        got = op.InferenceSession(enc, key_file=f"{key}.tier{tier}", providers=CPU).run(None, x)[0]
        assert np.array_equal(got[:, :served], ref[:, :served]), tier
        assert (got[:, served:] != ref[:, served:]).all(), tier
    top = op.InferenceSession(enc, key_file=key, providers=CPU).run(None, x)[0]
    assert np.array_equal(top, ref)


def test_the_optimizers_fused_bert_runs_in_the_attacks_interpreter(made):
    """`assess`'s interpreter runs what onnxruntime's transformer optimizer writes
    (SkipLayerNormalization and BiasGelu of com.microsoft; the attention mask filled with
    ones), as onnxruntime runs it."""
    from onnx_protect import _torch_graph as tg
    m = onnx.load(str(made["bert_fused"]))
    assert {"SkipLayerNormalization", "BiasGelu"} <= {n.op_type for n in m.graph.node if n.domain == "com.microsoft"}
    ids = np.random.default_rng(3).integers(0, 300, (3, 12)).astype(np.int64)
    assert tg.check(m, ids) <= 1e-4
