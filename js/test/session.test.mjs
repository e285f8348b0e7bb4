// Session options that would make onnxruntime write the decrypted model (or an EP context
// holding it) to disk are refused before anything is decrypted; profiling is allowed.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";

import { checkSessionOptions, createSession, KeyError, UsageError } from "../dist/index.js";
import { createSessionFromFile, nativeEngine } from "../dist/node.js";
import { binary, keyOf, ROOT, run, tempDir, VECTORS } from "./util.mjs";

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

// Execution providers' options that write a compiled copy of the model to disk (the list of
// docs/runtime.md), each refused in an `executionProviders` entry (under its own name and in
// camel case) and as a config entry `ep.<provider>.<option>` in `extra` (nested and dotted);
// the same option switched off passes.
for (const [provider, option, value] of [
  ["tensorrt", "trt_engine_cache_enable", "1"],
  ["tensorrt", "trt_dump_ep_context_model", true],
  ["tensorrt", "trt_timing_cache_enable", "True"],
  ["NvTensorRTRTXExecutionProvider", "nv_dump_ep_context_model", "1"],
  ["nvtensorrtrtx", "ep.context_enable", "1"],
  ["openvino", "cache_dir", "/tmp/ov-cache"],
  ["coreml", "ModelCacheDirectory", "/tmp/coreml-cache"],
  ["qnn", "qnn_context_cache_enable", 1],
  ["migraphx", "migraphx_save_compiled_model", "1"],
]) {
  test(`${provider} option ${option} is refused`, async () => {
    const camel = option.replace(/[._]([a-z])/g, (_, c) => c.toUpperCase());
    const lower = provider.toLowerCase();
    // Each refusal names the option as it was given.
    const refused = [
      [{ executionProviders: ["cpu", { name: provider, [option]: value }] }, option],
      [{ executionProviders: [{ name: provider, [camel]: value }] }, camel],
      [{ extra: { ep: { [lower]: { [option]: String(value) } } } }, `ep.${lower}.${option}`],
      [{ extra: { [`ep.${lower}.${option}`]: String(value) } }, `ep.${lower}.${option}`],
    ];
    for (const [opts, named] of refused) {
      assert.throws(() => checkSessionOptions(opts), (e) => e instanceof UsageError && e.message.includes(named), JSON.stringify(opts));
    }
    const fake = { InferenceSession: { create: async () => assert.fail("onnxruntime was called") } };
    const dir = path.join(VECTORS, "cnn_torch_v2_ctr");
    await assert.rejects(createSession(fake, fs.readFileSync(path.join(dir, "protected.onnx")), keyOf(dir), refused[0][0]), UsageError);
    for (const v of ["", "0", 0, false, "false", undefined]) {
      checkSessionOptions({ executionProviders: [{ name: provider, [option]: v }] });
      checkSessionOptions({ extra: { [`ep.${lower}.${option}`]: v === undefined ? "" : String(v) } });
    }
    // Another provider's option of that name is not this provider's cache.
    checkSessionOptions({ executionProviders: [{ name: "cpu", [option]: value }] });
  });
}

test("the session gets the original model's bytes, and the package's copy is zeroed after", async () => {
  const dir = path.join(VECTORS, "cnn_torch_v2_ctr");
  let seen = null;
  const fake = { InferenceSession: { create: async (bytes) => { seen = { copy: Uint8Array.from(bytes), ref: bytes }; return "session"; } } };
  const { session } = await createSession(fake, fs.readFileSync(path.join(dir, "protected.onnx")), keyOf(dir));
  assert.equal(session, "session");
  assert.ok(Buffer.compare(Buffer.from(seen.copy), fs.readFileSync(path.join(dir, "original.onnx"))) === 0);
  assert.ok(seen.ref.every((b) => b === 0), "the decrypted buffer was not zeroed");
});

test("a label-locked model opened below its top tier is refused, not served in locked order", { skip: binary() ? false : "no onnx-protect binary" }, async () => {
  const bin = binary();
  const dir = tempDir();
  try {
    const key = path.join(dir, "k.key");
    const locked = path.join(dir, "locked.onnx");
    run(bin, ["keygen", "-o", key, "--tiers", "2", "-q"]);
    run(bin, ["encrypt", path.join(ROOT, "fixtures/digits/mlp.onnx"), "-o", locked, "--key-file", key, "--tiers", "2", "--lock-outputs", "-q"]);
    const bytes = fs.readFileSync(locked);
    let created = 0;
    const fake = { InferenceSession: { create: async () => { created += 1; return "session"; } } };
    const top = fs.readFileSync(key, "utf8");
    await assert.rejects(createSession(fake, bytes, { key: fs.readFileSync(`${key}.tier1`, "utf8") }), (e) => e instanceof KeyError && /label-locked/.test(e.message));
    await assert.rejects(createSession(fake, bytes, { key: top, tier: 1 }), KeyError);
    assert.equal(created, 0, "onnxruntime was not called below the top tier");
    const { session } = await createSession(fake, bytes, { key: top });
    assert.equal(session, "session");
    // From the file by the native engine: refused by the Rust core before the graph is built.
    if (nativeEngine()) {
      for (const opts of [{ key: fs.readFileSync(`${key}.tier1`, "utf8") }, { key: top, tier: 1 }]) {
        await assert.rejects(createSessionFromFile(fake, locked, { ...opts, engine: "native" }), (e) => e instanceof KeyError && /label-locked/.test(e.message));
      }
      assert.equal(created, 1, "onnxruntime was not called below the top tier");
      assert.equal((await createSessionFromFile(fake, locked, { key: top, engine: "native" })).session, "session");
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
