#!/usr/bin/env bash
# In-memory decryption against decrypting the whole file with `openssl enc -d`.
#
# A 1 GiB model (bench/make_models.py) with `*=COEFFICIENT` of its weight rows
# encrypted: `openssl enc -d -aes-256-ctr` of the whole file (to /dev/null and to a
# file), `onnx-protect decrypt -o FILE`, and crates/core/examples/decrypt_in_memory
# (copy into a private buffer while hashing every byte, decrypt the spans, check the
# digest and MACs). Figures: docs/performance.md ("In-memory decryption").
#
#   bench/memory/run.sh [DATA_DIR]      (default /tmp/onnx-protect-bench-memory)
#   REPEATS=5 COEFFICIENT=0.05 MODE=ctr bench/memory/run.sh
#
# Needs python3 with numpy + onnx (bench/make_models.py writes the model) and openssl.
# Timings are wall-clock medians with a warm page cache.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
DATA="${1:-/tmp/onnx-protect-bench-memory}"
REPEATS="${REPEATS:-5}"
COEFFICIENT="${COEFFICIENT:-0.05}"
MODE="${MODE:-ctr}"
BIN="$ROOT/target/release/onnx-protect"
EXAMPLE="$ROOT/target/release/examples/decrypt_in_memory"

cd "$ROOT"
# The runtime (tract) is not needed here: build without it.
cargo build --release -q --bin onnx-protect --no-default-features
cargo build --release -q -p onnx-protect-core --example decrypt_in_memory

mkdir -p "$DATA"
MODEL="$DATA/single/model.onnx"
if [ ! -f "$MODEL" ]; then
  python3 bench/make_models.py --out "$DATA" --only single
fi
KEY="$DATA/bench.key"
[ -f "$KEY" ] || "$BIN" keygen -o "$KEY" >/dev/null
PROT="$DATA/protected/model.onnx"
rm -rf "$DATA/protected"
"$BIN" encrypt "$MODEL" -o "$PROT" --key-file "$KEY" --coefficient "*=$COEFFICIENT" --mode "*=$MODE" --json \
  > "$DATA/encrypt.json"
python3 - "$DATA/encrypt.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"model: {r['input']}  weight bytes {r['weight_bytes']}  encrypted {r['encrypted_bytes']} "
      f"({100 * r['encrypted_bytes'] / r['weight_bytes']:.2f}%) in {len(r['tensors'])} tensors")
PY

# The baseline: the whole file encrypted with openssl, decrypted with openssl.
# Any 256-bit key will do for the baseline: it decrypts its own encryption of the plain model.
HEXKEY="$(openssl rand -hex 32)"
IV=00000000000000000000000000000000
openssl enc -aes-256-ctr -K "$HEXKEY" -iv "$IV" -in "$MODEL" -out "$DATA/model.openssl"
cat "$MODEL" "$PROT" "$DATA/model.openssl" > /dev/null   # warm the page cache

median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
now() { date +%s.%N; }

: > "$DATA/openssl.txt"
for _ in $(seq "$REPEATS"); do
  t0=$(now); openssl enc -d -aes-256-ctr -K "$HEXKEY" -iv "$IV" -in "$DATA/model.openssl" -out /dev/null; t1=$(now)
  echo "$t1 - $t0" | bc -l >> "$DATA/openssl.txt"
done
: > "$DATA/openssl_file.txt"
for _ in $(seq "$REPEATS"); do
  t0=$(now); openssl enc -d -aes-256-ctr -K "$HEXKEY" -iv "$IV" -in "$DATA/model.openssl" -out "$DATA/plain.openssl"; t1=$(now)
  echo "$t1 - $t0" | bc -l >> "$DATA/openssl_file.txt"
  rm -f "$DATA/plain.openssl"
done
"$EXAMPLE" "$PROT" "$KEY" "$REPEATS" | tee "$DATA/memory.log" | grep '^decrypt_in_memory' | awk '{print $2}' > "$DATA/memory.txt"
: > "$DATA/decrypt_file.txt"
for _ in $(seq "$REPEATS"); do
  rm -rf "$DATA/dec"
  t0=$(now); "$BIN" decrypt "$PROT" -o "$DATA/dec/model.onnx" --key-file "$KEY" -q; t1=$(now)
  echo "$t1 - $t0" | bc -l >> "$DATA/decrypt_file.txt"
done
rm -rf "$DATA/dec"

OPENSSL=$(median < "$DATA/openssl.txt")
OPENSSL_FILE=$(median < "$DATA/openssl_file.txt")
MEMORY=$(median < "$DATA/memory.txt")
DEC_FILE=$(median < "$DATA/decrypt_file.txt")
echo "method: $(head -1 "$DATA/memory.log" | sed 's/.*method=\([A-Za-z]*\).*/\1/')"
printf 'openssl enc -d, whole file -> /dev/null : %.3f s\n' "$OPENSSL"
printf 'openssl enc -d, whole file -> file      : %.3f s\n' "$OPENSSL_FILE"
printf 'onnx-protect decrypt -o file            : %.3f s\n' "$DEC_FILE"
printf 'decrypt_in_memory (verify + decrypt)    : %.4f s\n' "$MEMORY"
printf 'in memory / openssl -> /dev/null        : %.2fx\n' "$(echo "$MEMORY / $OPENSSL" | bc -l)"
printf 'decrypt -o file / openssl -> file       : %.2fx\n' "$(echo "$DEC_FILE / $OPENSSL_FILE" | bc -l)"
