// `#backend` in Node: this thread copies each covered file into the result (ordinary memory,
// which onnxruntime-node requires) with the pieces decrypted by Node's AES-256-CTR, while the
// leaves of a large file are hashed by worker threads (worker.ts, one per available core),
// ranges of whole chunks at a time, from shared memory: a file given in a `SharedArrayBuffer`
// (as `readModelFiles` reads it) where it is, any other first copied there. Small files are
// hashed on this thread. BLAKE3 from blake3-node.ts.

import os from "node:os";
import { Worker } from "node:worker_threads";

import { leavesOf } from "./blake3-node.js";
import { xorStream } from "./ctr-node.js";
import { Backend } from "./backend.js";
import type { Task } from "./worker.js";

/** Files below this size are hashed on the calling thread. */
export const PARALLEL_FROM = 16 << 20;
/** Ranges per worker, so that a slow worker holds up little. */
const RANGES_PER_WORKER = 4;

type Pending = { resolve: (leaves: Uint8Array) => void; reject: (e: Error) => void };

class Pool {
  private readonly workers: Worker[] = [];
  private readonly idle: Worker[] = [];
  private readonly queue: Task[] = [];
  private readonly pending = new Map<number, Pending>();
  private readonly busy = new Map<Worker, number>();
  private next = 0;

  constructor(readonly size: number) {}

  private spawn(): Worker {
    const w = new Worker(new URL("./worker.js", import.meta.url));
    w.on("message", (m: { id: number; leaves?: Uint8Array; error?: string }) => {
      const p = this.pending.get(m.id);
      this.pending.delete(m.id);
      this.busy.delete(w);
      if (m.error !== undefined || !m.leaves) p?.reject(new Error(`worker: ${m.error}`));
      else p?.resolve(m.leaves);
      this.release(w);
    });
    w.on("error", (e) => {
      // The worker is gone: its task fails, a new worker takes the queue.
      const id = this.busy.get(w);
      this.busy.delete(w);
      this.workers.splice(this.workers.indexOf(w), 1);
      if (id !== undefined) {
        this.pending.get(id)?.reject(e);
        this.pending.delete(id);
      }
      this.pump();
    });
    this.workers.push(w);
    return w;
  }

  private release(w: Worker): void {
    const t = this.queue.shift();
    if (t) this.start(w, t);
    else {
      this.idle.push(w);
      // An idle pool does not keep the process alive.
      if (!this.pending.size) for (const x of this.workers) x.unref();
    }
  }

  private start(w: Worker, t: Task): void {
    this.busy.set(w, t.id);
    w.ref();
    w.postMessage(t);
  }

  private pump(): void {
    while (this.queue.length) {
      const w = this.idle.pop() ?? (this.workers.length < this.size ? this.spawn() : null);
      if (!w) return;
      this.start(w, this.queue.shift()!);
    }
  }

  /** Spawns the workers not yet running; they wait idle (and unreferenced). */
  spawnAll(): void {
    while (this.workers.length < this.size) {
      const w = this.spawn();
      w.unref();
      this.idle.push(w);
    }
  }

  run(t: Omit<Task, "id">): Promise<Uint8Array> {
    const id = this.next++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.queue.push({ ...t, id });
      this.pump();
    });
  }
}

let pool: Pool | null = null;
function workers(): Pool {
  return (pool ??= new Pool(Math.max(1, Math.min(16, os.availableParallelism()))));
}

/** Starts the worker threads ahead of a large file's hashing (while it is still being read). */
export function startWorkers(bytes: number): void {
  if (bytes >= PARALLEL_FROM) workers().spawnAll();
}

/** The leaves of `src` (in shared memory), ranges of whole chunks hashed by the workers. */
async function spread(src: Uint8Array, file: number, chunk: number): Promise<Uint8Array> {
  const p = workers();
  const chunks = Math.ceil(src.length / chunk);
  const per = Math.max(1, Math.ceil(chunks / (p.size * RANGES_PER_WORKER)));
  const runs: Array<Promise<Uint8Array>> = [];
  for (let first = 0; first < chunks; first += per) {
    const last = Math.min(chunks, first + per);
    const a = first * chunk, b = Math.min(last * chunk, src.length);
    runs.push(p.run({ src: src.buffer as SharedArrayBuffer, srcOffset: src.byteOffset + a, length: b - a, file, chunk, first }));
  }
  const parts = await Promise.all(runs);
  const leaves = new Uint8Array(32 * chunks);
  let at = 0;
  for (const part of parts) {
    leaves.set(part, at);
    at += part.length;
  }
  return leaves;
}

const shared = (b: Uint8Array) => typeof SharedArrayBuffer !== "undefined" && b.buffer instanceof SharedArrayBuffer;

/** The leaves of `data`: on the workers for a large file in shared memory, else here. */
function leaves(file: number, data: Uint8Array, chunk: number): Promise<Uint8Array> {
  if (data.length >= PARALLEL_FROM && shared(data)) return spread(data, file, chunk);
  return leavesOf(data, file, chunk);
}

export const backend: Backend = {
  leaves,
  async copyXor(file, data, chunk, pieces, keys) {
    // The leaves of the bytes as stored are hashed (by the workers, for a large file: a
    // private buffer is first copied into shared memory) while this thread copies them into
    // the result, each piece through AES-CTR.
    let src = data;
    if (data.length >= PARALLEL_FROM && !shared(data)) {
      src = new Uint8Array(new SharedArrayBuffer(data.length));
      src.set(data);
    }
    const hashing = leaves(file, src, chunk);
    const out = new Uint8Array(data.length);
    let pos = 0;
    for (const p of pieces) {
      if (pos < p.offset) out.set(data.subarray(pos, p.offset), pos);
      const end = p.offset + p.length;
      xorStream(out.subarray(p.offset, end), data.subarray(p.offset, end), keys[p.key], p.stream, p.mask);
      pos = end;
    }
    if (pos < data.length) out.set(data.subarray(pos), pos);
    return { out, leaves: await hashing };
  },
  async xor(data, pieces, keys) {
    for (const p of pieces) {
      const view = data.subarray(p.offset, p.offset + p.length);
      xorStream(view, view, keys[p.key], p.stream, p.mask);
    }
  },
};

/** The leaves of whole chunks in shared memory (`src`, from chunk `first` of covered file
 * `file`), hashed by a worker. */
export function hashOnWorker(src: Uint8Array, file: number, chunk: number, first: number): Promise<Uint8Array> {
  return workers().run({ src: src.buffer as SharedArrayBuffer, srcOffset: src.byteOffset, length: src.length, file, chunk, first });
}

/** How many hashing tasks the workers can take at once. */
export function workerCount(): number {
  return workers().size;
}
