// Label-locked models (format.md §15, `encrypt --lock-outputs`): a full decryption puts the
// classes back in true order and gives the original model byte for byte, the same bytes as
// `onnx-protect decrypt`; a partial one keeps the lock; the header's lock is checked against
// the model without a key.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";

import * as ort from "onnxruntime-node";

import { createSession, decrypt, open, verify, Modified } from "../dist/index.js";
import { readModelFiles } from "../dist/node.js";
import { binary, inTempDir, readNpy, resealed, ROOT, run, tempDir } from "./util.mjs";

const BIN = binary();
const skip = BIN ? false : "no onnx-protect binary (build it with cargo, or set ONNX_PROTECT_BIN)";
const same = (a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)) === 0;
const LOCK = path.join(ROOT, "fixtures/lock");

/** The classifiers of fixtures/digits and fixtures/zoo that a lock applies to, and every
 * case of fixtures/lock (those `encrypt --lock-outputs` refuses are skipped, and counted). */
function models() {
  const out = ["mlp", "cnn", "convmixer", "vit"].map((m) => path.join(ROOT, "fixtures/digits", `${m}.onnx`));
  for (const m of ["vowels/lstm", "vowels/gru", "osuleaf/conv1d", "families/digits-resnet", "families/vowels-transformer"]) {
    out.push(path.join(ROOT, "fixtures/zoo", `${m}.onnx`));
  }
  for (const c of fs.readdirSync(LOCK).sort()) if (fs.existsSync(path.join(LOCK, c, "model.onnx"))) out.push(path.join(LOCK, c, "model.onnx"));
  return out;
}

/** Runs the binary; false when it refuses with exit 7 (a model whose outputs cannot be locked). */
function tryRun(args) {
  try {
    run(BIN, args);
    return true;
  } catch (e) {
    if (e.status === 7) return false;
    throw new Error(`${args.join(" ")}: ${e.stderr}`);
  }
}

