#!/usr/bin/env bash
# The project's whole test suite, from a fresh clone: installs the Python test
# dependencies, fetches the ONNX backend corpus, runs the Rust tests (unit,
# integration, corpus, doc) and the onnxruntime cross-checks.
#
# One build, in the debug profile: `cargo test --workspace --no-run` compiles every crate,
# test and example once (what scripts/demo.sh built is reused), with the default
# features (tract included) and, where swtpm and the TSS are installed, the feature tpm;
# the tests run with cargo-nextest where it is installed (else `cargo test`), and the
# Python tests run the binary and the C library that build produced
# (target/debug/onnx-protect, target/capi-test/libonnx_protect.{so,a}).
# Then it builds the Python package's wheel, installs it and runs the Python tests
# (onnxruntime cross-checks, the package, the wheel in a fresh venv, the C ABI example),
# with the JavaScript package's tests beside them.
#
# --quick: a check in a few minutes, of a slice of each (see quick_check below). The Python
# packages go into the interpreter `python3` names, for both: run it in a venv.
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0
case "$*" in
  "") ;;
  --quick) quick=1 ;;
  *) echo "usage: $0 [--quick]" >&2; exit 2 ;;
esac
step() { echo "== $*   [${SECONDS}s so far]"; }
# What only waits on the network (Python packages and torch, the corpus, npm packages, the
# wheel tools, crates) runs in the background while the system packages install and the
# tests compile: the build keeps both cores busy, the downloads do not. Each background job
# logs to $logs/NAME.log; `await NAME` waits for it and, if it failed, prints its log and
# stops here.
logs=${CARGO_TARGET_DIR:-target}/test-logs
mkdir -p "$logs"
declare -A bg_pid=()
# A failed step stops the background jobs too.
trap 'kill "${bg_pid[@]}" 2>/dev/null || true' EXIT
background() {
  local name=$1; shift
  ( set -euo pipefail; "$@" ) >"$logs/$name.log" 2>&1 &
  bg_pid[$name]=$!
}
await() {
  local name=$1
  if ! wait "${bg_pid[$name]}"; then
    echo "== $name failed (log: $logs/$name.log):" >&2
    tail -n 40 "$logs/$name.log" >&2
    exit 1
  fi
  echo "   ($name ready at ${SECONDS}s)"
}
# The packages are installed by uv (from PyPI, into the interpreter the tests run): it
# downloads in parallel and unpacks the 4 GB of torch's wheels in a third of pip's time.
pip_install() {
  python3 -m uv pip install --quiet --system --python "$(python3 -c 'import sys; print(sys.executable)')" "$@"
}
python_test_packages() {
  python3 -m pip install --quiet --disable-pip-version-check uv==0.13.9
  pip_install -r tests/requirements.txt
}
python_packages() {
  python_test_packages
  # The corpus is described with the onnx package installed just above.
  bash scripts/fetch-corpus.sh
  # torch (for onnx_protect.export's tests) only where none >= 2.1 is installed: from PyPI,
  # torch for Linux x86-64 brings its CUDA libraries (about 4 GB). To use the CPU-only build,
  # install it first from PyTorch's CPU index (README); an installed torch is kept.
  if python3 -c 'import sys, torch; sys.exit(tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) < (2, 1))' 2>/dev/null; then
    echo "torch $(python3 -c 'import torch; print(torch.__version__)') is installed: kept"
    # torchvision for the assess tests of standard architectures: the pinned build where the
    # kept torch is the one it was built for (no torch replaced), else those tests skip.
    if ! python3 -c 'import torchvision' 2>/dev/null \
      && python3 -c 'import sys, torch; sys.exit(not torch.__version__.startswith("2.9.1"))' 2>/dev/null; then
      pip_install --no-deps "$(grep '^torchvision==' tests/requirements-torch.txt)" && pip_install pillow==13.0.0
    fi
  else
    pip_install -r tests/requirements-torch.txt
  fi
}
# The quick check: one build of the binary as scripts/demo.sh builds it (debug, without default
# features, so without tract: the tests of `run`, `assess` and policy search are left out), its
# integration tests and the Python package's wheel (dev profile, into target/wheels-test as
# below); then the binary's integration tests but the sweeps over every byte of a model and
# those of the ONNX backend corpus, eight Python test files (no torch is installed for them:
# the one test that uses it skips without it) and seven JavaScript test files beside them. No
# system packages, corpus or TPM.
quick_check() {
  step "quick check. background: python test packages (no torch), wheel tools, npm packages (logs in $logs)"
  background python python_test_packages
  background wheel-tools bash scripts/build-wheel.sh --tools-only
  local have_node=0
  if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
    have_node=1
    # npm ci empties node_modules first: only when the lock file is newer than the install.
    if [ ! js/node_modules/.package-lock.json -nt js/package-lock.json ]; then
      background npm bash -c 'cd js && npm ci --no-audit --no-fund --loglevel=error'
    else
      background npm true
    fi
  fi
  step "build: the binary (debug, --no-default-features, as scripts/demo.sh) and its integration tests"
  cargo test --no-default-features -p onnx-protect --test integration --no-run
  step "build: the python package (scripts/build-wheel.sh --dev)"
  await wheel-tools
  local wheels=${CARGO_TARGET_DIR:-target}/wheels-test
  bash scripts/build-wheel.sh --dev -o "$wheels"
  await python
  python3 -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps "$wheels"/onnx_protect-*.whl
  step "rust: the command line's integration tests, but the long byte sweeps and those needing tract or the corpus"
  cargo test --no-default-features -p onnx-protect --test integration -- \
    --skip every_changed_byte --skip one_byte_in_every_page --skip a_killed_batch --skip policy:: --skip corpus
  step "python tests (a slice), and javascript tests (a slice) beside them"
  export ONNX_PROTECT_BIN=$(realpath "${CARGO_TARGET_DIR:-target}/debug/onnx-protect")
  if [ "$have_node" = 1 ]; then
    await npm
    background js bash -c 'cd js && npm run build && node --test --test-concurrency=1 test/errors.test.mjs \
      test/vectors.test.mjs test/models.test.mjs test/session.test.mjs test/licences.test.mjs test/original-names.test.mjs test/lock.test.mjs'
  else
    echo "SKIP javascript tests: node and npm are not installed" >&2
  fi
  python3 -m pytest -q -n auto -rs tests/python/test_package.py tests/python/test_package_keywords.py \
    tests/python/test_docs.py tests/python/test_cross_v2.py tests/python/test_bundle_interop.py \
    tests/python/test_spec_decryptor.py tests/python/test_runtime.py tests/python/test_memory.py
  if [ "$have_node" = 1 ]; then
    await js
    cat "$logs/js.log"
  fi
  step "done (quick check)"
}
if [ "$quick" = 1 ]; then
  quick_check
  exit 0
