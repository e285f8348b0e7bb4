"""Device-bound recipients end to end: `keygen --tpm`, `encrypt --recipient onnx-protect-tpm1…`,
`decrypt --identity KEYFILE` against software TPMs (swtpm on local TCP ports, each with its
own state), and a model wrapped for one TPM refused by another.

Needs the binary built with the cargo feature `tpm` (scripts/test.sh builds it) and swtpm.
Without them the tests skip, saying why, unless ONNX_PROTECT_REQUIRE_SWTPM=1 (set by
scripts/test.sh once it installed both), which makes their absence a failure.
"""

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("ONNX_PROTECT_BIN", str(ROOT / "target" / "debug" / "onnx-protect"))
MODEL = ROOT / "fixtures" / "models" / "cnn_torch" / "model.onnx"
REQUIRED = os.environ.get("ONNX_PROTECT_REQUIRE_SWTPM") == "1"


def unavailable(why):
    if REQUIRED:
        pytest.fail(f"{why} (ONNX_PROTECT_REQUIRE_SWTPM=1)")
    pytest.skip(why)


def free_port_pair():
    while True:
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                    return port
                except OSError:
                    continue


class SwTpm:
    """A swtpm process on a state directory; stopped (by its pid) on close."""

    def __init__(self, state):
        state.mkdir(parents=True, exist_ok=True)
        for _ in range(10):
            port = free_port_pair()
            self.proc = subprocess.Popen(
                ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={state}",
                 "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
                 "--ctrl", f"type=tcp,port={port + 1},bindaddr=127.0.0.1",
                 "--flags", "not-need-init,startup-clear"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.tcti = f"swtpm:host=127.0.0.1,port={port}"
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    return
                except OSError:
                    time.sleep(0.02)
            self.close()
        raise RuntimeError("swtpm did not start")

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def tpms(tmp_path):
    if shutil.which("swtpm") is None:
        unavailable("swtpm is not installed (Debian package swtpm)")
    if not os.access(BIN, os.X_OK):
        unavailable(f"no binary at {BIN}")
    started = []

    def start(name):
        t = SwTpm(tmp_path / name)
        started.append(t)
        return t

    yield start
    for t in started:
        t.close()


def run(args, tcti, check=True):
    env = dict(os.environ, ONNX_PROTECT_TPM_TCTI=tcti)
    p = subprocess.run([BIN, *map(str, args)], capture_output=True, text=True, env=env)
    if check and p.returncode != 0:
        if "built without TPM support" in p.stderr:
            unavailable("the binary was built without the cargo feature tpm")
        raise AssertionError(f"{args}: exit {p.returncode}: {p.stderr}")
    return p


def test_a_model_for_a_tpm_opens_on_that_tpm_only(tpms, tmp_path):
    a, b = tpms("a"), tpms("b")
    key = tmp_path / "device.tpmkey"
    out = run(["keygen", "--tpm", "-o", key, "--json"], a.tcti)
    recipient = __import__("json").loads(out.stdout)["recipient"]
    assert recipient.startswith("onnx-protect-tpm1")
    assert (key.stat().st_mode & 0o777) == 0o600
    # The publisher needs only the recipient string: no TPM at encryption.
    protected = tmp_path / "p.onnx"
    run(["encrypt", MODEL, "-o", protected, "--recipient", recipient, "-q"], "swtpm:host=127.0.0.1,port=9")
    plain = tmp_path / "plain.onnx"
    run(["decrypt", protected, "-o", plain, "--identity", key, "-q"], a.tcti)
    assert plain.read_bytes() == MODEL.read_bytes()
    # The key file and the model copied to another machine (another TPM state): refused.
    other = tmp_path / "other.onnx"
    p = run(["decrypt", protected, "-o", other, "--identity", key], b.tcti, check=False)
    assert p.returncode == 4, p.stderr
    assert "is not in this TPM" in p.stderr, p.stderr
    assert not other.exists()
    # The other machine's own TPM key: wrong key.
    key_b = tmp_path / "b.tpmkey"
    run(["keygen", "--tpm", "-o", key_b, "-q"], b.tcti)
    p = run(["decrypt", protected, "-o", other, "--identity", key_b], b.tcti, check=False)
    assert p.returncode == 4, p.stderr
    assert not other.exists()


def test_a_persistent_key_and_keygen_refusals(tpms, tmp_path):
    a = tpms("a")
    key = tmp_path / "persistent.tpmkey"
    out = run(["keygen", "--tpm", "--tpm-handle", "0x81000123", "-o", key], a.tcti)
    assert "onnx-protect-tpm1" in out.stdout
    assert "persistent 0x81000123" in key.read_text()
    recipient = next(l.split()[1] for l in key.read_text().splitlines() if l.startswith("onnx-protect-tpm-key-v1"))
    protected = tmp_path / "p.onnx"
    run(["encrypt", MODEL, "-o", protected, "--recipient", f"1:{recipient}", "-q"], a.tcti)
    plain = tmp_path / "plain.onnx"
    run(["decrypt", protected, "-o", plain, "--identity", key, "-q"], a.tcti)
    assert plain.read_bytes() == MODEL.read_bytes()
    # Never over an existing file; a handle outside the persistent range is a usage error.
    p = run(["keygen", "--tpm", "-o", key], a.tcti, check=False)
    assert p.returncode != 0 and "exists" in p.stderr, p.stderr
    p = run(["keygen", "--tpm", "--tpm-handle", "0x80000000", "-o", tmp_path / "x"], a.tcti, check=False)
    assert p.returncode == 2, p.stderr
    # No TPM where the TCTI points: exit 4, nothing written.
    p = run(["keygen", "--tpm", "-o", tmp_path / "y"], "swtpm:host=127.0.0.1,port=9", check=False)
    assert p.returncode == 4 and "cannot reach the TPM" in p.stderr, p.stderr
    assert not (tmp_path / "y").exists()
