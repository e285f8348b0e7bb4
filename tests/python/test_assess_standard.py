"""``onnx_protect.assess`` on standard architectures as users export them: torchvision's
ResNet-18 and MobileNetV3-Small and a ``transformers`` BERT encoder, each random-initialised,
trained a few steps (the CNNs on fixtures/digits) and exported by ``torch.onnx.export(...,
dynamo=False)`` with a dynamic batch axis, then protected with the built-in policy and
attacked on a tiny budget (one data size, one draw, a few dozen steps): what is checked is
that the attacks run on the export and what the report says, not a study's numbers.

The CNNs keep torchvision's own classes and so the op types of their standard export
(Conv with the BatchNorm folded, Relu, MaxPool, Add; HardSwish, depthwise Conv, the
squeeze-and-excitation gate's GlobalAveragePool, Conv, HardSigmoid and Mul; Gemm), at a
reduced width, one input channel and the 8x8 digits upsampled to 16x16. BERT classifies
generated token sequences (which token is planted ten times among 32).
"""
import pathlib
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the training attacks need torch (tests/requirements.txt)")
onnx = pytest.importorskip("onnx", reason="the training attacks need onnx (tests/requirements.txt)")
pytest.importorskip("onnxruntime", reason="the interpreter check needs onnxruntime")

import onnx_protect  # noqa: E402
from onnx_protect import assess  # noqa: E402
from onnx_protect import _torch_graph as tg  # noqa: E402
from test_assess_exports import trained_export  # noqa: E402

nn = torch.nn
ROOT = pathlib.Path(__file__).resolve().parents[2]
DIGITS = ROOT / "fixtures" / "digits"
TINY = dict(sizes=(0.05,), seeds=1, steps=60, lrs=(1e-2,))


@pytest.fixture(scope="module")
def digits():
    return [np.load(DIGITS / f"{n}.npy") for n in ("train_x", "train_y", "test_x", "test_y")]


@pytest.fixture(scope="module")
def digits16(digits):
    """The digits upsampled to 16x16 (bilinear)."""
    def up(x):
        return torch.nn.functional.interpolate(torch.from_numpy(x), size=16, mode="bilinear").numpy()
    return [up(digits[0]), digits[1], up(digits[2]), digits[3]]


@pytest.fixture(autouse=True)
def one_thread():
    """One thread for the training before export, as the attacks use (on 2 shared cores
    two threads per process are several times slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def export(net, data, path, steps=30):
    path = trained_export(net, data, path, steps=steps)
    model = onnx.load(path)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch", dims  # a dynamic batch axis
    return model


def protect(plain, tmp_path, point=None):
    """``plain`` encrypted with the built-in policy or a search point."""
    out = tmp_path / (pathlib.Path(plain).stem + f".{point or 'builtin'}.onnx")
    kwargs = {}
    if point:
        policy = tmp_path / f"{point}.toml"
        policy.write_text(assess.policy_toml(point))
        kwargs["policy"] = policy
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # encrypt's word on the share left clear
        onnx_protect.encrypt(plain, out, key=onnx_protect.new_key(), **kwargs)
    return out


def ran(r, reused):
    """The report of one tiny run: every accuracy a fraction, the verdict the gap's."""
    row = r["sizes"][0]
    for name in ("start", "scratch", "relearn", "finetune"):
        assert len(row[name]) == 1 and 0.0 <= row[name][0] <= 1.0, (name, row)
    # 5% of the pool drawn per class (rounded, at least one each)
    assert len(row["samples"]) == 1 and abs(row["samples"][0] - 0.05 * r["pool"]) <= 5, row
    assert row["reused"] == reused, row
    assert row["best_attack"] in ("relearn", "finetune")
    assert r["gap"] == pytest.approx(row["mean"][row["best_attack"]] - row["mean"]["scratch"])
    assert r["holds"] is (r["gap"] <= r["target"])
    return row


def interpreter_matches_onnxruntime(model, x):
    """The interpreter against onnxruntime on the trained weights, at two batch sizes."""
    for n in (1, 7):
        assert tg.check(model, np.ascontiguousarray(x[:n])) <= 1e-4


# ---------------------------------------------------------------- torchvision CNNs


@pytest.fixture(scope="module")
def torchvision():
    return pytest.importorskip("torchvision", reason="tests/requirements-torch.txt (torchvision, matching torch)")


