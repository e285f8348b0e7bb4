#!/bin/sh
# onnx-protect key command for HashiCorp Vault's transit engine (docs/keys.md). Needs the
# vault CLI, logged in (VAULT_ADDR, VAULT_TOKEN). Usage: --key-command 'vault-transit.sh KEY'
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
    # `plaintext=-` makes vault read the (Base64) data key from its standard input.
    out=$(printf '%s' "$payload" | vault write -field=ciphertext "transit/encrypt/$key" plaintext=-)
    printf 'wrapped=%s\nlabel=vault-transit:%s\n' "$(printf '%s' "$out" | base64 -w0)" "$key"
    ;;
  unwrap)
    [ "$label" = "vault-transit:$key" ] || { echo result=no-match; exit 0; }
    out=$(printf '%s' "$payload" | base64 -d | vault write -field=plaintext "transit/decrypt/$key" ciphertext=-)
    printf 'data-key=%s\n' "$out"
    ;;
  *) echo "vault-transit.sh: unknown operation $op" >&2; exit 2 ;;
esac
