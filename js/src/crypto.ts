// The primitives of docs/format.md §6–§10, each from a well-kept implementation:
// AES-256-CTR from WebCrypto (`crypto.subtle`), SHA-256, HMAC and HKDF from
// @noble/hashes, ChaCha20-Poly1305 from @noble/ciphers, Ed25519 from @noble/curves,
// BLAKE3 and Argon2id from hash-wasm (WebAssembly). Nothing here is a primitive of its own.

import { chacha20poly1305 } from "@noble/ciphers/chacha.js";
import { ed25519 } from "@noble/curves/ed25519.js";
import { hkdf, extract as hkdfExtract, expand as hkdfExpand } from "@noble/hashes/hkdf.js";
import { hmac } from "@noble/hashes/hmac.js";
import { sha256 } from "@noble/hashes/sha2.js";
import { argon2id as wasmArgon2id, createBLAKE3 } from "hash-wasm";

import { concat, encodeUtf8 } from "./wire.js";

export { hkdf, hkdfExtract, hkdfExpand, sha256 };

export const label = (s: string): Uint8Array => encodeUtf8(s);

export function u32be(v: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, v);
  return b;
}

export function u64be(v: bigint | number): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt(v));
  return b;
}

export function hmacSha256(key: Uint8Array, msg: Uint8Array): Uint8Array {
  return hmac(sha256, key, msg);
}

/** Equality of two byte strings in time that depends only on their lengths. */
export function constantTimeEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= a[i] ^ b[i];
  return d === 0;
}

/** ChaCha20-Poly1305 (RFC 8439) open with a zero nonce and no AAD, as the `key` and
 * `passphrase` stanzas use it; `null` when the tag does not verify. */
export function unwrapChaCha(kek: Uint8Array, body: Uint8Array, nonce: Uint8Array = new Uint8Array(12), aad?: Uint8Array): Uint8Array | null {
  try {
    return chacha20poly1305(kek, nonce, aad).decrypt(body);
  } catch {
    return null;
  }
}

export async function argon2id(password: Uint8Array, salt: Uint8Array, mKib: number, t: number, p: number): Promise<Uint8Array> {
  return wasmArgon2id({ password, salt, memorySize: mKib, iterations: t, parallelism: p, hashLength: 32, outputType: "binary" });
}

// ---------------------------------------------------------------- AES-256-CTR keystream

const subtle = globalThis.crypto.subtle;

/** The keystream of one stream key (§7): `k(o) = AES-256(K, u128be(⌊o/16⌋))[o mod 16]`. */
export class Keystream {
  private constructor(private readonly key: CryptoKey) {}

  static async of(rawKey: Uint8Array): Promise<Keystream> {
    const key = await subtle.importKey("raw", rawKey as BufferSource, { name: "AES-CTR" }, false, ["encrypt"]);
    return new Keystream(key);
  }

  /** XORs `k(o)` for `o` in `[offset, offset + data.length)` into `data`, in place: the
   * AES-CTR encryption of the data itself (no keystream buffer), in pieces. */
  async xor(offset: number, data: Uint8Array): Promise<void> {
    const piece = 64 << 20;
    for (let done = 0; done < data.length; done += piece) {
      const at = offset + done;
      const part = data.subarray(done, Math.min(done + piece, data.length));
      const skip = at % 16;
      let input: Uint8Array = part;
      if (skip) {
        input = new Uint8Array(skip + part.length);
        input.set(part, skip);
      } else if (!(part.buffer instanceof ArrayBuffer)) {
        input = part.slice();
      }
      const out = new Uint8Array(await subtle.encrypt({ name: "AES-CTR", counter: counterBlock(BigInt(at - skip) / 16n), length: 128 }, this.key, input as Uint8Array<ArrayBuffer>));
      part.set(skip ? out.subarray(skip) : out);
    }
  }

  /** XORs `k(o) AND mask[o mod len(mask)]` into `data` (the format-preserving mode). */
  async xorMasked(offset: number, data: Uint8Array, mask: Uint8Array): Promise<void> {
    xorMaskedInto(data, await this.bytes(offset, data.length), mask, offset);
  }

  /** `k(o)` for `o` in `[offset, offset + n)` (a `bigint` offset may pass 2^53). */
  async bytes(offset: number | bigint, n: number): Promise<Uint8Array> {
    if (n === 0) return new Uint8Array(0);
    const block = BigInt(offset) / 16n;
    const skip = Number(BigInt(offset) - block * 16n);
    // Pieces of at most 64 MiB: WebCrypto copies its input, and browsers cap one call.
    const out = new Uint8Array(n);
    const piece = 64 << 20;
    let done = 0;
    let first = true;
    let blockAt = block;
    while (done < n) {
      const want = Math.min(piece, n - done + (first ? skip : 0));
      const zeros = new Uint8Array(Math.ceil(want / 16) * 16);
      const ks = new Uint8Array(await subtle.encrypt({ name: "AES-CTR", counter: counterBlock(blockAt), length: 128 }, this.key, zeros));
      const from = first ? skip : 0;
      const take = Math.min(want - from, n - done);
      out.set(ks.subarray(from, from + take), done);
      done += take;
      blockAt += BigInt(zeros.length / 16);
      first = false;
    }
    return out;
  }
}

/** The keyed Fisher–Yates shuffle of `n` items (§6 distribution-preserving mode, §15 class
 * order): for `i = n − 1` down to 1, 32-bit words of `ks` read in order from byte `offset`
 * (little- or big-endian) until one `r < 2^32 − (2^32 mod (i + 1))`, then `j_i = r mod (i + 1)`.
 * Returns the swaps `[i, j_i]` in the order the shuffle applies them. */
