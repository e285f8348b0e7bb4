// The package adds no process-wide listeners: blake3-wasm's glue adds `uncaughtException`
// and `unhandledRejection` listeners that rethrow (a caller's own crash would then be
// reported at the glue's line); the package removes them as the glue loads. Each case runs in
// a fresh process, where the glue has not been loaded yet.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import path from "node:path";
import { test } from "node:test";

import { VECTORS } from "./util.mjs";

const DIST = new URL("../dist/", import.meta.url).href;
const DIR = path.join(VECTORS, "cnn_torch_v2_ctr");

/** Runs `body` (an ES module's text, after the imports) in a fresh Node process. */
function inFreshProcess(body) {
  const script = `
    import fs from "node:fs";
    import { decrypt } from ${JSON.stringify(DIST + "index.js")};
    import { decryptFile } from ${JSON.stringify(DIST + "node.js")};
    const dir = ${JSON.stringify(DIR)};
    const key = fs.readFileSync(dir + "/key.hex", "utf8");
    const counts = () => ["uncaughtException", "unhandledRejection"].map((e) => process.listenerCount(e)).join(" ");
    ${body}`;
  return spawnSync(process.execPath, ["--input-type=module", "-e", script], { encoding: "utf8" });
}

for (const [what, call] of [
  ["decrypt", `await decrypt(fs.readFileSync(dir + "/protected.onnx"), { key })`],
  ["decryptFile", `await decryptFile(dir + "/protected.onnx", { key, engine: "js" })`],
]) {
  test(`after ${what}, the process has the listeners it had before`, () => {
    const r = inFreshProcess(`
      const before = counts();
      process.on("uncaughtException", () => {});
      ${call};
      process.removeAllListeners("uncaughtException");
      console.log(before, counts(), process.eventNames().join(","));`);
    assert.equal(r.status, 0, r.stderr);
    const [before, after] = [r.stdout.split(" ").slice(0, 2).join(" "), r.stdout.split(" ").slice(2, 4).join(" ")];
    assert.equal(before, "0 0");
    assert.equal(after, "0 0", `listeners after ${what}: ${r.stdout}`);
  });
}

test("a caller's own crash after a decryption is reported where it happened", () => {
  const r = inFreshProcess(`
    await decrypt(fs.readFileSync(dir + "/protected.onnx"), { key });
    setTimeout(() => { throw new Error("the caller's own crash"); }, 0);`);
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /the caller's own crash/);
  assert.match(r.stderr, /\[eval1\]|file:/, r.stderr);
  assert.doesNotMatch(r.stderr, /blake3/, r.stderr);
});
