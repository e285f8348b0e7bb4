"""Device-bound recipients end to end: `keygen --tpm`, `encrypt --recipient onnx-protect-tpm1…`,
`decrypt --identity KEYFILE` against software TPMs (swtpm on local TCP ports, each with its
own state), and a model wrapped for one TPM refused by another.

Needs the binary built with the cargo feature `tpm` (scripts/test.sh builds it) and swtpm.
Without them the tests skip, saying why, unless ONNX_PROTECT_REQUIRE_SWTPM=1 (set by
scripts/test.sh once it installed both), which makes their absence a failure.
"""

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
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
            self.port = port
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

    def command(self, code, handles=(), params=b"", owner_auth=True):
        """Sends one TPM 2.0 command (TPM 2.0 Library, part 3) to the TPM's command port:
        `handles` (u32 each), the owner's empty password session when `owner_auth`, then
        `params`. Returns the response's bytes after its 10-byte header; fails on a non-zero
        response code. The tests use it to do what onnx-protect never does itself: set the
        TPM's clock forward, persist an object onnx-protect did not make."""
        body = b"".join(struct.pack(">I", h) for h in handles)
        if owner_auth:
            session = struct.pack(">IHBH", 0x40000009, 0, 0, 0)  # TPM_RS_PW, no nonce, no attrs, empty auth
            body += struct.pack(">I", len(session)) + session
        body += params
        tag = 0x8002 if owner_auth else 0x8001
        cmd = struct.pack(">HII", tag, 10 + len(body), code) + body
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(cmd)
            head = b""
            while len(head) < 10:
                chunk = s.recv(10 - len(head))
                assert chunk, "the TPM closed the connection"
                head += chunk
            _, size, rc = struct.unpack(">HII", head)
            rest = b""
            while len(rest) < size - 10:
                chunk = s.recv(size - 10 - len(rest))
                assert chunk, "the TPM closed the connection"
                rest += chunk
        assert rc == 0, f"TPM command 0x{code:x}: response code 0x{rc:x}"
        return rest

    def clock_set(self, ms):
        """TPM2_ClockSet (owner authorization): the clock forward to `ms` milliseconds."""
        self.command(0x128, [0x40000001], struct.pack(">Q", ms))

    def persist_ecc_signing_key(self, handle):
        """A P-256 ECDSA primary key of the owner hierarchy, made persistent at `handle`
        (TPM2_CreatePrimary, TPM2_EvictControl, TPM2_FlushContext)."""
        attrs = (1 << 1) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 18)  # fixedTPM fixedParent sensitiveDataOrigin userWithAuth sign
        # TPMT_PUBLIC: ECC, SHA-256, attrs, no policy; no symmetric, ECDSA/SHA-256, NIST P-256, no KDF; empty unique.
        public = struct.pack(">HHIH" "H" "HH" "H" "H" "HH", 0x23, 0x0B, attrs, 0, 0x10, 0x18, 0x0B, 0x03, 0x10, 0, 0)
        params = (struct.pack(">HHH", 4, 0, 0) + struct.pack(">H", len(public)) + public
                  + struct.pack(">HI", 0, 0))
        out = self.command(0x131, [0x40000001], params)
        transient = struct.unpack(">I", out[:4])[0]
        self.command(0x120, [0x40000001, transient], struct.pack(">I", handle))
        self.command(0x165, params=struct.pack(">I", transient), owner_auth=False)

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
    # The same handle again: the key already there is named, not replaced nor created.
    again = tmp_path / "again.tpmkey"
    p = run(["keygen", "--tpm", "--tpm-handle", "0x81000123", "-o", again, "--json"], a.tcti)
    assert json.loads(p.stdout)["recipient"] == recipient
    assert "already holds a usable key" in p.stderr, p.stderr
    assert again.read_text() == key.read_text()
    plain.unlink()
    run(["decrypt", protected, "-o", plain, "--identity", again, "-q"], a.tcti)
    assert plain.read_bytes() == MODEL.read_bytes()
    # A handle holding an object that cannot open models (an ECDSA key): refused, no file.
    a.persist_ecc_signing_key(0x81000124)
    p = run(["keygen", "--tpm", "--tpm-handle", "0x81000124", "-o", tmp_path / "sig.tpmkey"], a.tcti, check=False)
    assert p.returncode == 4, p.stderr
    assert "0x81000124 cannot be used" in p.stderr and "not an unrestricted decryption key" in p.stderr, p.stderr
    assert not (tmp_path / "sig.tpmkey").exists()
    # Never over an existing file; a handle outside the persistent range is a usage error.
    p = run(["keygen", "--tpm", "-o", key], a.tcti, check=False)
    assert p.returncode != 0 and "exists" in p.stderr, p.stderr
    p = run(["keygen", "--tpm", "--tpm-handle", "0x80000000", "-o", tmp_path / "x"], a.tcti, check=False)
    assert p.returncode == 2, p.stderr
    # No TPM where the TCTI points: exit 4, nothing written.
    p = run(["keygen", "--tpm", "-o", tmp_path / "y"], "swtpm:host=127.0.0.1,port=9", check=False)
    assert p.returncode == 4 and "cannot reach the TPM" in p.stderr, p.stderr
    assert not (tmp_path / "y").exists()


