// A worker thread of the Node engine (engine-node.ts): the leaf digests (docs/format.md §9)
// of a range of whole chunks of a covered file held in shared memory. BLAKE3 is hash-wasm's.

import { parentPort } from "node:worker_threads";

import { createBLAKE3 } from "hash-wasm";

export interface Task {
  id: number;
  /** The file as stored: `length` bytes at `srcOffset` of `src`. */
  src: SharedArrayBuffer;
  srcOffset: number;
  length: number;
  file: number;
  chunk: number;
  /** Chunks `[first, last)`. */
  first: number;
  last: number;
}

const HEAD = new TextEncoder().encode("onnx-protect/v2/chunk");
const h = await createBLAKE3();

function run(t: Task): Uint8Array {
  const src = new Uint8Array(t.src, t.srcOffset, t.length);
  const leaves = new Uint8Array(32 * (t.last - t.first));
  const file = new Uint8Array(4);
  new DataView(file.buffer).setUint32(0, t.file);
  const index = new Uint8Array(8);
  for (let j = t.first; j < t.last; j++) {
    new DataView(index.buffer).setBigUint64(0, BigInt(j));
    h.init();
    h.update(HEAD);
    h.update(file);
    h.update(index);
    h.update(src.subarray(j * t.chunk, Math.min((j + 1) * t.chunk, t.length)));
    leaves.set(h.digest("binary"), 32 * (j - t.first));
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
