// BLAKE3 in Node from `blake3-wasm` (the BLAKE3 team's C implementation compiled to
// WebAssembly with SIMD, about twice hash-wasm's speed here), falling back to hash-wasm where
// it cannot be loaded. Used for the leaf digests of docs/format.md §9. Its Emscripten glue
// adds process-wide `uncaughtException` and `unhandledRejection` listeners (which rethrow,
// so a crash of the caller's own code would be reported at the glue's line); they are
// removed as soon as the glue has added them, and the process keeps only its own.

import { createRequire } from "node:module";

import { createBLAKE3 } from "hash-wasm";

/** BLAKE3 (default mode, 32 bytes) of `prefix ‖ data`. */
export type PrefixedHash = (prefix: Uint8Array, data: Uint8Array) => Uint8Array;

interface Blake3Module {
  HEAPU8: Uint8Array;
  _malloc(n: number): number;
  _free(p: number): void;
  _hash_oneshot(input: number, length: number, out: number, outLength: number): void;
}

/** `create()` with every listener it adds to `process` removed before anything else runs
 * (the glue adds them synchronously, while the module is set up). */
function withoutProcessListeners<T>(create: () => T): T {
  const before = new Map(process.eventNames().map((e) => [e, process.rawListeners(e)]));
  try {
    return create();
  } finally {
    for (const e of process.eventNames()) {
      const had = before.get(e) ?? [];
      for (const l of process.rawListeners(e)) {
        if (!had.includes(l)) process.removeListener(e, l as (...a: unknown[]) => void);
      }
    }
  }
}

async function simdHash(): Promise<PrefixedHash> {
  const create = createRequire(import.meta.url)("blake3-wasm/dist/wasm/blake3.js") as () => Promise<Blake3Module>;
  const m = await withoutProcessListeners(create);
  const out = m._malloc(32);
  let input = 0, capacity = 0;
  return (prefix, data) => {
    const n = prefix.length + data.length;
    if (n > capacity) {
      if (input) m._free(input);
      input = m._malloc(n);
      capacity = n;
    }
    // HEAPU8 is read after each allocation: the memory may have grown.
    m.HEAPU8.set(prefix, input);
    m.HEAPU8.set(data, input + prefix.length);
    m._hash_oneshot(input, n, out, 32);
    return m.HEAPU8.slice(out, out + 32);
  };
}

async function portableHash(): Promise<PrefixedHash> {
  const h = await createBLAKE3();
  return (prefix, data) => {
    h.init();
    h.update(prefix);
    h.update(data);
    return h.digest("binary");
  };
}

let hash: Promise<PrefixedHash> | null = null;

/** The fastest BLAKE3 this thread can load. */
export function prefixedHash(): Promise<PrefixedHash> {
  return (hash ??= simdHash().catch(() => portableHash()));
}

const CHUNK_LABEL = new TextEncoder().encode("onnx-protect/v2/chunk");

/** The leaves `leaf(file, j)` of the chunks of `data`, which starts at chunk `first` of its
 * file (chunks of `chunk` bytes, the last one shorter), concatenated. */
export async function leavesOf(data: Uint8Array, file: number, chunk: number, first = 0): Promise<Uint8Array> {
  const h = await prefixedHash();
  const prefix = new Uint8Array(CHUNK_LABEL.length + 12);
  prefix.set(CHUNK_LABEL);
  const dv = new DataView(prefix.buffer);
  dv.setUint32(CHUNK_LABEL.length, file);
  const n = Math.ceil(data.length / chunk);
  const out = new Uint8Array(32 * n);
  for (let k = 0; k < n; k++) {
    dv.setBigUint64(CHUNK_LABEL.length + 4, BigInt(first + k));
    out.set(h(prefix, data.subarray(k * chunk, Math.min((k + 1) * chunk, data.length))), 32 * k);
  }
  return out;
}
