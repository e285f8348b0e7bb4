// A worker thread of the Node engine (engine-node.ts): for a range of whole chunks of a
// covered file in shared memory, the leaf digests of the bytes as stored (§9), and, when asked,
// the bytes copied to the output and keystream pieces XORed in (§6, §7), chunk by chunk so that
// each chunk is hashed, copied and decrypted while it is in the cache. AES-256-CTR is Node's
// (OpenSSL), BLAKE3 hash-wasm's.

import { createCipheriv } from "node:crypto";
import { parentPort } from "node:worker_threads";

import { createBLAKE3 } from "hash-wasm";

import { xorMaskedInto } from "./crypto.js";
import type { Piece } from "./engine.js";

export interface Task {
  id: number;
  /** The file as stored, and its byte offset in `src`. */
  src: SharedArrayBuffer;
  srcOffset: number;
  /** Where the copy goes (null: hash only); `out === src` decrypts in place. */
  out: SharedArrayBuffer | null;
  outOffset: number;
  length: number;
  file: number;
  chunk: number;
  /** Chunks `[first, last)`. */
  first: number;
  last: number;
  /** The pieces within the chunks' bytes, sorted. */
  pieces: Piece[];
  keys: Uint8Array[];
}

const STEP = 1 << 20;
const ZERO = new Uint8Array(STEP);
const HEAD = new TextEncoder().encode("onnx-protect/v2/chunk");

const h = await createBLAKE3();

function counterBlock(block: number): Uint8Array {
  const c = new Uint8Array(16);
  new DataView(c.buffer).setBigUint64(8, BigInt(block));
  return c;
}

/** `dst = src XOR keystream of key from stream` (masked); `dst` may be `src`. */
function xorInto(dst: Uint8Array, src: Uint8Array, key: Uint8Array, stream: number, mask: Uint8Array | null): void {
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
    if (dst !== src) part.set(src.subarray(done, end));
    xorMaskedInto(part, c.update(ZERO.subarray(0, part.length)), mask, stream + done);
  }
}

function run(t: Task): Uint8Array {
  const src = new Uint8Array(t.src, t.srcOffset, t.length);
  const out = t.out ? new Uint8Array(t.out, t.outOffset, t.length) : null;
  const leaves = new Uint8Array(32 * (t.last - t.first));
  const file = new Uint8Array(4);
  new DataView(file.buffer).setUint32(0, t.file);
  const index = new Uint8Array(8);
  let p = 0;
  for (let j = t.first; j < t.last; j++) {
    const a = j * t.chunk, b = Math.min(a + t.chunk, t.length);
    new DataView(index.buffer).setBigUint64(0, BigInt(j));
    h.init();
    h.update(HEAD);
    h.update(file);
    h.update(index);
    h.update(src.subarray(a, b));
    leaves.set(h.digest("binary"), 32 * (j - t.first));
    if (!out) continue;
    const inPlace = out.buffer === src.buffer && t.outOffset === t.srcOffset;
    // The pieces that meet this chunk, cut at its ends (one that runs on is taken up again),
    // read from the stored bytes and written to the output; the bytes between them copied.
    let pos = a;
    for (; p < t.pieces.length && t.pieces[p].offset < b; p++) {
      const pc = t.pieces[p];
      const from = Math.max(pc.offset, a), to = Math.min(pc.offset + pc.length, b);
      if (from < to) {
        if (!inPlace && pos < from) out.set(src.subarray(pos, from), pos);
        xorInto(out.subarray(from, to), src.subarray(from, to), t.keys[pc.key], pc.stream + (from - pc.offset), pc.mask);
        pos = to;
      }
      if (pc.offset + pc.length > b) break;
    }
    if (!inPlace && pos < b) out.set(src.subarray(pos, b), pos);
  }
  return leaves;
}

parentPort!.on("message", (t: Task) => {
  try {
    const leaves = run(t);
    parentPort!.postMessage({ id: t.id, leaves }, [leaves.buffer as ArrayBuffer]);
  } catch (e) {
    parentPort!.postMessage({ id: t.id, error: (e as Error).message ?? String(e) });
  }
});