def test_a_clock_set_back_after_the_last_check_is_caught_by_the_tpm_clock(tpms, tmp_path, monkeypatch):
    """The TPM anchor end to end: a licence check records (wall time, TPM clock); the
    TPM's clock then runs 30 days ahead (TPM2_ClockSet: 30 days of powered time, as if
    they had passed) while the system clock stays where it was, i.e. after the last check
    but weeks before the present the TPM vouches for. The high-water mark cannot see that;
    the TPM anchor refuses it (exit 16), and without the anchor the same check passes."""
    a = tpms("a")
    clock = tmp_path / "clock"
    monkeypatch.setenv("ONNX_PROTECT_LICENCE_CLOCK", str(clock))
    key = tmp_path / "device.tpmkey"
    recipient = json.loads(run(["keygen", "--tpm", "-o", key, "--json"], a.tcti).stdout)["recipient"]
    sk = tmp_path / "pub.sk"
    authority = json.loads(run(["keygen", "--signing", "-o", sk, "--json"], a.tcti).stdout)["signer"]
    enc = tmp_path / "p.onnx"
    run(["encrypt", MODEL, "-o", enc, "--recipient", recipient, "--licence-authority", authority, "-q"], a.tcti)
    lic = tmp_path / "dev.lic"
    run(["licence", "issue", "--sign-key", sk, "--model-of", enc, "--recipient", f"tpm {recipient}",
         "--not-before", "2020-01-01T00:00:00Z", "--not-after", "2099-12-31T23:59:59Z", "-o", lic, "-q"], a.tcti)
    out = tmp_path / "out.onnx"
    decrypt = ["decrypt", enc, "-o", out, "--identity", key, "--licence", lic, "-q"]
    run(decrypt, a.tcti)
    assert out.read_bytes() == MODEL.read_bytes()
    out.unlink()
    state = clock.read_text().splitlines()
    anchor = next(line for line in state if line.startswith("tpm: "))
    recorded_ms = int(anchor.split()[2])  # tpm: WALL CLOCK_MS SOURCE (format.md, appendix C)
    a.clock_set(recorded_ms + 30 * 86400 * 1000)
    p = run(decrypt, a.tcti, check=False)
    assert p.returncode == 16, p.stderr
    assert "the TPM's clock" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not out.exists()
    assert clock.read_text().splitlines() == state, "a refused check records nothing"
    # The high-water mark alone (the state without its TPM anchor) lets the same clock through.
    clock.write_text("".join(line + "\n" for line in state if not line.startswith("tpm: ")))
    run(decrypt, a.tcti)
    assert out.read_bytes() == MODEL.read_bytes()


def test_a_label_locked_model_for_a_tpm_opens_and_runs_in_true_order(tpms, tmp_path):
    """The label lock's seed is sealed under the tier-1 data key, which the TPM's stanza
    opens: `decrypt` gives the original byte for byte and `run` (in memory) its outputs
    in the true class order, with the weights encrypted too or in clear."""
    a = tpms("a")
    key = tmp_path / "device.tpmkey"
    recipient = json.loads(run(["keygen", "--tpm", "-o", key, "--json"], a.tcti).stdout)["recipient"]
    src = ROOT / "fixtures" / "digits" / "cnn.onnx"
    x = ROOT / "fixtures" / "digits" / "test_x.npy"

    def logits(model, *key_args):
        out = tmp_path / f"run-{len(list(tmp_path.iterdir()))}"
        run(["run", model, "--input", x, "--output-dir", out, *key_args], a.tcti)
        return (out / "logits.npy").read_bytes()

    original = logits(src)
    for extra in ([], ["--clear-weights"]):
        locked = tmp_path / f"locked{len(extra)}.onnx"
        run(["encrypt", src, "-o", locked, "--recipient", recipient, "--lock-outputs", "-q", *extra], a.tcti)
        back = tmp_path / f"back{len(extra)}.onnx"
        run(["decrypt", locked, "-o", back, "--identity", key, "-q"], a.tcti)
        assert back.read_bytes() == src.read_bytes()
        assert logits(locked, "--identity", key) == original
        if extra:
            assert logits(locked) != original, "without the key the classes are out of order"


