#!/usr/bin/env bash
# JavaScript loader against the Rust one and against onnxruntime-node's plain file:
#
#   bench/js.sh [-n ROUNDS] [-d DATA_DIR]
#
# 1. Decrypting the 1 GiB bench model in memory (every byte verified, the key given):
#    js/bench/decrypt.mjs (Node) against crates/core/examples/decrypt_in_memory (Rust,
#    release), each a fresh process per round, rounds interleaved.
# 2. A ~100 MB runnable model to a ready onnxruntime-node session: from the plain file
#    (onnxruntime reads it itself) against createSession on the protected copy.
# Medians of ROUNDS (default 7) after one warm-up round; the page cache stays warm.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
N=7
DATA=$ROOT/bench-data
while getopts "n:d:" opt; do case $opt in n) N=$OPTARG ;; d) DATA=$OPTARG ;; *) exit 2 ;; esac; done
cd "$ROOT"
cargo build --release -q --bin onnx-protect
cargo build --release -q -p onnx-protect-core --example decrypt_in_memory
(cd js && npm ci --no-audit --no-fund --loglevel=error && npm run -s build)
BIN=target/release/onnx-protect
EX=target/release/examples/decrypt_in_memory
[ -f "$DATA/single/model.onnx" ] || python3 bench/make_models.py --out "$DATA" --only single
[ -f "$DATA/js100/single/model.onnx" ] || python3 bench/make_models.py --out "$DATA/js100" --only single --single-blocks 2
W=$DATA/js-work
mkdir -p "$W"
[ -f "$W/bench.key" ] || $BIN keygen -o "$W/bench.key" -q
for m in big:"$DATA/single/model.onnx" small:"$DATA/js100/single/model.onnx"; do
  name=${m%%:*}; src=${m#*:}
  $BIN encrypt "$src" -o "$W/$name.builtin.onnx" --key-file "$W/bench.key" -q --force
  $BIN encrypt "$src" -o "$W/$name.all.onnx" --key-file "$W/bench.key" -q --force --coefficient '*=1'
done
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
{
  echo "commit $(git rev-parse --short HEAD); $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'); node $(node --version); load at start $(cut -d' ' -f1-3 /proc/loadavg)"
  for pol in builtin all; do
    : > "$W/rust.txt"; : > "$W/js.txt"
    for r in $(seq 0 "$N"); do
      rs=$($EX "$W/big.$pol.onnx" "$W/bench.key" 1 | awk '/^decrypt_in_memory/{print $2}')
      js=$(node js/bench/decrypt.mjs "$W/big.$pol.onnx" "$W/bench.key" | awk '{print $6}')
      [ "$r" = 0 ] && continue
      echo "$rs" >> "$W/rust.txt"; echo "$js" >> "$W/js.txt"
    done
    R=$(median < "$W/rust.txt"); J=$(median < "$W/js.txt")
    printf '1 GiB, %s policy: Rust decrypt_in_memory %.3f s, Node decrypt (read + verify + decrypt) %.3f s, ratio %.2fx\n' "$pol" "$R" "$J" "$(echo "$J / $R" | bc -l)"
  done
  for pol in builtin all; do
    : > "$W/plain.txt"; : > "$W/prot.txt"
    for r in $(seq 0 "$N"); do
      p=$(node js/bench/session.mjs plain "$DATA/js100/single/model.onnx" | awk '{print $2}')
      q=$(node js/bench/session.mjs protected "$W/small.$pol.onnx" "$W/bench.key" | awk '{print $2}')
      [ "$r" = 0 ] && continue
      echo "$p" >> "$W/plain.txt"; echo "$q" >> "$W/prot.txt"
    done
    P=$(median < "$W/plain.txt"); Q=$(median < "$W/prot.txt")
    printf '%s MB model, %s policy: onnxruntime-node from the plain file %.3f s, createSession on the protected model %.3f s, ratio %.2fx\n' "$(( $(stat -c %s "$DATA/js100/single/model.onnx") / 1000000 ))" "$pol" "$P" "$Q" "$(echo "$Q / $P" | bc -l)"
  done
  echo "load at end $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$W/results.txt"
