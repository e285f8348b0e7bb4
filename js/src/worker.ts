// A worker thread of the Node byte backend (backend-node.ts): the leaf digests (docs/format.md §9)
// of a range of whole chunks of a covered file held in shared memory.

import { parentPort } from "node:worker_threads";

import { leavesOf, prefixedHash } from "./blake3-node.js";

export interface Task {
  id: number;
  /** Whole chunks of covered file `file` as stored, from chunk `first`: `length` bytes at
   * `srcOffset` of `src`. */
  src: SharedArrayBuffer;
  srcOffset: number;
  length: number;
  file: number;
  chunk: number;
  first: number;
}

await prefixedHash();

parentPort!.on("message", async (t: Task) => {
  try {
    const leaves = await leavesOf(new Uint8Array(t.src, t.srcOffset, t.length), t.file, t.chunk, t.first);
    parentPort!.postMessage({ id: t.id, leaves }, [leaves.buffer as ArrayBuffer]);
  } catch (e) {
    parentPort!.postMessage({ id: t.id, error: (e as Error).message ?? String(e) });
  }
});
