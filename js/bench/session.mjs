// One onnxruntime-node session made ready, from a plain model or from a protected one:
//   node bench/session.mjs plain MODEL            (onnxruntime reads the file itself)
//   node bench/session.mjs plain-bytes MODEL      (the file read into memory, then the bytes)
//   node bench/session.mjs protected MODEL KEY_FILE   (createSessionFromFile, native engine)
//   node bench/session.mjs protected-js MODEL KEY_FILE   (the same by the JavaScript engine)
// Prints "session_KIND SECONDS" (from the start of reading to a ready session), with
// `intraOpNumThreads: 1`. With `--json` last, onnxruntime-node's default options instead, and
// one JSON line as bench/python_session.py reads it: `seconds`, `cpu_seconds` (the process's
// user + system time meanwhile), `start_rss` and `peak_rss` (bytes: the resident set before,
// the process's peak resident set, VmHWM, after).
import fs from "node:fs";

import * as ort from "onnxruntime-node";

import { createSessionFromFile } from "../dist/node.js";

const args = process.argv.slice(2);
const json = args.at(-1) === "--json";
const [kind, model, keyFile] = json ? args.slice(0, -1) : args;
const opts = json ? {} : { intraOpNumThreads: 1, interOpNumThreads: 1 };
const startRss = process.memoryUsage().rss;
const cpu0 = process.cpuUsage();
const t0 = performance.now();
let session;
if (kind === "plain") {
  session = await ort.InferenceSession.create(model, opts);
} else if (kind === "plain-bytes") {
  session = await ort.InferenceSession.create(new Uint8Array(fs.readFileSync(model)), opts);
} else if (kind === "protected" || kind === "protected-js") {
  const engine = kind === "protected" ? "native" : "js";
  ({ session } = await createSessionFromFile(ort, model, { key: fs.readFileSync(keyFile, "utf8"), engine }, opts));
} else {
  throw new Error(`unknown kind ${kind}: plain, plain-bytes, protected or protected-js`);
}
const seconds = (performance.now() - t0) / 1000;
if (json) {
  const cpu = process.cpuUsage(cpu0);
  // VmHWM of this process image (the rusage maximum also counts the parent's memory
  // before exec, where Linux has /proc); elsewhere that maximum.
  const hwm = (() => {
    try {
      return Number(/^VmHWM:\s+(\d+)/m.exec(fs.readFileSync("/proc/self/status", "utf8"))[1]) * 1024;
    } catch {
      return process.resourceUsage().maxRSS * 1024;
    }
  })();
  const peak = hwm;
  console.log(JSON.stringify({ seconds, cpu_seconds: (cpu.user + cpu.system) / 1e6, start_rss: startRss, peak_rss: peak }));
} else {
  console.log(`session_${kind} ${seconds.toFixed(4)}`);
}
await session.release();
