#!/usr/bin/env bash
# Builds the C library (release) and installs it under PREFIX: lib/libonnx_protect.{so,a},
# include/onnx_protect.h and lib/pkgconfig/onnx_protect.pc.
#
#   bash scripts/install-capi.sh PREFIX
#
# ONNX_PROTECT_CAPI_PROFILE=dev installs the dev build instead. ONNX_PROTECT_CAPI_BUILT=DIR
# installs the libonnx_protect.{so,a} already built in DIR as they are (the test of
# docs/capi.md, with the library `cargo test --workspace` built: a cargo build of this one
# package resolves other features than the workspace's and compiles much of it again).
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 PREFIX" >&2; exit 2; }
root="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$1"
prefix="$(cd "$1" && pwd)"
profile=${ONNX_PROTECT_CAPI_PROFILE:-release}
case "$profile" in
  release) dir=release ;;
  dev) dir=debug ;;
  *) echo "ONNX_PROTECT_CAPI_PROFILE must be release or dev, not '$profile'" >&2; exit 2 ;;
esac
if [ -n "${ONNX_PROTECT_CAPI_BUILT:-}" ]; then
  built=$ONNX_PROTECT_CAPI_BUILT
  for f in libonnx_protect.so libonnx_protect.a; do
    [ -f "$built/$f" ] || { echo "ONNX_PROTECT_CAPI_BUILT: no $built/$f" >&2; exit 1; }
  done
else
  cargo build --profile "$profile" -q -p onnx-protect-capi --manifest-path "$root/Cargo.toml"
  built="${CARGO_TARGET_DIR:-$root/target}/$dir"
fi
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)"
mkdir -p "$prefix/lib/pkgconfig" "$prefix/include"
install -m 0755 "$built/libonnx_protect.so" "$prefix/lib/"
install -m 0644 "$built/libonnx_protect.a" "$prefix/lib/"
install -m 0644 "$root/crates/capi/include/onnx_protect.h" "$prefix/include/"
# Libs.private: what the static library needs besides libc (pkg-config --static).
cat > "$prefix/lib/pkgconfig/onnx_protect.pc" <<PC
prefix=$prefix
libdir=\${prefix}/lib
includedir=\${prefix}/include

Name: onnx_protect
Description: Decrypt models protected by onnx-protect into memory (C ABI)
Version: $version
Libs: -L\${libdir} -lonnx_protect
Libs.private: -lpthread -ldl -lm
Cflags: -I\${includedir}
PC
echo "installed into $prefix (pkg-config: PKG_CONFIG_PATH=$prefix/lib/pkgconfig)"
