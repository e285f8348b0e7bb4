#!/bin/sh
# onnx-protect key command for Google Cloud KMS (docs/keys.md). Needs the gcloud CLI.
# Usage: --key-command 'gcloud-kms.sh projects/P/locations/L/keyRings/R/cryptoKeys/K'
set -eu
key=$1
op=$2
payload= label=
while IFS= read -r line; do
  case "$line" in
    data-key=* | wrapped=*) payload=${line#*=} ;;
    label=*) label=${line#label=} ;;
  esac
done
case "$op" in
  wrap)
    out=$(printf '%s' "$payload" | base64 -d |
      gcloud kms encrypt --key "$key" --plaintext-file - --ciphertext-file - | base64 -w0)
    printf 'wrapped=%s\nlabel=gcloud-kms:%s\n' "$out" "$key"
    ;;
  unwrap)
    [ "$label" = "gcloud-kms:$key" ] || { echo result=no-match; exit 0; }
    out=$(printf '%s' "$payload" | base64 -d |
      gcloud kms decrypt --key "$key" --ciphertext-file - --plaintext-file - | base64 -w0)
    printf 'data-key=%s\n' "$out"
    ;;
  *) echo "gcloud-kms.sh: unknown operation $op" >&2; exit 2 ;;
esac
