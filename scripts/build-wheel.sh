#!/usr/bin/env bash
# Builds the Python package onnx-protect as an abi3 wheel (CPython 3.11+, Linux) and,
# with --sdist, a source distribution; checks them with twine and maturin's
# manylinux audit (auditwheel show prints the result).
#
#   bash scripts/build-wheel.sh [--release | --dev] [--sdist | --tpm] [--keep-symbols] [-o DIR]
#   bash scripts/build-wheel.sh --tools-only
#
# --release (default): the wheel users install (the `wheel` profile of Cargo.toml: release,
# optimised across crates; stripped). --dev: the
# dev profile (scripts/test.sh: it shares `cargo test`'s compiled dependencies). Both are
# audited (maturin's --auditwheel check fails if the library links anything a manylinux
# wheel may not; auditwheel show prints the policy). --tpm: the package with the cargo
# feature tpm (TPM key files as identities), for this machine only: it links the
# system's TSS 2.0 libraries, so it is neither audited nor checked for upload.
# --keep-symbols: the release wheel not stripped, for profiles that name its functions
# (bench/session_profile.py; about 7% larger). Output: DIR
# (default $CARGO_TARGET_DIR/wheels, else target/wheels).
# maturin, twine and auditwheel are installed into target/build-venv when missing
# (--tools-only: only that).
set -euo pipefail
cd "$(dirname "$0")/.."
profile=release sdist=0 tpm=0 tools_only=0 strip=true out=${CARGO_TARGET_DIR:-target}/wheels
while [ $# -gt 0 ]; do
  case "$1" in
    --release) profile=release ;;
    --dev) profile=dev ;;
    --sdist) sdist=1 ;;
    --tpm) tpm=1 ;;
    --keep-symbols) strip=false ;;
    -o) out=$2; shift ;;
    --tools-only) tools_only=1 ;;
    *) echo "usage: $0 [--release | --dev] [--sdist | --tpm] [--keep-symbols] [-o DIR] | --tools-only" >&2; exit 2 ;;
  esac
  shift
done
venv=${CARGO_TARGET_DIR:-target}/build-venv
if [ ! -x "$venv/bin/maturin" ] || [ ! -x "$venv/bin/twine" ] || [ ! -x "$venv/bin/auditwheel" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "maturin>=1.9,<2" twine auditwheel
fi
[ "$tools_only" = 1 ] && exit 0
if [ "$tpm" = 1 ] && [ "$sdist" = 1 ]; then
  echo "$0: --tpm builds a wheel for this machine only; build the sdist without it" >&2
  exit 2
fi
mkdir -p "$out"
rm -f "$out"/onnx_protect-*.whl "$out"/onnx_protect-*.tar.gz
args=(build --manifest-path crates/python/Cargo.toml --out "$out" --interpreter python3)
if [ "$tpm" = 1 ]; then
  args+=(--features tpm --auditwheel skip)
else
  args+=(--auditwheel check)
fi
if [ "$profile" = release ]; then
  args+=(--profile wheel --strip "$strip")
else
  args+=(--profile dev)
fi
"$venv/bin/maturin" "${args[@]}"
if [ "$tpm" = 1 ]; then
  ls -l "$out"/onnx_protect-*
  exit 0
fi
if [ "$sdist" = 1 ]; then
  "$venv/bin/maturin" sdist --manifest-path crates/python/Cargo.toml --out "$out"
fi
"$venv/bin/twine" check --strict "$out"/onnx_protect-*
"$venv/bin/auditwheel" show "$out"/onnx_protect-*.whl
ls -l "$out"/onnx_protect-*
