// Session options that would make onnxruntime write the decrypted model (or an EP context
// holding it) to disk are refused before anything is decrypted; profiling is allowed.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";

import { checkSessionOptions, createSession, UsageError } from "../dist/index.js";
import { keyOf, VECTORS } from "./util.mjs";

test("options writing the model to disk are refused", async () => {
  for (const opts of [
    { optimizedModelFilePath: "/tmp/plain.onnx" },
    { extra: { session: { optimized_model_external_initializers_file_name: "w.bin" } } },
    { extra: { ep: { context_enable: "1" } } },
    { extra: { ep: { context_file_path: "/tmp/ctx.onnx" } } },
    { extra: { "ep.context_enable": "1" } },
  ]) {
    assert.throws(() => checkSessionOptions(opts), UsageError, JSON.stringify(opts));
    const fake = { InferenceSession: { create: async () => assert.fail("onnxruntime was called") } };
    const dir = path.join(VECTORS, "cnn_torch_v2_ctr");
    await assert.rejects(createSession(fake, fs.readFileSync(path.join(dir, "protected.onnx")), keyOf(dir), opts), UsageError);
  }
  for (const opts of [{ enableProfiling: true }, { extra: { ep: { context_enable: "0" } } }, { graphOptimizationLevel: "all" }, undefined]) {
    checkSessionOptions(opts);
  }
});

test("the session gets the original model's bytes, and the package's copy is zeroed after", async () => {
  const dir = path.join(VECTORS, "cnn_torch_v2_ctr");
  let seen = null;
  const fake = { InferenceSession: { create: async (bytes) => { seen = { copy: Uint8Array.from(bytes), ref: bytes }; return "session"; } } };
  const { session } = await createSession(fake, fs.readFileSync(path.join(dir, "protected.onnx")), keyOf(dir));
  assert.equal(session, "session");
  assert.ok(Buffer.compare(Buffer.from(seen.copy), fs.readFileSync(path.join(dir, "original.onnx"))) === 0);
  assert.ok(seen.ref.every((b) => b === 0), "the decrypted buffer was not zeroed");
});
