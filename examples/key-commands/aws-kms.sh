#!/bin/sh
# onnx-protect key command for AWS KMS (docs/keys.md). Needs the AWS CLI v2.
# Usage: --key-command 'aws-kms.sh KEY_ID_OR_ARN'   (run as: aws-kms.sh KEY wrap|unwrap)
set -eu
key=$1
op=$2
tier= payload= label=
while IFS= read -r line; do
  case "$line" in
    tier=*) tier=${line#tier=} ;;
    data-key=* | wrapped=*) payload=${line#*=} ;;
    label=*) label=${line#label=} ;;
  esac
done
case "$op" in
  wrap)
    # The data key goes to the CLI through a pipe, never on its command line.
    out=$(printf '%s' "$payload" | base64 -d | aws kms encrypt --key-id "$key" \
      --plaintext fileb:///dev/stdin --encryption-context "onnx-protect-tier=$tier" \
      --query CiphertextBlob --output text)
    printf 'wrapped=%s\nlabel=aws-kms:%s\n' "$out" "$key"
    ;;
  unwrap)
    [ "$label" = "aws-kms:$key" ] || { echo result=no-match; exit 0; }
    out=$(printf '%s' "$payload" | base64 -d | aws kms decrypt --key-id "$key" \
      --ciphertext-blob fileb:///dev/stdin --encryption-context "onnx-protect-tier=$tier" \
      --query Plaintext --output text)
    printf 'data-key=%s\n' "$out"
    ;;
  *) echo "aws-kms.sh: unknown operation $op" >&2; exit 2 ;;
esac