def resnet18(torchvision, div=8):
    """torchvision's ResNet-18 (BasicBlock, [2, 2, 2, 2], its 7x7 stem and max pool) with
    every width divided by ``div`` and one input channel."""
    BasicBlock, ResNet = torchvision.models.resnet.BasicBlock, torchvision.models.resnet.ResNet

    class Narrow(ResNet):
        def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
            if planes == 64:  # the first stage: its input is the stem's output
                self.inplanes = 64 // div
            return super()._make_layer(block, planes // div, blocks, stride, dilate)

    net = Narrow(BasicBlock, [2, 2, 2, 2], num_classes=10)
    net.conv1 = nn.Conv2d(1, 64 // div, 7, 2, 3, bias=False)
    net.bn1 = nn.BatchNorm2d(64 // div)
    net.fc = nn.Linear(512 // div, 10)
    return net


def test_assess_runs_on_torchvision_resnet18(tmp_path, digits16, torchvision):
    torch.manual_seed(0)
    net = resnet18(torchvision)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 20
    model = export(net, digits16, tmp_path / "resnet18.onnx")
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Conv") == 20 and ops.count("Add") == 8 and "BatchNormalization" not in ops, ops
    assert {"MaxPool", "GlobalAveragePool", "Gemm"} <= set(ops), ops
    interpreter_matches_onnxruntime(model, digits16[2])
    # Every Conv had a BatchNorm, the three 1x1 downsampling ones too.
    assert len(tg.folded_batchnorm_convs(model)) == 20

    r = assess.attack(protect(tmp_path / "resnet18.onnx", tmp_path), *digits16, **TINY)
    assert r["share"] == 1.0
    assert r["scratch_reference"] == ("exported graph + re-inserted BatchNorm after 20 Conv, "
                                      "shift augmentation (up to 2 pixels)")
    assert r["reinserted_batchnorm"] == 20 and r["augmentation"] == "shifts of up to 2 pixels"
    # Every weight encrypted: relearn and finetune train everything from the same reset.
    row = ran(r, reused=["finetune"])
    # Scratch, its BatchNorms back, learns; the reset export without them barely does.
    assert row["scratch"][0] > row["finetune"][0] + 0.3, row


def mobilenet_v3_small(torchvision, width=0.25):
    """torchvision's MobileNetV3-Small at ``width``, one input channel."""
    net = torchvision.models.mobilenet_v3_small(num_classes=10, width_mult=width)
    stem = net.features[0][0]
    net.features[0][0] = nn.Conv2d(1, stem.out_channels, 3, 2, 1, bias=False)
    return net


def test_assess_runs_on_torchvision_mobilenet_v3_small(tmp_path, digits16, torchvision):
    torch.manual_seed(0)
    net = mobilenet_v3_small(torchvision)
    with_bn = sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    se = sum(isinstance(m, nn.Conv2d) for name, m in net.named_modules() if name.endswith((".fc1", ".fc2")))
    assert (with_bn, se) == (34, 18)
    model = export(net, digits16, tmp_path / "mnv3.onnx")
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Conv") == 52 and "BatchNormalization" not in ops, ops
    assert {"HardSwish", "HardSigmoid", "Mul", "GlobalAveragePool", "Gemm"} <= set(ops), ops
    assert any(a.name == "group" and a.i > 1 for n in model.graph.node if n.op_type == "Conv"
               for a in n.attribute), "depthwise convolutions"
    interpreter_matches_onnxruntime(model, digits16[2])
    # The 34 Conv that had a BatchNorm, the 11 linear projections (no activation after
    # them) among them; none of the 18 Conv of the squeeze-and-excitation gates, which
    # had none.
    folded = tg.folded_batchnorm_convs(model)
    assert len(folded) == 34 and not [v for v in folded if "/fc1/" in v or "/fc2/" in v], folded

    # Fewer steps than the others: a MobileNet learns little from 60 images in a few
    # dozen steps (scratch 10-35% at 40-60 steps), so no accuracy is compared here.
    r = assess.attack(protect(tmp_path / "mnv3.onnx", tmp_path), *digits16, **dict(TINY, steps=30))
    assert r["share"] == 1.0 and r["reinserted_batchnorm"] == 34
    assert r["scratch_reference"] == ("exported graph + re-inserted BatchNorm after 34 Conv, "
                                      "shift augmentation (up to 2 pixels)")
    ran(r, reused=["finetune"])


# ---------------------------------------------------------------- a transformers encoder


def planted(n, rng):
    """A generated sequence task: 32 tokens drawn from 0..9, one of them (the label)
    planted at 10 random places, after a class token 10."""
    y = rng.integers(0, 10, n)
    x = rng.integers(0, 10, (n, 32))
    for i in range(n):
        x[i, rng.choice(32, 10, replace=False)] = y[i]
    return np.concatenate([np.full((n, 1), 10), x], 1).astype(np.int64), y.astype(np.int64)


class Logits(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids):
        return self.model(input_ids=ids).logits


def tiny_bert(**attention):
    """A 2-layer BERT classifier (hidden 32, 2 heads, 10 labels, no dropout), random from seed
    0, and the planted-token task's data (1200 training, 500 test sequences)."""
    transformers = pytest.importorskip("transformers", reason="tests/requirements.txt")
    rng = np.random.default_rng(0)
    data = [*planted(1200, rng), *planted(500, rng)]
    config = transformers.BertConfig(vocab_size=11, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=33, num_labels=10,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **attention)
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(config), data


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """A 2-layer BERT (hidden 32, 2 heads, eager attention) trained 60 steps on the
    planted-token task (about 70% of the test set right), exported: the plain file and
    the task's data (1200 training, 500 test sequences)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    bert, data = tiny_bert(attn_implementation="eager")
    net = Logits(bert)
    path = tmp_path_factory.mktemp("bert") / "bert.onnx"
    export(net, data, path, steps=60)
    torch.set_num_threads(before)
    return path, data


def test_assess_runs_on_a_transformers_bert_encoder_reading_token_ids(tmp_path, bert):
    plain, data = bert
    model = onnx.load(plain)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    ops = {n.op_type for n in model.graph.node}
    # Embedding lookups, the token-type ids gathered from a buffer, the attention mask
    # built with Where, LayerNorm, GELU, attention written out with MatMul and Softmax.
    assert {"Gather", "GatherElements", "Where", "LayerNormalization", "Gelu", "Softmax", "MatMul"} <= ops, ops
    interpreter_matches_onnxruntime(model, data[2])

    r = assess.attack(protect(plain, tmp_path), *data, **TINY)
    assert r["share"] == 1.0 and r["scratch_reference"] == "exported graph" and r["augmentation"] == "none"
    assert r["reinserted_batchnorm"] == 0
    # The two attention scales (one-element constants the built-in policy encrypts) train.
    assert len(r["scalars"]) == 2
    # Every weight encrypted, scratch the exported graph: the attacks start from scratch's state.
    ran(r, reused=["relearn", "finetune"])

    # The classifier head alone encrypted: relearn probes the clear encoder, finetune
    # trains it all; both run.
    r = assess.attack(protect(plain, tmp_path, "last"), *data, **TINY)
    assert 0 < r["share"] < 0.1 and r["scalars"] == [], (r["share"], r["scalars"])
    ran(r, reused=[])


def test_assess_runs_on_the_default_exporters_bert(tmp_path):
    """The same BERT (default attention) as ``torch.onnx.export`` writes it by default from
    torch 2.9 (``dynamo=True``: opset 18, external data, the masked softmax guarded with
    ``IsNaN``), with a dynamic batch."""
    bert, data = tiny_bert()
    net = Logits(bert).eval()
    plain = tmp_path / "bert.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.from_numpy(data[0][:2]),), str(plain), input_names=["ids"],
                          output_names=["logits"], dynamic_shapes=({0: torch.export.Dim.DYNAMIC},), dynamo=True)
    model = onnx.load(plain)
    assert {"IsNaN", "Gelu", "LayerNormalization"} <= {n.op_type for n in model.graph.node}
    interpreter_matches_onnxruntime(model, data[2])
    r = assess.attack(protect(plain, tmp_path), *data, **TINY)
    assert r["share"] == 1.0 and r["scratch_reference"] == "exported graph"
    ran(r, reused=["relearn", "finetune"])


def test_the_interpreter_runs_bert_exported_at_a_fixed_batch_size_at_any_batch_size(tmp_path):
    """BERT exported by the default exporter with no dynamic axis: its attention reshapes
    hold the batch size 1 merged with the heads ([1 × heads, ...] read back as [1, heads,
    ...]); the interpreter runs 64 sequences as onnxruntime runs them one at a time."""
    bert, data = tiny_bert()
    plain = tmp_path / "bert1.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Logits(bert).eval(), (torch.from_numpy(data[0][:1]),), str(plain), input_names=["ids"],
                          output_names=["logits"], dynamo=True)
    model = onnx.load(plain)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    assert tg.check(model, data[2][:64]) <= 1e-4


class Hub(nn.Module):
    """A ``transformers`` classifier called as Hugging Face exports call it."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits


HUB_INPUTS = ["input_ids", "attention_mask", "token_type_ids"]


def hub_bert(path):
    """:func:`tiny_bert` (eager attention) exported at ``path`` as ``optimum`` exports it (the
    three :data:`HUB_INPUTS`, dynamic batch and length, opset 17), and its data."""
    bert, data = tiny_bert(attn_implementation="eager")
    ids = torch.from_numpy(data[0][:2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Hub(bert).eval(), (ids, torch.ones_like(ids), torch.zeros_like(ids)), str(path),
                          input_names=HUB_INPUTS, output_names=["logits"],
                          dynamic_axes={n: {0: "batch", 1: "seq"} for n in HUB_INPUTS}, opset_version=17, dynamo=False)
    return path, data


def test_assess_fills_the_hugging_face_inputs_after_the_token_ids(tmp_path):
    """BERT exported with ``input_ids``, ``attention_mask`` and ``token_type_ids`` (as
    ``optimum`` exports it): the data gives the ids; the mask is all ones and the segment
    ids zeros, the values the model takes when they are not passed; given by name, they are
    fed as given. Another second input is fed from the data by name, or refused in one line."""
    plain, data = hub_bert(tmp_path / "hub.onnx")
    model = onnx.load(plain)
    assert [i.name for i in model.graph.input] == HUB_INPUTS
    interpreter_matches_onnxruntime(model, data[2])
    enc = protect(plain, tmp_path)
    r = assess.attack(enc, *data, **TINY)
    assert r["share"] == 1.0
    ran(r, reused=["relearn", "finetune"])

    # Padded sequences: the data gives the mask (`np.savez(..., input_ids=, attention_mask=,
    # y=)`), which the interpreter follows as onnxruntime does.
    rng = np.random.default_rng(1)
    mask = (np.arange(data[0].shape[1]) < rng.integers(6, data[0].shape[1] + 1, (len(data[0]), 1))).astype(np.int64)
    given = tg.Inputs({"input_ids": np.where(mask == 1, data[0], 0), "attention_mask": mask})
    assert tg.check(model, given[:16]) <= 1e-4
    g = tg.TorchGraph(model).eval()
    with torch.no_grad():
        assert not torch.allclose(g(tg.as_torch(given[:16])), g(torch.from_numpy(given.arrays["input_ids"][:16])))
    train, test = tmp_path / "train.npz", tmp_path / "test.npz"
    np.savez(train, y=data[1], **given.arrays)
    np.savez(test, y=data[1][:200], input_ids=given.arrays["input_ids"][:200], attention_mask=mask[:200])
    assert assess.main([str(enc), "--data", str(train), "--test", str(test), "--sizes", "0.05", "--seeds", "1",
                        "--steps", "5", "-q"]) in (0, 3)

    # Another second input: given by name, or refused in one line naming it.
    other = onnx.load(plain)
    other.graph.input[2].name = "segment"
    for n in other.graph.node:
        n.input[:] = ["segment" if i == "token_type_ids" else i for i in n.input]
    with pytest.raises(tg.Unsupported, match="no data for the model's input 'segment'"):
        tg.TorchGraph(other)(torch.from_numpy(data[2][:4]))
    assert tg.check(other, tg.Inputs({"input_ids": data[2][:8], "segment": np.zeros_like(data[2][:8])})) <= 1e-4
    with pytest.raises(assess.AttackError, match="^data: no array for the model's input 'segment' .arrays: x.$"):
        assess.attack_masks(other, {}, {"x": data[0]}, data[1], data[2], data[3], **TINY)
    with pytest.raises(assess.AttackError, match="^data: array 'mask' is not a data input of the model"):
        assess.attack_masks(other, {}, {"x": data[0], "segment": data[0], "mask": data[0]}, *data[1:], **TINY)


def test_assess_runs_on_a_bert_fused_by_onnxruntimes_transformer_optimizer(tmp_path):
    """The Hugging Face export fused by ``onnxruntime.transformers.optimizer`` (model type
    ``bert``): its embeddings in one ``EmbedLayerNormalization``, each self-attention in one
    ``Attention`` reading the key lengths from the mask, ``SkipLayerNormalization``,
    ``BiasGelu``: the interpreter matches onnxruntime with padded sequences too, and the
    attacks run on the protected file."""
    optimizer = pytest.importorskip("onnxruntime.transformers.optimizer")
    plain, data = hub_bert(tmp_path / "hub.onnx")
    fused = tmp_path / "fused.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimizer.optimize_model(str(plain), model_type="bert", num_heads=2, hidden_size=32).save_model_to_file(
            str(fused))
    model = onnx.load(fused)
    ops = {n.op_type for n in model.graph.node if n.domain == "com.microsoft"}
    assert {"EmbedLayerNormalization", "Attention", "SkipLayerNormalization"} <= ops, ops
    interpreter_matches_onnxruntime(model, data[2])
    # The filled mask is all ones; zeros after each sequence's first 5 tokens reach Attention as
    # key lengths: the graph filled so is compared with onnxruntime given the same mask.
    masked = onnx.load(fused)
    mask = np.tile((np.arange(data[2].shape[1]) < 5).astype(np.int64), (7, 1))
    masked.graph.initializer.append(onnx.numpy_helper.from_array(mask, "attention_mask"))
    masked.graph.input.remove(next(i for i in masked.graph.input if i.name == "attention_mask"))
    assert tg.check(masked, np.ascontiguousarray(data[2][:7])) <= 1e-4
    r = assess.attack(protect(fused, tmp_path), *data, **TINY)
    assert r["share"] == 1.0
    ran(r, reused=["relearn", "finetune"])


def test_token_ids_given_as_floats_are_taken_whole_and_refused_with_fractions(tmp_path, bert, capsys):
    plain, data = bert
    enc = protect(plain, tmp_path)
    whole = tmp_path / "whole.npz"
    np.savez(whole, x=data[0].astype(np.float32), y=data[1])  # as a float array: cast to the input's int64
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=data[0] + 0.5, y=data[1])
    common = ["--test", str(whole), "--sizes", "0.02", "--seeds", "1", "--steps", "2", "-q"]
    assert assess.main([str(enc), "--data", str(whole), *common]) in (0, 3)
    assert "gap over scratch" in capsys.readouterr().out
    assert assess.main([str(enc), "--data", str(bad), *common]) == 1
    err = capsys.readouterr().err
    assert err == "error: data: the model's input takes int64 values, the data has fractions\n", err


# ---------------------------------------------------------------- which Conv lost a BatchNorm


def test_folded_batchnorm_covers_linear_projections_and_skips_squeeze_excitation_gates():
    """A projection Conv (no activation) feeding, through a residual sum, the next Conv
    had its BatchNorm folded; the Convs of a gate on a spatial mean (``x.mean((2, 3),
    keepdim=True)``, Conv, Relu, Conv, Sigmoid, Mul) never had one."""
    from onnx import TensorProto, helper, numpy_helper

    def conv(name, x):
        return helper.make_node("Conv", [x, f"{name}_w"], [name], kernel_shape=[1, 1])

    nodes = [
        conv("c_proj", "x"), helper.make_node("Add", ["c_proj", "x"], ["sum"]),
        conv("c_next", "sum"), helper.make_node("Relu", ["c_next"], ["r"]),
        helper.make_node("ReduceMean", ["r", "spatial"], ["pooled"], keepdims=1),
        conv("c_fc1", "pooled"), helper.make_node("Relu", ["c_fc1"], ["q"]),
        conv("c_fc2", "q"), helper.make_node("Sigmoid", ["c_fc2"], ["gate"]),
        helper.make_node("Mul", ["r", "gate"], ["gated"]),
        conv("c_out", "gated"), helper.make_node("Flatten", ["c_out"], ["y"]),
    ]
    inits = [numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), f"{n}_w")
             for n in ("c_proj", "c_next", "c_fc1", "c_fc2", "c_out")]
    inits.append(numpy_helper.from_array(np.array([2, 3], np.int64), "spatial"))
    graph = helper.make_graph(nodes, "convs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert tg.folded_batchnorm_convs(model) == ["c_proj", "c_next"]
    # A mean over the channels is no global pooling: a Conv after it is judged as any other.
    model.graph.initializer[-1].CopyFrom(numpy_helper.from_array(np.array([1], np.int64), "spatial"))
    assert tg.folded_batchnorm_convs(model) == ["c_proj", "c_next", "c_fc1", "c_fc2"]
