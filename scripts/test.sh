#!/usr/bin/env bash
# The project's whole test suite, from a fresh clone: installs the Python test
# dependencies, fetches the ONNX backend corpus, runs the Rust tests (unit,
# integration, corpus, doc) and the onnxruntime cross-checks.
#
# One build, in the debug profile: `cargo test --workspace` compiles every crate,
# test and example once (what scripts/demo.sh built is reused), and the Python
# tests run the binary that build produced (target/debug/onnx-protect, with the
# default features, tract included).
# Then it builds and installs the Python package and runs the Python tests (onnxruntime
# cross-checks, the package, the C ABI example).
set -euo pipefail
cd "$(dirname "$0")/.."
step() { echo "== $*   [${SECONDS}s so far]"; }
step "python test dependencies"
python3 -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
step "corpus"
bash scripts/fetch-corpus.sh
step "cargo test --workspace (unit, integration, corpus and doc tests)"
cargo test --workspace
step "onnxruntime cross-checks"
export ONNX_PROTECT_BIN=${CARGO_TARGET_DIR:-target}/debug/onnx-protect
[ -x "$ONNX_PROTECT_BIN" ] || { echo "no $ONNX_PROTECT_BIN after cargo test" >&2; exit 1; }
step "python package (pip install ./crates/python)"
# The package the README shows, built by maturin and installed into the test
# interpreter; tests/python/test_package*.py import it. Built in the dev profile here,
# so it reuses what `cargo test` just compiled (users get the release build).
MATURIN_PEP517_ARGS="--profile dev" python3 -m pip install --quiet --disable-pip-version-check ./crates/python
step "pytest"
python3 -m pytest -q tests/python
step "done"
