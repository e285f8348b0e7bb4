#!/usr/bin/env bash
# Builds the native engine (crates/node, the Rust core as a Node addon) and puts it where
# the package looks for it: js/native/onnx_protect.<platform>-<arch>.node.
#
#   bash js/scripts/build-native.sh [--release]
#
# Without --release the dev profile is used (what the tests build). Needs cargo; nothing of
# Node is needed to compile the addon (N-API functions are resolved when it is loaded).
set -euo pipefail
JS=$(cd "$(dirname "$0")/.." && pwd)
cd "$JS/.."
profile=debug
args=()
if [ "${1:-}" = "--release" ]; then profile=release; args=(--release); fi
cargo build -q "${args[@]}" -p onnx-protect-node
case "$(uname -s)" in
  Darwin) lib=libonnx_protect_node.dylib ;;
  MINGW*|MSYS*|CYGWIN*) lib=onnx_protect_node.dll ;;
  *) lib=libonnx_protect_node.so ;;
esac
name=$(node -p 'process.platform + "-" + process.arch')
mkdir -p "$JS/native"
# Copied to a temporary name and renamed: a process that has the addon loaded keeps its file.
cp "${CARGO_TARGET_DIR:-target}/$profile/$lib" "$JS/native/.onnx_protect.$name.node.tmp"
mv -f "$JS/native/.onnx_protect.$name.node.tmp" "$JS/native/onnx_protect.$name.node"
echo "$JS/native/onnx_protect.$name.node"
