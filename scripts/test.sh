#!/usr/bin/env bash
# The project's whole test suite, from a fresh clone: installs the Python test
# dependencies, fetches the ONNX backend corpus, runs the Rust tests (unit,
# doc, integration, corpus), builds and installs the Python package, and runs the
# Python tests (onnxruntime cross-checks, the package, the C ABI example).
set -euo pipefail
cd "$(dirname "$0")/.."
step() { echo "== $*   [${SECONDS}s so far]"; }
step "python test dependencies"
python3 -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
step "corpus"
bash scripts/fetch-corpus.sh
step "cargo test"
cargo test --workspace --all-targets
step "cargo test --doc"
cargo test --workspace --doc
step "onnxruntime cross-checks"
# The binary the Python tests run. Built with the same targets (so the same feature
# resolution) as `cargo test` above: a plain `cargo build` resolves dependency
# features without the dev-dependencies and rebuilt part of the tree (~4 min here).
cargo build --quiet --workspace --all-targets
step "python package (pip install ./crates/python)"
# The package the README shows, built by maturin (a release build of the Rust crates)
# and installed into the test interpreter; tests/python/test_package*.py import it.
python3 -m pip install --quiet --disable-pip-version-check ./crates/python
step "pytest"
python3 -m pytest -q tests/python
step "done"
