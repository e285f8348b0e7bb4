#!/usr/bin/env bash
# The project's whole test suite, from a fresh clone: installs the Python test
# dependencies, fetches the ONNX backend corpus, runs the Rust tests (unit,
# integration, corpus, doc) and the onnxruntime cross-checks.
#
# One build, in the debug profile: `cargo test --workspace` compiles every crate,
# test and example once (what scripts/demo.sh built is reused), and the Python
# tests run the binary that build produced (target/debug/onnx-protect, with the
# default features, tract included).
# Then it builds the Python package's wheel, installs it and runs the Python tests
# (onnxruntime cross-checks, the package, the wheel in a fresh venv, the C ABI example).
set -euo pipefail
cd "$(dirname "$0")/.."
step() { echo "== $*   [${SECONDS}s so far]"; }
step "system packages (softhsm2: the PKCS#11 tests' token)"
if ! command -v softhsm2-util >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq softhsm2
  else
    echo "softhsm2 is missing and cannot be installed here (not root, or no apt-get): the PKCS#11 tests will skip" >&2
  fi
fi
step "system packages (swtpm, libtss2-dev: the TPM tests)"
# swtpm is the software TPM the TPM tests start on local ports (each its own state);
# libtss2-dev is the TSS 2.0 the cargo features tss/tpm link to.
if ! command -v swtpm >/dev/null 2>&1 || ! pkg-config --exists tss2-esys 2>/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq swtpm swtpm-tools libtss2-dev pkg-config
  fi
fi
if command -v swtpm >/dev/null 2>&1 && pkg-config --exists tss2-esys 2>/dev/null; then
  TPM_TESTS=1
else
  TPM_TESTS=0
  echo "swtpm or libtss2-dev is missing and cannot be installed here (not root, or no apt-get): the TPM tests will skip" >&2
fi
step "python test dependencies"
python3 -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
# torch (for onnx_protect.export's tests) only where none >= 2.1 is installed: from PyPI,
# torch for Linux x86-64 brings its CUDA libraries (about 4 GB). To use the CPU-only build,
# install it first from PyTorch's CPU index (README); an installed torch is kept.
if python3 -c 'import sys, torch; sys.exit(tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) < (2, 1))' 2>/dev/null; then
  echo "torch $(python3 -c 'import torch; print(torch.__version__)') is installed: kept"
else
  python3 -m pip install --quiet --disable-pip-version-check -r tests/requirements-torch.txt
fi
step "corpus"
bash scripts/fetch-corpus.sh
step "cargo test --workspace (unit, integration, corpus and doc tests)"
# crates/ort's tests open the libonnxruntime of the onnxruntime wheel installed above:
# here a missing library is a failure, not a skip. The test plugin age-plugin-onnxtest is a
# binary of the workspace: its absence is a failure.
export ONNX_PROTECT_REQUIRE_ORT=1
ONNX_PROTECT_REQUIRE_TEST_PLUGIN=1 cargo test --workspace
if [ "$TPM_TESTS" = 1 ]; then
  step "TPM: onnx-protect-tpm against swtpm (feature tss); the binary and the C ABI with feature tpm"
  # The Python tests below then run a binary and a libonnx_protect with TPM support
  # (tests/python/test_tpm_cli.py, test_package_device_keys.py).
  export ONNX_PROTECT_REQUIRE_SWTPM=1
  cargo test -p onnx-protect-tpm --features tss
  cargo build -p onnx-protect -p onnx-protect-capi --features onnx-protect/tpm,onnx-protect-capi/tpm
fi
step "onnxruntime cross-checks"
export ONNX_PROTECT_BIN=$(realpath "${CARGO_TARGET_DIR:-target}/debug/onnx-protect")
[ -x "$ONNX_PROTECT_BIN" ] || { echo "no $ONNX_PROTECT_BIN after cargo test" >&2; exit 1; }
step "python package (wheel and sdist: scripts/build-wheel.sh --dev --sdist)"
# The wheel the README shows (abi3, manylinux-audited, twine-checked), built by maturin in
# the dev profile so it reuses what `cargo test` just compiled (users get the release
# build), and installed into the test interpreter; tests/python/test_package*.py import
# it, and tests/python/test_wheel.py installs it again into a fresh venv without Rust.
# A folder of its own: the TPM build below goes through maturin's PEP 517 backend,
# which leaves its (non-manylinux) wheel in target/wheels.
export ONNX_PROTECT_WHEEL_DIR=${CARGO_TARGET_DIR:-target}/wheels-test
bash scripts/build-wheel.sh --dev --sdist -o "$ONNX_PROTECT_WHEEL_DIR"
python3 -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps \
  "$ONNX_PROTECT_WHEEL_DIR"/onnx_protect-*.whl
if [ "$TPM_TESTS" = 1 ]; then
  # With the TPM tests, the package under test is then the same build with the feature tpm
  # (TPM key files as identities; it links the system's TSS, so it is not the wheel).
  MATURIN_PEP517_ARGS="--profile dev --features tpm" python3 -m pip install --quiet \
    --disable-pip-version-check --force-reinstall --no-deps ./crates/python
fi
step "pytest"
export ONNX_PROTECT_REQUIRE_TEST_PLUGIN=1
python3 -m pytest -q tests/python
step "javascript package (js/: npm ci, node tests, headless Chromium)"
if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
  if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
  # onnxruntime-node bundles its CPU binaries; js/.npmrc skips its CUDA download.
  (cd js && npm ci --no-audit --no-fund --loglevel=error && npm test && node test-browser/run.mjs)
else
  echo "SKIP javascript tests: node and npm are not installed" >&2
fi
step "done"
