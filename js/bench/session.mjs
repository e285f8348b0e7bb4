// One onnxruntime-node session made ready, from a plain file or from a protected model:
//   node bench/session.mjs plain MODEL
//   node bench/session.mjs protected MODEL KEY_FILE
// Prints "session SECONDS" (from the start of reading to a ready session).
import fs from "node:fs";

import * as ort from "onnxruntime-node";

import { createSession } from "../dist/index.js";
import { readModelFiles } from "../dist/node.js";

const [kind, model, keyFile] = process.argv.slice(2);
const opts = { intraOpNumThreads: 1, interOpNumThreads: 1 };
const t0 = performance.now();
if (kind === "plain") {
  await ort.InferenceSession.create(model, opts);
} else {
  const key = fs.readFileSync(keyFile, "utf8");
  const files = await readModelFiles(model);
  await createSession(ort, files.model, { key, externalData: files.externalData }, opts);
}
console.log(`session_${kind} ${((performance.now() - t0) / 1000).toFixed(4)}`);
