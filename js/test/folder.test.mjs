// The models of a protected model folder (format.md §16) carry their folder binding in
// their header (field 16): the reader decodes it as part of the canonical header and
// decrypts each model of the folder alone, byte for byte, its external data included.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";

import { open } from "../dist/index.js";
import { decryptFile, readModelFiles } from "../dist/node.js";
import { binary, ROOT, run, tempDir } from "./util.mjs";

const BIN = binary();
const MODELS = path.join(ROOT, "fixtures/models");
const skip = BIN ? false : "no onnx-protect binary (build it with cargo, or set ONNX_PROTECT_BIN)";
const same = (a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)) === 0;

test("each model of a protected folder decrypts alone, its folder binding decoded", { skip }, async () => {
  const dir = tempDir();
  try {
    const plain = path.join(dir, "plain");
    fs.mkdirSync(path.join(plain, "vision"), { recursive: true });
    fs.copyFileSync(path.join(MODELS, "external_data/model.onnx"), path.join(plain, "decoder.onnx"));
    for (const f of ["weights.bin", "extra.bin"]) fs.copyFileSync(path.join(MODELS, "external_data", f), path.join(plain, f));
    fs.copyFileSync(path.join(MODELS, "cnn_torch/model.onnx"), path.join(plain, "vision/model.onnx"));
    fs.writeFileSync(path.join(plain, "tokenizer.json"), '{"model": {}}');
    const key = path.join(dir, "k.key");
    run(BIN, ["keygen", "-o", key, "-q"]);
    const prot = path.join(dir, "protected");
    run(BIN, ["encrypt", plain, "-o", prot, "--key-file", key, "-q"]);
    const keyText = fs.readFileSync(key, "utf8");
    for (const name of ["decoder.onnx", "vision/model.onnx"]) {
      const { model, externalData } = await readModelFiles(path.join(prot, name));
      const op = await open(model, externalData);
      assert.equal(op.header.folder.path, name);
      assert.deepEqual(op.header.folder.models, ["decoder.onnx", "vision/model.onnx"]);
      assert.equal(op.header.folder.files.length, 1);
      assert.equal(op.header.folder.files[0].path, "tokenizer.json");
      assert.equal(op.header.folder.folder_id.length, 16);
      const out = await decryptFile(path.join(prot, name), { key: keyText, engine: "js" });
      assert.ok(same(out.model, fs.readFileSync(path.join(plain, name))), name);
      for (const [location, bytes] of out.externalData) {
        assert.ok(same(bytes, fs.readFileSync(path.join(plain, path.dirname(name), location))), `${name}: ${location}`);
      }
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
