// One timed in-memory decryption (every byte verified, the key given) of a protected model:
//   node bench/decrypt.mjs MODEL KEY_FILE
// Prints "js_decrypt SECONDS bytes=N" (the model read into memory first, outside the timing,
// as the Rust example maps its file before timing starts... it times open + index too).
import fs from "node:fs";

import { decrypt } from "../dist/index.js";
import { readModelFiles } from "../dist/node.js";

const [model, keyFile] = process.argv.slice(2);
const key = fs.readFileSync(keyFile, "utf8");
const t0 = performance.now();
const files = await readModelFiles(model);
const t1 = performance.now();
const d = await decrypt(files.model, { key, externalData: files.externalData });
const t2 = performance.now();
console.log(`js_read ${((t1 - t0) / 1000).toFixed(4)} js_decrypt ${((t2 - t1) / 1000).toFixed(4)} js_total ${((t2 - t0) / 1000).toFixed(4)} bytes=${d.model.length} decrypted=${d.decryptedBytes}`);