export async function keyedSwaps(ks: Keystream, offset: bigint, n: number, littleEndian: boolean): Promise<Array<[number, number]>> {
  const batch = Math.max(64, n + 16);
  let words = new Uint32Array(0);
  let used = 0;
  let next = offset;
  const swaps: Array<[number, number]> = [];
  for (let i = n - 1; i >= 1; i--) {
    const m = i + 1;
    const limit = 2 ** 32 - (2 ** 32 % m);
    for (;;) {
      if (used === words.length) {
        const raw = await ks.bytes(next, 4 * batch);
        next += BigInt(4 * batch);
        const dv = new DataView(raw.buffer, raw.byteOffset, raw.length);
        words = Uint32Array.from({ length: batch }, (_, k) => dv.getUint32(4 * k, littleEndian));
        used = 0;
      }
      const r = words[used++];
      if (r < limit) {
        swaps.push([i, r % m]);
        break;
      }
    }
  }
  return swaps;
}

/** The 16-byte big-endian counter block of block number `n`. */
function counterBlock(n: bigint): Uint8Array<ArrayBuffer> {
  const c = new Uint8Array(16);
  const v = new DataView(c.buffer);
  v.setBigUint64(0, (n >> 64n) & 0xffffffffffffffffn);
  v.setBigUint64(8, n & 0xffffffffffffffffn);
  return c;
}

/** `data[i] ^= ks[i] AND mask[(offset + i) mod len(mask)]`, two words at a time where the
 * arrays are aligned and the mask's length divides 8. */
export function xorMaskedInto(data: Uint8Array, ks: Uint8Array, mask: Uint8Array, offset: number): void {
  const m = mask.length;
  let i = 0;
  if (8 % m === 0 && data.length >= 64) {
    // The mask repeated over 8 bytes from `offset`'s phase, as two little-endian words;
    // unaligned arrays go through aligned copies.
    const pat = new Uint8Array(8);
    for (let k = 0; k < 8; k++) pat[k] = mask[(offset + k) % m];
    const d = data.byteOffset % 4 ? Uint8Array.from(data) : data;
    const s = ks.byteOffset % 4 ? Uint8Array.from(ks.subarray(0, data.length)) : ks;
    const w = (data.length >>> 3) * 2;
    const d32 = new Uint32Array(d.buffer, d.byteOffset, w);
    const k32 = new Uint32Array(s.buffer, s.byteOffset, w);
    const pv = new DataView(pat.buffer);
    const m0 = pv.getUint32(0, true), m1 = pv.getUint32(4, true);
    for (let k = 0; k < w; k += 2) {
      d32[k] ^= k32[k] & m0;
      d32[k + 1] ^= k32[k + 1] & m1;
    }
    if (d !== data) data.set(d.subarray(0, w * 4));
    i = w * 4;
  }
  for (; i < data.length; i++) data[i] ^= ks[i] & mask[(offset + i) % m];
}

/** `a ^= b` for two equal-length byte arrays, a word at a time where aligned. */
export function xorInto(a: Uint8Array, b: Uint8Array): void {
  const n = a.length;
  let i = 0;
  if (a.byteOffset % 4 === 0 && b.byteOffset % 4 === 0) {
    const w = n >>> 2;
    const a32 = new Uint32Array(a.buffer, a.byteOffset, w);
    const b32 = new Uint32Array(b.buffer, b.byteOffset, w);
    for (let k = 0; k < w; k++) a32[k] ^= b32[k];
    i = w * 4;
  }
  for (; i < n; i++) a[i] ^= b[i];
}

// ---------------------------------------------------------------- BLAKE3

/** One BLAKE3 hash (default mode, 32 bytes) of the concatenation of `parts`. */
export type Blake3 = (parts: Uint8Array[]) => Uint8Array;

let blake3Impl: Blake3 | null = null;

/** BLAKE3 from hash-wasm's WebAssembly (Node and browsers alike). */
export async function blake3(): Promise<Blake3> {
  if (blake3Impl) return blake3Impl;
  const h = await createBLAKE3();
  blake3Impl = (parts) => {
    h.init();
    for (const p of parts) h.update(p);
    return h.digest("binary");
  };
  return blake3Impl;
}

// ---------------------------------------------------------------- Ed25519 (§10)

/** Strict Ed25519 verification (§10): `S < L`, neither the key nor `R` of small
 * order, and the cofactorless equation. */
export function verifyStrict(publicKey: Uint8Array, signature: Uint8Array, message: Uint8Array): boolean {
  if (publicKey.length !== 32 || signature.length !== 64) return false;
  const Point = ed25519.Point;
  try {
    const A = Point.fromBytes(publicKey);
    const R = Point.fromBytes(signature.subarray(0, 32));
    if (A.isSmallOrder() || R.isSmallOrder()) return false;
  } catch {
    return false;
  }
  // zip215: false is RFC 8032's strict mode: canonical encodings, S < L, cofactorless.
  return ed25519.verify(signature, message, publicKey, { zip215: false });
}

export function ed25519Sign(seed: Uint8Array, message: Uint8Array): Uint8Array {
  return ed25519.sign(message, seed);
}

export function ed25519Public(seed: Uint8Array): Uint8Array {
  return ed25519.getPublicKey(seed);
}

export { concat };
