#!/bin/bash
# GNU parallel: encrypt every model under $MODELS into $OUT as N shards, run as
# N separate processes on this machine (or, with --sshlogin host1,host2 and a
# shared file system, on several machines).
#
#   MODELS=models OUT=protected KEY=prod.key N=4 examples/batch/gnu-parallel.sh
#
# parallel fills in {} with 0..N-1; each process handles shard {}/N. Its exit
# status is onnx-protect's (non-zero when any file of that shard failed), and
# --joblog records it per shard. Running the script again resumes.
set -euo pipefail
: "${MODELS:?set MODELS to the input directory}"
: "${OUT:?set OUT to the output directory}"
: "${KEY:?set KEY to the key file}"
N=${N:-4}
REPORTS=${REPORTS:-reports}
mkdir -p "$REPORTS"
parallel --jobs "$N" --halt never --joblog "$REPORTS/joblog.tsv" \
    onnx-protect batch encrypt --dir "$MODELS" --out-dir "$OUT" --key-file "$KEY" \
    --jobs 1 --shard "{}/$N" --report "$REPORTS/encrypt-{}.jsonl" --quiet \
    ::: $(seq 0 $((N - 1)))
# All shards' report lines in one file:
cat "$REPORTS"/encrypt-*.jsonl > "$REPORTS/encrypt.jsonl"
