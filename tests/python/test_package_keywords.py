"""Keyword arguments of the package's functions (docs/python.md#errors): a name a function
does not take raises TypeError before anything runs, naming it and the closest name it
takes; InferenceSession hands on to onnxruntime only the names onnxruntime's
InferenceSession reads, and export those of torch.onnx.export."""
import inspect
import pathlib
import re

import numpy as np
import onnxruntime
import pytest

import onnx_protect as op

ROOT = pathlib.Path(__file__).resolve().parents[2]
MLP = ROOT / "fixtures" / "digits" / "mlp.onnx"


@pytest.fixture(scope="module")
def protected(tmp_path_factory):
    """(protected model, key file) of the digits MLP."""
    d = tmp_path_factory.mktemp("kw")
    op.keygen(d / "k.key")
    op.encrypt(MLP, d / "p.onnx", key_file=d / "k.key")
    return d / "p.onnx", d / "k.key"


def refused(call, name, suggestion):
    with pytest.raises(TypeError) as e:
        call()
    msg = str(e.value)
    assert f"unexpected keyword argument {name!r}" in msg, msg
    if suggestion:
        assert msg.endswith(f"did you mean {suggestion!r}?"), msg
    else:
        assert "did you mean" not in msg, msg


def test_a_mistyped_key_argument_is_named_in_every_function(protected, tmp_path):
    p, k = protected
    refused(lambda: op.InferenceSession(p, keyfile=k), "keyfile", "key_file")
    refused(lambda: op.load(p, keyfile=k), "keyfile", "key_file")
    refused(lambda: op.decrypt(p, tmp_path / "d.onnx", keyfile=k), "keyfile", "key_file")
    refused(lambda: op.verify(p, key_fil=k), "key_fil", "key_file")
    refused(lambda: op.encrypt(MLP, tmp_path / "e.onnx", keyfile=k), "keyfile", "key_file")
    refused(lambda: op.encrypt(MLP, tmp_path / "e.onnx", key_file=k, coeficient=0.5), "coeficient", "coefficient")
    refused(lambda: op.load(p, key_file=k, zzz=1), "zzz", None)
    assert not (tmp_path / "d.onnx").exists() and not (tmp_path / "e.onnx").exists()


def test_genai_config_names_a_mistyped_key_argument(tmp_path):
    """genai.Config (and Model, which calls it) refuses a name it does not take before
    reading the folder."""
    from onnx_protect import genai

    refused(lambda: genai.Config(tmp_path / "absent", keyfile=tmp_path / "k.key"), "keyfile", "key_file")
    refused(lambda: genai.Model(tmp_path / "absent", key_file=tmp_path / "k.key", teir=1), "teir", "tier")


def test_inference_session_hands_on_only_onnxruntimes_own_names(protected):
    p, k = protected
    refused(lambda: op.InferenceSession(p, key_file=k, providrs=["CPUExecutionProvider"]), "providrs", "providers")
    refused(lambda: op.InferenceSession(p, key_file=k, disable_optimizers=["ConstantFolding"]),
            "disable_optimizers", "disabled_optimizers")
    # onnxruntime's own keyword arguments reach it.
    s = op.InferenceSession(p, key_file=k, providers=["CPUExecutionProvider"], enable_fallback=0,
                            read_config_from_model=0, disabled_optimizers=["ConstantFolding"])
    x = np.zeros((1, 1, 8, 8), dtype=np.float32)
    assert s.run(None, {s.get_inputs()[0].name: x})[0].shape[0] == 1


def test_the_onnxruntime_names_are_those_onnxruntime_reads():
    """Every name the installed onnxruntime's InferenceSession reads from its **kwargs is
    one the package hands on (a new one would otherwise be refused as unknown)."""
    src = inspect.getsource(onnxruntime.InferenceSession.__init__)
    read = set(re.findall(r"""kwargs(?:\.get\(|\[)\s*["'](\w+)["']""", src))
    read |= set(re.findall(r"""["'](\w+)["']\s+in\s+kwargs""", src))
    assert read, "onnxruntime's InferenceSession reads no keyword argument: the pattern is out of date"
    assert read <= set(op._ORT_SESSION_KWARGS), read - set(op._ORT_SESSION_KWARGS)


def test_export_refuses_a_name_torch_does_not_take(protected, tmp_path):
    torch = pytest.importorskip("torch")
    _, k = protected
    net = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
    x = torch.randn(1, 4)
    out = tmp_path / "m.onnx"
    refused(lambda: op.export(net, (x,), out, keyfile=k), "keyfile", "key_file")
    refused(lambda: op.export(net, (x,), out, key_file=k, opset_versio=18), "opset_versio", "opset_version")
    assert not out.exists()
