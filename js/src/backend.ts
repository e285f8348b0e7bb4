// The byte backend: the byte-heavy work of a decryption, behind one interface: the leaf
// digests of a covered file (docs/format.md §9) and a copy of a file with keystream pieces
// XORed in (§6, §7). This module's backend runs on the calling thread with WebCrypto and
// hash-wasm (browsers); `backend-node.ts` uses Node's OpenSSL and spreads large files over
// worker threads. The package's `#backend` import picks one per platform (package.json
// `imports`). The engines of `decryptFile` (native.ts) are another matter: the JavaScript
// engine does its byte work through this backend, the native engine in Rust.

import { blake3, Keystream, label, u32be, u64be } from "./crypto.js";
import { copyOf } from "./wire.js";

/** A range of a covered file XORed with the keystream of `keys[key]` from keystream
 * offset `stream` (the element-byte offset, §7), each keystream byte ANDed with
 * `mask[(stream + i) mod len(mask)]` when a mask is given (the format-preserving mode). */
export interface Piece {
  offset: number;
  length: number;
  key: number;
  stream: number;
  mask: Uint8Array | null;
}

export interface Backend {
  /** The leaves `leaf(file, j)` of `data`'s chunks, concatenated (32 bytes each). */
  leaves(file: number, data: Uint8Array, chunk: number): Promise<Uint8Array>;
  /** A copy of `data` with `pieces` (sorted, disjoint) XORed in, and the leaves of `data`
   * as it was given. */
  copyXor(file: number, data: Uint8Array, chunk: number, pieces: Piece[], keys: Uint8Array[]): Promise<{ out: Uint8Array; leaves: Uint8Array }>;
  /** `pieces` XORed into `data` in place. */
  xor(data: Uint8Array, pieces: Piece[], keys: Uint8Array[]): Promise<void>;
}

const CHUNK_LABEL = label("onnx-protect/v2/chunk");

/** The backend on the calling thread. */
export const portableBackend: Backend = {
  async leaves(file, data, chunk) {
    const b3 = await blake3();
    const n = Math.ceil(data.length / chunk);
    const out = new Uint8Array(32 * n);
    const head = u32be(file);
    for (let j = 0; j < n; j++) {
      out.set(b3([CHUNK_LABEL, head, u64be(j), data.subarray(j * chunk, Math.min((j + 1) * chunk, data.length))]), 32 * j);
    }
    return out;
  },
  async copyXor(file, data, chunk, pieces, keys) {
    const leaves = await portableBackend.leaves(file, data, chunk);
    const out = copyOf(data);
    await portableBackend.xor(out, pieces, keys);
    return { out, leaves };
  },
  async xor(data, pieces, keys) {
    const streams = new Map<number, Keystream>();
    for (const p of pieces) {
      let ks = streams.get(p.key);
      if (!ks) streams.set(p.key, (ks = await Keystream.of(keys[p.key])));
      const view = data.subarray(p.offset, p.offset + p.length);
      if (p.mask) await ks.xorMasked(p.stream, view, p.mask);
      else await ks.xor(p.stream, view);
    }
  },
};

/** §9: `D` of the covered files of lengths `lengths` from their leaves. */
export async function digestOfLeaves(lengths: number[], leaves: Uint8Array[]): Promise<Uint8Array> {
  const b3 = await blake3();
  const parts: Uint8Array[] = [label("onnx-protect/v2/content"), u32be(lengths.length)];
  lengths.forEach((n, i) => parts.push(u64be(n), leaves[i]));
  return b3(parts);
}
