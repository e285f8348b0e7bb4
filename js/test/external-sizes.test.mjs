// An external data file whose length is not the one the header records (`external_sizes`,
// format.md §3) is refused before it is read: a sparse file of 1.5 GiB or 1 TiB in place of a
// side file of 2,560 bytes is refused in well under a second, as `Modified`, by the
// JavaScript engine (decryptFile, readModelFiles) and by the native engine where it is built.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";

import { Modified, OnnxProtectError } from "../dist/index.js";
import { decryptFile, nativeEngine, readModelFiles } from "../dist/node.js";
import { inTempDir, keyOf, VECTORS } from "./util.mjs";

const ENGINES = nativeEngine() ? ["js", "native"] : ["js"];
const V = path.join(VECTORS, "external_data_v2_leaves");

/** The kind of `p`'s refusal and how long it took (ms). */
async function refusal(p) {
  const t = performance.now();
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof OnnxProtectError, `not a typed refusal: ${e}`);
    return { kind: e.kind, error: e, ms: performance.now() - t };
  }
  assert.fail("a side file of the wrong length was accepted");
}

for (const [what, size] of [["1.5 GiB", 3 * 2 ** 29], ["1 TiB", 2 ** 40], ["one byte short", 2559]]) {
  test(`a side file of ${what} where the header records 2,560 bytes is refused before it is read`, async () => {
    await inTempDir(async (dir) => {
      for (const f of fs.readdirSync(path.join(V, "protected"))) fs.copyFileSync(path.join(V, "protected", f), path.join(dir, f));
      assert.equal(fs.statSync(path.join(dir, "weights.bin")).size, 2560);
      // Sparse: the file system stores none of the bytes it grew by.
      fs.truncateSync(path.join(dir, "weights.bin"), size);
      const file = path.join(dir, "model.onnx");
      const kinds = [];
      for (const engine of ENGINES) {
        const r = await refusal(decryptFile(file, { ...keyOf(V), engine }));
        assert.ok(r.error instanceof Modified, `decryptFile (${engine}): ${r.error}`);
        assert.ok(r.ms < 1000, `decryptFile (${engine}) took ${r.ms.toFixed(0)} ms`);
        kinds.push(r.kind);
      }
      const r = await refusal(readModelFiles(file));
      assert.ok(r.error instanceof Modified && r.ms < 1000, `readModelFiles: ${r.error}, ${r.ms.toFixed(0)} ms`);
      assert.match(r.error.message, new RegExp(`'weights.bin' is ${size} bytes, its header says 2560`));
      assert.deepEqual(new Set(kinds), new Set(["modified"]), `the engines' kinds: ${kinds}`);
    });
  });
}
