// CPU time per GiB of each part of a decryption in Node, on this thread, from 512 MiB of
// random bytes (medians of 3): a fresh buffer filled (page faults + copy), a copy into memory
// already touched, AES-256-CTR in place (node:crypto, as the Node byte backend runs it), and BLAKE3
// leaves of 4 MiB chunks from blake3-wasm (SIMD) and from hash-wasm.
//   node bench/parts.mjs
import nc from "node:crypto";

import { createBLAKE3 } from "hash-wasm";

import { leavesOf } from "../dist/blake3-node.js";
import { xorStream } from "../dist/ctr-node.js";

const N = 512 << 20, CHUNK = 4 << 20;
const src = new Uint8Array(N);
for (let o = 0; o < N; o += 1 << 24) nc.randomFillSync(src.subarray(o, o + (1 << 24)));
const hw = await createBLAKE3();
await leavesOf(src.subarray(0, 1), 0, CHUNK);

async function cpu(f) {
  const runs = [];
  for (let r = 0; r < 3; r++) {
    const c = process.cpuUsage();
    await f();
    const d = process.cpuUsage(c);
    runs.push((d.user + d.system) / 1e6);
  }
  return (runs.sort((a, b) => a - b)[1] * (1 << 30)) / N;
}

const out = new Uint8Array(N);
const rows = [
  ["fresh buffer filled", () => new Uint8Array(N).set(src)],
  ["copy (memory touched)", () => out.set(src)],
  ["AES-256-CTR in place", () => xorStream(out, out, new Uint8Array(32), 0, null)],
  ["BLAKE3 leaves, blake3-wasm", () => leavesOf(src, 0, CHUNK)],
  ["BLAKE3 leaves, hash-wasm", () => {
    for (let o = 0; o < N; o += CHUNK) {
      hw.init();
      hw.update(src.subarray(o, o + CHUNK));
      hw.digest("binary");
    }
  }],
];
for (const [what, f] of rows) console.log(`${what}: ${(await cpu(f)).toFixed(3)} CPU-s per GiB`);