test("locked models decrypt to the original bytes, the same as the command line's", { skip }, async () => {
  const dir = tempDir();
  const key = path.join(dir, "k.key");
  run(BIN, ["keygen", "-o", key, "-q"]);
  const keyText = fs.readFileSync(key, "utf8");
  const refused = [];
  let locked = 0;
  try {
    for (const src of models()) {
      const original = fs.readFileSync(src);
      for (const [variant, args] of [["weights", []], ["labels", ["--clear-weights"]], ["fp", ["--mode", "*=fp"]]]) {
        const out = path.join(dir, "enc", variant, "model.onnx");
        fs.rmSync(path.dirname(out), { recursive: true, force: true });
        fs.mkdirSync(path.dirname(out), { recursive: true });
        if (!tryRun(["encrypt", src, "-o", out, "--key-file", key, "-q", "--lock-outputs", "--allow-empty", ...args])) {
          refused.push(path.relative(ROOT, src));
          break;
        }
        locked++;
        const { model, externalData } = await readModelFiles(out);
        assert.ok((await open(model, externalData)).lock, `${src}: no lock in the header`);
        const d = await decrypt(model, { key: keyText, externalData });
        const back = path.join(dir, "dec", variant, "model.onnx");
        fs.rmSync(path.dirname(back), { recursive: true, force: true });
        run(BIN, ["decrypt", out, "-o", back, "--key-file", key, "-q"]);
        assert.ok(same(d.model, fs.readFileSync(back)), `${src} ${variant}: not the command line's bytes`);
        assert.ok(same(d.model, original), `${src} ${variant}: not the original`);
        for (const [loc, data] of d.externalData) {
          assert.ok(same(data, fs.readFileSync(path.join(path.dirname(back), loc))), `${src} ${variant}: ${loc}`);
          assert.ok(same(data, fs.readFileSync(path.join(path.dirname(src), loc))), `${src} ${variant}: ${loc}`);
        }
      }
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  // Every classifier locks, and so do the storage cases (typed fields, external data,
  // int4 blocks, quantised layers); fixtures/lock keeps the ones that cannot be locked.
  assert.ok(refused.every((r) => r.startsWith("fixtures/lock/")), refused.join(", "));
  assert.ok(locked >= 3 * 29, `${locked} locked copies`);
  for (const c of ["dq_int4_blocked", "fp16_raw_and_int32_data", "double_data", "float_data", "external_data", "qdq_uint8_bias_int32"]) {
    assert.ok(!refused.includes(`fixtures/lock/${c}/model.onnx`), c);
  }
});

test("a locked model runs with the plain model's outputs once decrypted; a partial decryption keeps the lock", { skip }, async () => {
  await inTempDir(async (dir) => {
    const src = path.join(ROOT, "fixtures/digits/cnn.onnx");
    const key = path.join(dir, "k.key");
    run(BIN, ["keygen", "-o", key, "-q", "--tiers", "2"]);
    const keyText = fs.readFileSync(key, "utf8");
    const prot = path.join(dir, "p.onnx");
    run(BIN, ["encrypt", src, "-o", prot, "--key-file", key, "-q", "--tiers", "2", "--lock-outputs"]);
    const model = fs.readFileSync(prot);
    const x = readNpy(path.join(ROOT, "fixtures/zoo/digits/ref_x.npy"));
    const feeds = (s) => ({ [s.inputNames[0]]: new ort.Tensor("float32", x.data, x.shape) });
    const plain = await ort.InferenceSession.create(src);
    const want = (await plain.run(feeds(plain)))[plain.outputNames[0]].data;
    const { session } = await createSession(ort, model, { key: keyText });
    assert.deepEqual(Array.from((await session.run(feeds(session)))[session.outputNames[0]].data), Array.from(want));
    // The locked copy read as stored (its weights decrypted by a partial decryption only)
    // keeps the lock in its header: the same bytes as the command line's partial decryption.
    const part = path.join(dir, "part.onnx");
    run(BIN, ["decrypt", prot, "-o", part, "--key-file", key, "-q", "--tier", "1"]);
    const p1 = await decrypt(model, { key: keyText, tier: 1 });
    assert.ok(same(p1.model, fs.readFileSync(part)));
    assert.ok((await open(p1.model)).lock);
    assert.ok(same((await decrypt(p1.model, { key: keyText })).model, fs.readFileSync(src)));
  });
});

/** The model with its header's label lock changed by `change`, resealed (the MACs left as
 * they were). */
async function withLock(model, change) {
  const op = await open(model);
  const lock = structuredClone(op.header.label_lock);
  change(lock);
  return resealed(op, { ...op.header, label_lock: lock });
}

test("a header lock that breaks §15 is refused as modified without a key; one that keeps the rules fails the MACs", { skip }, async () => {
  await inTempDir(async (dir) => {
    const src = path.join(ROOT, "fixtures/digits/mlp.onnx");
    const key = path.join(dir, "k.key");
    run(BIN, ["keygen", "-o", key, "-q"]);
    const prot = path.join(dir, "p.onnx");
    run(BIN, ["encrypt", src, "-o", prot, "--key-file", key, "-q", "--lock-outputs"]);
    const model = fs.readFileSync(prot);
    const keyText = fs.readFileSync(key, "utf8");
    const cases = {
      "two classes": (l) => { l.classes = 2; },
      "a short sealed seed": (l) => { l.sealed_seed = l.sealed_seed.subarray(1); },
      "no tensor": (l) => { l.tensors = []; },
      "no output": (l) => { l.outputs = []; },
      "a locator with a leading zero": (l) => { l.tensors[0].locator = l.tensors[0].locator.replace(/^7\.0/, "7.00"); },
      "a locator naming no tensor": (l) => { l.tensors[0].locator = "7.0/5.999"; },
      "another name": (l) => { l.tensors[0].name += "x"; },
      "another data type": (l) => { l.tensors[0].data_type = 11; },
      "other dims": (l) => { l.tensors[0].dims = [...l.tensors[0].dims, 1n]; },
      "an axis without the classes": (l) => { l.tensors[0].axis = l.tensors[0].dims.findIndex((d) => d !== BigInt(l.classes)); },
      "a tensor twice": (l) => { l.tensors.push({ ...l.tensors[0] }); },
      "an output the graph lacks": (l) => { l.outputs[0].name = "nope"; },
      "an unknown output kind": (l) => { l.outputs[0].kind = 3; },
    };
    for (const [what, change] of Object.entries(cases)) {
      const m = await withLock(model, change);
      await assert.rejects(verify(m), Modified, what);
      await assert.rejects(decrypt(m, { key: keyText }), Modified, what);
    }
    // Within the rules (another node name, the seed sealed otherwise): the MACs refuse it.
    for (const change of [(l) => { l.node = "other"; }, (l) => { l.sealed_seed = l.sealed_seed.map((b) => b ^ 1); }]) {
      const m = await withLock(model, change);
      await verify(m);
      await assert.rejects(decrypt(m, { key: keyText }), (e) => e instanceof Modified && /MAC/.test(e.message));
    }
  });
});
