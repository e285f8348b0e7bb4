#!/usr/bin/env bash
# The main job on a bundled example model: build, make a key, encrypt the
# PyTorch-exported CNN in fixtures/, show what was encrypted, verify, decrypt,
# and check the restored file is byte-identical to the original.
#
# It builds only what the demo runs: the onnx-protect binary in the debug profile
# (the one scripts/test.sh builds too, so the tests reuse it) without the tract
# runtime or image support (cargo --no-default-features). OUT (default demo-out)
# is where the files go; CARGO_TARGET_DIR is honoured.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n== %s   [%ss]\n' "$*" "$SECONDS"; }
show() {
  echo "\$ onnx-protect $*"
  "$BIN" "$@"
}

step "build the onnx-protect binary (debug profile, without the tract runtime and image support)"
cargo build --no-default-features --bin onnx-protect
BIN=${CARGO_TARGET_DIR:-target}/debug/onnx-protect
OUT=${OUT:-demo-out}
MODEL=fixtures/models/cnn_torch/model.onnx
rm -rf "$OUT" && mkdir -p "$OUT"

step "make a new random 256-bit key"
show keygen -o "$OUT/demo.key"

step "encrypt the model's weights with the default policy"
show encrypt "$MODEL" -o "$OUT/cnn.protected.onnx" --key-file "$OUT/demo.key"

step "what was encrypted (the protection section of inspect)"
echo "\$ onnx-protect inspect $OUT/cnn.protected.onnx | sed -n '/^protection/,\$p'"
"$BIN" inspect "$OUT/cnn.protected.onnx" | sed -n '/^protection/,$p'

step "verify without the key (checksum), then with it (MAC)"
show verify "$OUT/cnn.protected.onnx"
show verify "$OUT/cnn.protected.onnx" --key-file "$OUT/demo.key"

step "decrypt, and compare with the original"
show decrypt "$OUT/cnn.protected.onnx" -o "$OUT/cnn.restored.onnx" --key-file "$OUT/demo.key"
cmp "$MODEL" "$OUT/cnn.restored.onnx"
echo "restored model is byte-identical to $MODEL"
step "done (files in $OUT/)"
