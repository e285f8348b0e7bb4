// One onnxruntime-node session made ready, from a plain model or from a protected one:
//   node bench/session.mjs plain MODEL            (onnxruntime reads the file itself)
//   node bench/session.mjs plain-bytes MODEL      (the file read into memory, then the bytes)
//   node bench/session.mjs protected MODEL KEY_FILE   (createSessionFromFile, native engine)
//   node bench/session.mjs protected-js MODEL KEY_FILE   (the same by the JavaScript engine)
// Prints "session_KIND SECONDS" (from the start of reading to a ready session).
import fs from "node:fs";

import * as ort from "onnxruntime-node";

import { createSessionFromFile } from "../dist/node.js";

const [kind, model, keyFile] = process.argv.slice(2);
const opts = { intraOpNumThreads: 1, interOpNumThreads: 1 };
const t0 = performance.now();
if (kind === "plain") {
  await ort.InferenceSession.create(model, opts);
} else if (kind === "plain-bytes") {
  await ort.InferenceSession.create(new Uint8Array(fs.readFileSync(model)), opts);
} else {
  const engine = kind === "protected" ? "native" : "js";
  await createSessionFromFile(ort, model, { key: fs.readFileSync(keyFile, "utf8"), engine }, opts);
}
console.log(`session_${kind} ${((performance.now() - t0) / 1000).toFixed(4)}`);