def test_rotating_a_licensed_model_from_one_tpm_to_another(tpms, tmp_path, monkeypatch):
    """docs/shipping.md's rotation: the machine makes a new key; the publisher, with its own
    key file (its stanza in the model) and a licence it issued itself, runs `rewrap --remove
    OLD --recipient NEW`. The new TPM then opens the model with its licence; the old key no
    longer opens it (its stanza is gone), nor does the publisher's rewrap without a licence."""
    old_tpm, new_tpm = tpms("old"), tpms("new")
    monkeypatch.setenv("ONNX_PROTECT_LICENCE_CLOCK", str(tmp_path / "clock"))
    old_key, new_key = tmp_path / "old.tpmkey", tmp_path / "new.tpmkey"
    old_r = json.loads(run(["keygen", "--tpm", "-o", old_key, "--json"], old_tpm.tcti).stdout)["recipient"]
    new_r = json.loads(run(["keygen", "--tpm", "-o", new_key, "--json"], new_tpm.tcti).stdout)["recipient"]
    nowhere = "swtpm:host=127.0.0.1,port=9"
    sk = tmp_path / "pub.sk"
    authority = json.loads(run(["keygen", "--signing", "-o", sk, "--json"], nowhere).stdout)["signer"]
    pub_key = tmp_path / "publisher.key"
    fp = json.loads(run(["keygen", "-o", pub_key, "--json"], nowhere).stdout)["fingerprint"]
    enc = tmp_path / "p.onnx"
    run(["encrypt", MODEL, "-o", enc, "--key-file", pub_key, "--recipient", old_r,
         "--licence-authority", authority, "--model-id", "det", "-q"], nowhere)

    def licence(name, recipient):
        out = tmp_path / name
        run(["licence", "issue", "--sign-key", sk, "--model", "id:det", "--recipient", recipient,
             "--not-before", "2020-01-01T00:00:00Z", "--not-after", "2099-12-31T23:59:59Z", "-o", out, "-q"], nowhere)
        return out

    rotated = tmp_path / "rotated.onnx"
    rewrap = ["rewrap", enc, "-o", rotated, "--key-file", pub_key, "--remove", old_r, "--recipient", new_r, "-q"]
    p = run(rewrap, nowhere, check=False)
    assert p.returncode == 10 and not rotated.exists(), p.stderr
    run([*rewrap, "--licence", licence("publisher.lic", f"key {fp}")], nowhere)
    plain = tmp_path / "plain.onnx"
    run(["decrypt", rotated, "-o", plain, "--identity", new_key, "--licence", licence("new.lic", f"tpm {new_r}"), "-q"],
        new_tpm.tcti)
    assert plain.read_bytes() == MODEL.read_bytes()
    p = run(["decrypt", rotated, "-o", tmp_path / "x.onnx", "--identity", old_key,
             "--licence", licence("old.lic", f"tpm {old_r}")], old_tpm.tcti, check=False)
    assert p.returncode == 4 and "wrong key" in p.stderr, p.stderr
    assert not (tmp_path / "x.onnx").exists()


def test_the_software_tpm_lines_of_keys_md_start_a_tpm_that_opens_models(tmp_path):
    """docs/keys.md's two lines, run as written but for the ports (free ones) and HOME (the
    test's directory), start a TPM the binary reaches through the variable they set: a key
    made there opens a model encrypted for it."""
    if shutil.which("swtpm") is None:
        unavailable("swtpm is not installed (Debian package swtpm)")
    if not os.access(BIN, os.X_OK):
        unavailable(f"no binary at {BIN}")
    text = (ROOT / "docs" / "keys.md").read_text(encoding="utf-8")
    section = text.split("### TPM support and a software TPM", 1)[1]
    lines = section.split("```sh\n", 1)[1].split("```", 1)[0]
    assert "swtpm socket" in lines and "ONNX_PROTECT_TPM_TCTI=" in lines, lines
    port = free_port_pair()
    lines = lines.replace("2321", str(port)).replace("2322", str(port + 1))
    script = lines + """
"$BIN" keygen --tpm -o "$HOME/device.tpmkey" --json > "$HOME/key.json"
r=$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["recipient"])' "$HOME/key.json")
"$BIN" encrypt "$MODEL" -o "$HOME/p.onnx" --recipient "$r" -q
"$BIN" decrypt "$HOME/p.onnx" -o "$HOME/r.onnx" --identity "$HOME/device.tpmkey" -q
"""
    env = dict(os.environ, HOME=str(tmp_path), BIN=BIN, MODEL=str(MODEL), PYTHON=sys.executable)
    env.pop("ONNX_PROTECT_TPM_TCTI", None)
    try:
        p = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=env, capture_output=True, text=True,
                           timeout=120)
    finally:
        pid = tmp_path / "swtpm" / "pid"
        if pid.exists():
            os.kill(int(pid.read_text()), signal.SIGTERM)
    if p.returncode != 0 and "built without TPM support" in p.stderr:
        unavailable("the binary was built without the cargo feature tpm")
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "r.onnx").read_bytes() == MODEL.read_bytes()
