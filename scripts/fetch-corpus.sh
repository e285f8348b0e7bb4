#!/usr/bin/env bash
# Fetches the ONNX backend test corpus (the test data shipped in the onnx 1.22.0
# wheel, the last one that ships all of it) into corpus/, and describes every
# model with the onnx Python package into corpus/expected.jsonl, the independent
# reference the corpus test compares against. Idempotent; nothing is committed.
set -euo pipefail
cd "$(dirname "$0")/.."
CORPUS=corpus
if [[ -f $CORPUS/expected.jsonl && -d $CORPUS/data ]]; then
  echo "corpus: already present ($(wc -l < $CORPUS/expected.jsonl) models)"
  exit 0
fi
mkdir -p $CORPUS/.wheel
python3 -m pip download --quiet --no-deps --only-binary :all: onnx==1.22.0 -d $CORPUS/.wheel
WHEEL=$(ls $CORPUS/.wheel/onnx-1.22.0-*.whl | head -n1)
rm -rf $CORPUS/data $CORPUS/.unzip
python3 - "$WHEEL" "$CORPUS/.unzip" <<'PY'
import sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.startswith("onnx/backend/test/data/")]
    z.extractall(dest, names)
print(f"corpus: extracted {len(names)} files")
PY
mv $CORPUS/.unzip/onnx/backend/test/data $CORPUS/data
rm -rf $CORPUS/.unzip
python3 scripts/describe_corpus.py $CORPUS/data > $CORPUS/expected.jsonl.tmp
mv $CORPUS/expected.jsonl.tmp $CORPUS/expected.jsonl
echo "corpus: described $(wc -l < $CORPUS/expected.jsonl) models"
