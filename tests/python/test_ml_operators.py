"""Models with ``ai.onnx.ml`` operators (scikit-learn's through skl2onnx), whose learnt
parameters sit in node attribute lists that the format does not encrypt: ``encrypt`` says so.
A model with nothing else is refused (exit 7, naming why); one with tensor weights beside
(a ``Scaler`` before a ``MatMul``) is protected with a warning naming the nodes, in text and
in the JSON report's ``warnings``, and decrypts to the original byte for byte."""
import json
import os
import pathlib
import subprocess

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("ONNX_PROTECT_BIN", str(ROOT / "target" / "debug" / "onnx-protect"))


def ml_model(path, with_weights):
    nodes = [helper.make_node("Scaler", ["x"], ["s"], "std", domain="ai.onnx.ml", offset=[0.1] * 4, scale=[2.0] * 4)]
    inits, out = [], "s"
    if with_weights:
        nodes.append(helper.make_node("MatMul", ["s", "W"], ["y"]))
        inits.append(numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32), "W"))
        out = "y"
    g = helper.make_graph(nodes, "ml", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
    m.ir_version = 9
    onnx.save(m, path)
    return path


def cli(*args):
    return subprocess.run([BIN, *map(str, args)], capture_output=True, text=True)


@pytest.fixture()
def key(tmp_path):
    k = tmp_path / "k.key"
    assert cli("keygen", "-o", k).returncode == 0
    return k


def test_parameters_in_attribute_lists_are_named_in_a_warning(tmp_path, key):
    plain = ml_model(tmp_path / "mix.onnx", True)
    r = cli("encrypt", plain, "-o", tmp_path / "e.onnx", "--key-file", key)
    assert r.returncode == 0, r.stderr
    assert "warning: 1 ai.onnx.ml node keeps learnt parameters in attribute lists, which are not encrypted" in r.stderr
    assert "std (Scaler)" in r.stderr
    r = cli("encrypt", plain, "--dry-run", "--json")
    report = json.loads(r.stdout)
    assert any("attribute lists" in w and "std (Scaler)" in w for w in report["warnings"]), report["warnings"]
    assert report["encrypted_bytes"] == report["weight_bytes"] == 48
    assert cli("decrypt", tmp_path / "e.onnx", "-o", tmp_path / "d.onnx", "--key-file", key).returncode == 0
    assert (tmp_path / "d.onnx").read_bytes() == plain.read_bytes()


def test_a_model_whose_parameters_are_all_in_attribute_lists_is_refused_saying_why(tmp_path, key):
    plain = ml_model(tmp_path / "scaler.onnx", False)
    r = cli("encrypt", plain, "-o", tmp_path / "e.onnx", "--key-file", key)
    assert r.returncode == 7, r.stderr
    assert "parameters kept in node attribute lists" in r.stderr and not (tmp_path / "e.onnx").exists()
