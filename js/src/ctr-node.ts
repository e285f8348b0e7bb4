// AES-256-CTR keystreams (docs/format.md §7) from Node's OpenSSL, for the Node byte backend.

import { createCipheriv } from "node:crypto";

import { xorMaskedInto } from "./crypto.js";

// 64 KiB: below malloc's mmap threshold, so the output buffers of `update` reuse heap memory.
const STEP = 64 << 10;
const ZERO = new Uint8Array(STEP);

function counterBlock(block: number): Uint8Array {
  const c = new Uint8Array(16);
  new DataView(c.buffer).setBigUint64(8, BigInt(block));
  return c;
}

/** `dst = src XOR k(o)` for `o` from `stream` (§7), each keystream byte ANDed with
 * `mask[o mod len(mask)]` when a mask is given; `dst` and `src` have one length. */
export function xorStream(dst: Uint8Array, src: Uint8Array, key: Uint8Array, stream: number, mask: Uint8Array | null): void {
  const c = createCipheriv("aes-256-ctr", key, counterBlock(Math.floor(stream / 16)));
  const skip = stream % 16;
  if (skip) c.update(ZERO.subarray(0, skip));
  for (let done = 0; done < src.length; done += STEP) {
    const end = Math.min(done + STEP, src.length);
    const part = dst.subarray(done, end);
    if (!mask) {
      part.set(c.update(src.subarray(done, end)));
      continue;
    }
    part.set(src.subarray(done, end));
    xorMaskedInto(part, c.update(ZERO.subarray(0, part.length)), mask, stream + done);
  }
}
