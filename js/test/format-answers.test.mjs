// Answers docs/format.md gives where a reader could go either way: §1, a metadata entry
// whose framing is broken is an invalid model (modified only under an entry found at the
// end of the file); §3, two original names that name one file are alike.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";

import { InvalidModel, Modified, NotProtected, open, verify } from "../dist/index.js";
import { readModelFiles } from "../dist/node.js";
import { resealed, VECTORS } from "./util.mjs";

const read = (p) => new Uint8Array(fs.readFileSync(p));

test("§1: a broken entry frame is an invalid model, a broken content under an intact entry modified", async () => {
  const m = read(path.join(VECTORS, "cnn_torch_v2_ctr/protected.onnx"));
  const key = Buffer.from("onnx-protect/v2");
  const at = Buffer.from(m).lastIndexOf(key);
  const valueLen = m.slice();
  valueLen[at + key.length + 1] += 1; // the value's length runs past its entry
  await assert.rejects(verify(valueLen), InvalidModel);
  const broken = new Uint8Array([0x3a, 0xff, 0xff, 0x03, ...m]); // a field running past the end
  await assert.rejects(verify(broken), Modified);
  const other = m.slice();
  other[at - 5] = 0x7a; // the entry (0x72, a 2-byte length, 0x0A 0x0F) becomes field 15: no manifest key
  assert.equal(m[at - 5], 0x72);
  await assert.rejects(verify(other), NotProtected);
});

test("§3: original names that name one file once empty and '.' components are dropped are modified", async () => {
  const { model, externalData } = await readModelFiles(path.join(VECTORS, "external_data_v2_ctr/protected/model.onnx"));
  const op = await open(model, externalData);
  for (const names of [["./c.bin", "c.bin"], ["d/c.bin", "d/./c.bin"]]) {
    const changed = await resealed(op, { ...op.header, original_external_files: names });
    await assert.rejects(verify(changed, { externalData }), Modified, names.join(" "));
  }
  const fine = await resealed(op, { ...op.header, original_external_files: ["d/c.bin", "c.bin"] });
  await verify(fine, { externalData });
});