fi
step "background: crates, python test packages, corpus, wheel tools, npm packages (logs in $logs)"
background crates cargo fetch --locked
background python python_packages
background wheel-tools bash scripts/build-wheel.sh --tools-only
have_node=0
if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
  have_node=1
  # onnxruntime-node bundles its CPU binaries; js/.npmrc skips its CUDA download.
  background npm bash -c 'cd js && npm ci --no-audit --no-fund --loglevel=error'
fi
step "system packages (softhsm2: PKCS#11 tests; swtpm, libtss2-dev: TPM tests; chromium: JS tests)"
# softhsm2 is the PKCS#11 tests' token; swtpm the software TPM the TPM tests start on local
# ports (each its own state); libtss2-dev the TSS 2.0 the cargo features tss/tpm link to;
# chromium runs the JavaScript package's browser test. Whatever is missing is installed
# with one `apt-get update` and one `apt-get install` (without recommended packages).
missing=()
command -v softhsm2-util >/dev/null 2>&1 || missing+=(softhsm2)
command -v swtpm >/dev/null 2>&1 || missing+=(swtpm swtpm-tools)
command -v pkg-config >/dev/null 2>&1 && pkg-config --exists tss2-esys 2>/dev/null || missing+=(libtss2-dev pkg-config)
if [ "$have_node" = 1 ] && ! command -v chromium >/dev/null 2>&1; then
  missing+=(chromium)
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "${missing[*]} missing and cannot be installed here (not root, or no apt-get): the tests that need them skip" >&2
  fi
fi
if command -v swtpm >/dev/null 2>&1 && pkg-config --exists tss2-esys 2>/dev/null; then
  TPM_TESTS=1
else
  TPM_TESTS=0
  echo "swtpm or libtss2-dev is missing: the TPM tests will skip" >&2
fi
step "cargo test --workspace (unit, integration, corpus and doc tests)"
# crates/ort's tests open the libonnxruntime of the onnxruntime wheel installed above:
# here a missing library is a failure, not a skip. The test plugin age-plugin-onnxtest is a
# binary of the workspace: its absence is a failure.
export ONNX_PROTECT_REQUIRE_ORT=1
features=()
if [ "$TPM_TESTS" = 1 ]; then
  # One build with the final features: onnx-protect-tpm's tests run against swtpm (feature
  # tss), and the binary and libonnx_protect that the Python tests below use
  # (tests/python/test_tpm_cli.py, test_package_device_keys.py, test_package_capi.py) are
  # this build's, with the feature tpm. A second cargo command with other features (or
  # only some packages) would compile most of the workspace again.
  features=(--features onnx-protect/tpm,onnx-protect-capi/tpm)
  export ONNX_PROTECT_REQUIRE_SWTPM=1
