"""Every code block of README.md and docs/python.md runs as written: Python blocks in a
fresh interpreter in an empty directory, then once more there (over the files of the first
run), shell blocks in bash with the built `onnx-protect` on PATH in a directory holding
`model.onnx` (the digits MLP). A block that must not run here
(it installs packages, or is the test command itself) is preceded by a line
`<!-- not run: REASON -->`; there are at most five. docs/capi.md's build lines run
verbatim too."""
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "docs" / "python.md"]
SKIP = re.compile(r"^<!-- not run: (.+) -->$")


def blocks(path):
    """(language, code, reason it is not run or None, line) of each fenced block."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out, i = [], 0
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        prev = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        skip = SKIP.match(prev)
        out.append((m.group(1), "\n".join(lines[i + 1:j]) + "\n", skip.group(1) if skip else None, i + 1))
        i = j + 1
    return out


ALL = [(doc, *b) for doc in DOCS for b in blocks(doc)]


def binary_dir():
    exe = os.environ.get("ONNX_PROTECT_BIN") or str(ROOT / "target" / "debug" / "onnx-protect")
    return str(pathlib.Path(exe).resolve().parent)


def test_few_blocks_are_not_run_and_each_says_why():
    skipped = [(d.name, line, reason) for d, _, _, reason, line in ALL if reason]
    assert len(skipped) <= 5, skipped
    assert all(r.strip() for *_, r in skipped)
    assert all(lang in ("python", "sh") for _, lang, *_ in ALL), "every block names python or sh"


@pytest.mark.parametrize("doc,lang,code,reason,line", [b for b in ALL if not b[3]],
                         ids=lambda v: v if isinstance(v, (int, str)) and len(str(v)) < 40 else None)
def test_block_runs(doc, lang, code, reason, line, tmp_path):
    if lang == "sh":
        shutil.copy(ROOT / "fixtures" / "digits" / "mlp.onnx", tmp_path / "model.onnx")
    # TMPDIR: what a block writes to a temporary directory stays in the test's own.
    env = dict(os.environ, PATH=binary_dir() + os.pathsep + os.environ["PATH"], TMPDIR=str(tmp_path))
    if lang == "python":
        cmd = [sys.executable, "-c", code]
    else:
        cmd = ["bash", "-euo", "pipefail", "-c", code]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{doc.name}:{line} failed:\n{r.stdout}\n{r.stderr}"
    if lang == "python":
        # Run again where the first run left its files, as a reader trying it twice does.
        r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"{doc.name}:{line} failed when run a second time:\n{r.stdout}\n{r.stderr}"


def capi_block():
    """The shell block of docs/capi.md's build section."""
    sh = [code for lang, code, reason, _ in blocks(ROOT / "docs" / "capi.md") if lang == "sh" and not reason]
    assert len(sh) == 1, "docs/capi.md has one build block"
    return sh[0]


def test_capi_build_lines_run_verbatim(tmp_path):
    """The documented build (install into a prefix, pkg-config, the rpath) gives a program
    that starts from any directory, with LD_LIBRARY_PATH unset."""
    if not shutil.which(os.environ.get("CC", "cc")) or not shutil.which("pkg-config"):
        pytest.skip("no C compiler or pkg-config on PATH")
    code = capi_block()
    env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "PKG_CONFIG_PATH")}
    # HOME is a temporary directory; cargo and rustup keep theirs, and the dev build that
    # `cargo test` made is installed (the release build is the same code, minutes longer):
    # as it is (ONNX_PROTECT_CAPI_BUILT) when scripts/test.sh names it and it has the default
    # features, which these lines are for (with the feature tpm, a static link also needs the
    # TSS); else install-capi.sh builds it.
    home = pathlib.Path.home()
    env.setdefault("CARGO_HOME", str(home / ".cargo"))
    env.setdefault("RUSTUP_HOME", str(home / ".rustup"))
    env.setdefault("ONNX_PROTECT_CAPI_PROFILE", "dev")
    built = os.environ.get("ONNX_PROTECT_CAPI_LIBDIR")
    if built and b"libtss2-esys.so" not in (pathlib.Path(built) / "libonnx_protect.so").read_bytes():
        env.setdefault("ONNX_PROTECT_CAPI_BUILT", built)
    env["HOME"] = str(tmp_path)
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=1200)
    assert r.returncode == 0, r.stdout + r.stderr
    progs = [ROOT / "decrypt_model", ROOT / "decrypt_model_static"]
    try:
        for prog in progs:
            elsewhere = subprocess.run([str(prog)], cwd=tmp_path, env=env, capture_output=True, text=True)
            assert elsewhere.returncode == 100 and "usage" in (elsewhere.stdout + elsewhere.stderr).lower()
    finally:
        for prog in progs:
            prog.unlink(missing_ok=True)
