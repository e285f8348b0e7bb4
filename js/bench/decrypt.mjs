// One timed decryption (every byte verified, the key given) of a protected model:
//   node bench/decrypt.mjs native MODEL KEY_FILE   decryptFile by the native engine (the
//                                                  Rust core: mapped, decrypted on all cores)
//   node bench/decrypt.mjs file MODEL KEY_FILE     decryptFile by the JavaScript engine (read,
//                                                  hashed while read, decrypted in place)
//   node bench/decrypt.mjs memory MODEL KEY_FILE   readModelFiles, then decrypt
// Prints "js_KIND SECONDS bytes=N decrypted=N", from the start of reading to the result, as
// the Rust example times mapping the file and decrypting it.
import fs from "node:fs";

import { decrypt } from "../dist/index.js";
import { decryptFile, readModelFiles } from "../dist/node.js";

const [kind, model, keyFile] = process.argv.slice(2);
const key = fs.readFileSync(keyFile, "utf8");
const t0 = performance.now();
let d;
if (kind === "native" || kind === "file") {
  d = await decryptFile(model, { key, engine: kind === "native" ? "native" : "js" });
} else {
  const files = await readModelFiles(model);
  d = await decrypt(files.model, { key, externalData: files.externalData });
}
console.log(`js_${kind} ${((performance.now() - t0) / 1000).toFixed(4)} bytes=${d.model.length} decrypted=${d.decryptedBytes}`);
