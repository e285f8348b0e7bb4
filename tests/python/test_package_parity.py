"""The package keeps the command line's rules and speaks Python: the passphrase minimum
holds in encrypt and export, and no error message names a command-line flag or the
anonymous file export writes into."""
import re
import shutil
import pathlib

import pytest

import onnx_protect as op

ROOT = pathlib.Path(__file__).resolve().parents[2]
DIGITS = ROOT / "fixtures" / "digits" / "mlp.onnx"
FLAG = re.compile(r"(?<![\w-])--[a-z]")


def test_encrypt_refuses_a_short_passphrase_unless_allowed(tmp_path):
    with pytest.raises(op.InvalidKey, match="7 characters.*at least 12.*allow_short_passphrase") as e:
        op.encrypt(DIGITS, tmp_path / "m.onnx", passphrase="hunter2")
    assert not FLAG.search(str(e.value))
    assert not (tmp_path / "m.onnx").exists()
    with pytest.raises(op.InvalidKey, match="at least 12"):
        op.encrypt(DIGITS, tmp_path / "m.onnx", key=op.Key.from_passphrase(b"short"))
    op.encrypt(DIGITS, tmp_path / "m.onnx", passphrase="hunter2", allow_short_passphrase=True)
    assert op.load(tmp_path / "m.onnx", passphrase="hunter2").model == DIGITS.read_bytes()
    # Twelve characters (not bytes) are enough: "passwörter12" has 12.
    op.encrypt(DIGITS, tmp_path / "u.onnx", passphrase="passwörter12")


def test_export_refuses_a_short_passphrase_before_torch_runs(tmp_path):
    class Boom:
        """Not a torch module: reaching torch.onnx.export would fail differently."""

    pytest.importorskip("torch")
    with pytest.raises(op.InvalidKey, match="at least 12"):
        op.export(Boom(), (), tmp_path / "m.onnx", passphrase="short")
    assert list(tmp_path.iterdir()) == []


def test_export_errors_never_name_the_anonymous_file(tmp_path):
    torch = pytest.importorskip("torch")
    net = torch.nn.Sequential(torch.nn.Linear(4, 3))
    with pytest.raises(op.InvalidPolicy) as e:
        op.export(net, (torch.zeros(1, 4),), tmp_path / "m.onnx", key=op.new_key(), overrides={"coefficient": 2.0},
                  dynamo=False)
    assert "/proc/self/fd" not in str(e.value) and "the model exported by torch" in str(e.value)
    assert e.value.kind == "policy"


def test_messages_name_arguments_not_command_line_flags(tmp_path):
    key = op.new_key()
    enc = tmp_path / "m.onnx"
    op.encrypt(DIGITS, enc, key=key)
    messages = []
    for f in (
        lambda: op.encrypt(DIGITS, DIGITS, key=key),  # the output is the input
        lambda: op.decrypt(enc, enc, key=key),
        lambda: op.encrypt(DIGITS, enc, key=key),  # the output exists
        lambda: op.encrypt(DIGITS, tmp_path / "x.onnx", key=key, mode="nope"),
        lambda: op.encrypt(DIGITS, tmp_path / "x.onnx", key=key, coefficient="abc"),
        lambda: op.encrypt(DIGITS, tmp_path / "x.onnx", key=key, subsequences="zero"),
    ):
        with pytest.raises(op.OnnxProtectError) as e:
            f()
        messages.append(str(e.value))
    ext = tmp_path / "ext"
    shutil.copytree(ROOT / "fixtures" / "models" / "external_data", ext)
    try:  # refused while protected copies cannot share their model's folder
        op.encrypt(ext / "model.onnx", ext / "model.enc.onnx", key=key)
    except op.OnnxProtectError as e:
        messages.append(str(e))
    for m in messages:
        assert not FLAG.search(m), m
