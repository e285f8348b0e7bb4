#!/usr/bin/env bash
# The main job on a bundled example model: build, make a key, encrypt the
# PyTorch-exported CNN in fixtures/, show what was encrypted, verify, decrypt,
# and check the restored file is byte-identical to the original.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
BIN=target/release/onnx-protect
OUT=${OUT:-demo-out}
MODEL=fixtures/models/cnn_torch/model.onnx
rm -rf "$OUT" && mkdir -p "$OUT"
$BIN keygen -o "$OUT/demo.key"
$BIN encrypt "$MODEL" -o "$OUT/cnn.protected.onnx" --key-file "$OUT/demo.key"
$BIN inspect "$OUT/cnn.protected.onnx" | sed -n '/^protection/,$p'
$BIN verify "$OUT/cnn.protected.onnx"
$BIN verify "$OUT/cnn.protected.onnx" --key-file "$OUT/demo.key"
$BIN decrypt "$OUT/cnn.protected.onnx" -o "$OUT/cnn.restored.onnx" --key-file "$OUT/demo.key"
cmp "$MODEL" "$OUT/cnn.restored.onnx" && echo "restored model is byte-identical to $MODEL"