fi
await crates
cargo test --workspace "${features[@]}" --no-run
step "cargo test: running"
await python
# cargo-nextest, where installed, runs the tests of every test binary in one pool (one per
# core) rather than binary after binary; then the doc tests, which it does not run.
export ONNX_PROTECT_REQUIRE_TEST_PLUGIN=1
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace "${features[@]}" --no-fail-fast --status-level fail
  cargo test --workspace "${features[@]}" --doc
else
  cargo test --workspace "${features[@]}"
fi
# The C library and the Node addon that build made (cargo test leaves them in
# target/debug/deps, where its JSON messages name them): the C library copied to
# target/capi-test for the C tests below, the addon (crates/node, the JavaScript package's
# native engine) to js/native/ as js/scripts/build-native.sh puts it.
capi_dir=${CARGO_TARGET_DIR:-target}/capi-test
mkdir -p "$capi_dir"
addon=
if [ "$have_node" = 1 ]; then
  mkdir -p js/native
  addon=js/native/onnx_protect.$(node -p 'process.platform + "-" + process.arch').node
fi
cargo test --workspace "${features[@]}" --no-run --message-format=json 2>/dev/null | python3 -c '
import json, shutil, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") != "compiler-artifact" or "cdylib" not in m["target"]["kind"] or m["profile"]["test"]:
        continue
    for f in m["filenames"]:
        if m["package_id"].find("crates/capi") >= 0 and f.endswith((".so", ".a")):
            shutil.copy(f, sys.argv[1])
        elif sys.argv[2] and m["package_id"].find("crates/node") >= 0 and f.endswith(".so"):
            shutil.copy(f, sys.argv[2] + ".tmp")
            shutil.move(sys.argv[2] + ".tmp", sys.argv[2])
' "$capi_dir" "$addon"
[ -f "$capi_dir/libonnx_protect.so" ] && [ -f "$capi_dir/libonnx_protect.a" ] \
  || { echo "cargo test built no libonnx_protect" >&2; exit 1; }
if [ -n "$addon" ]; then
  [ -f "$addon" ] || { echo "cargo test built no Node addon ($addon)" >&2; exit 1; }
  # The JavaScript tests compare the native engine with the package's own: here a missing
  # addon is a failure, not a skip.
  export ONNX_PROTECT_REQUIRE_NATIVE=1
fi
export ONNX_PROTECT_CAPI_LIBDIR=$(realpath "$capi_dir")
step "onnxruntime cross-checks"
export ONNX_PROTECT_BIN=$(realpath "${CARGO_TARGET_DIR:-target}/debug/onnx-protect")
[ -x "$ONNX_PROTECT_BIN" ] || { echo "no $ONNX_PROTECT_BIN after cargo test" >&2; exit 1; }
step "python package (wheel and sdist: scripts/build-wheel.sh --dev --sdist)"
# The wheel the README shows (abi3, manylinux-audited, twine-checked), built by maturin in
# the dev profile so it reuses what `cargo test` just compiled (users get the release
# build), and installed into the test interpreter; tests/python/test_package*.py import
# it, and tests/python/test_wheel.py installs it again into a fresh venv without Rust.
export ONNX_PROTECT_WHEEL_DIR=${CARGO_TARGET_DIR:-target}/wheels-test
await wheel-tools
bash scripts/build-wheel.sh --dev --sdist -o "$ONNX_PROTECT_WHEEL_DIR"
python3 -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps \
  "$ONNX_PROTECT_WHEEL_DIR"/onnx_protect-*.whl
if [ "$TPM_TESTS" = 1 ]; then
  # With the TPM tests, the package under test is then the same build with the feature tpm
  # (TPM key files as identities; it links the system's TSS, so it is not the wheel).
  tpm_wheels=${CARGO_TARGET_DIR:-target}/wheels-tpm
  bash scripts/build-wheel.sh --dev --tpm -o "$tpm_wheels"
  python3 -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps \
    "$tpm_wheels"/onnx_protect-*.whl
fi
step "pytest, and the javascript package's tests beside it (js/: Node, headless Chromium)"
# The JavaScript tests (mostly one core) run in the background while pytest runs one worker
# per core (pytest-xdist); their output is printed once pytest is done.
if [ "$have_node" = 1 ]; then
  await npm
  background js bash -c 'cd js && npm test && node test-browser/run.mjs'
else
  echo "SKIP javascript tests: node and npm are not installed" >&2
fi
# -rs names each skip and its reason; --durations the slowest tests.
python3 -m pytest -q -n auto -rs --durations=15 tests/python
if [ "$have_node" = 1 ]; then
  await js
  cat "$logs/js.log"
fi
step "done"
