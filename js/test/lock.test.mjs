// Label-locked models (format.md §15, `encrypt --lock-outputs`): a full decryption puts the
// classes back in true order and gives the original model byte for byte, the same bytes as
// `onnx-protect decrypt`; a partial one keeps the lock; the header's lock is checked against
// the model without a key (the tensors it names included); the seal of its seed is opened by
// a full decryption only, after the content digest.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";

import * as ort from "onnxruntime-node";

import { createSession, decrypt, open, verify, Modified } from "../dist/index.js";
import { decryptFile, readModelFiles } from "../dist/node.js";
import { binary, inTempDir, readNpy, resealed, resealedWithKey, ROOT, run, tempDir } from "./util.mjs";

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

test("the seal of the seed is opened by a full decryption only, after the content digest: verification and a partial decryption never depend on it", { skip }, async () => {
  await inTempDir(async (dir) => {
    const src = path.join(ROOT, "fixtures/digits/cnn.onnx");
    const key = path.join(dir, "k.key");
    run(BIN, ["keygen", "-o", key, "-q", "--tiers", "2"]);
    const keyText = fs.readFileSync(key, "utf8");
    const prot = path.join(dir, "p.onnx");
    run(BIN, ["encrypt", src, "-o", prot, "--key-file", key, "-q", "--tiers", "2", "--lock-outputs"]);
    const op = await open(fs.readFileSync(prot));
    // A key holder's file whose seed is sealed otherwise: its MACs hold.
    const lock = structuredClone(op.header.label_lock);
    lock.sealed_seed = lock.sealed_seed.map((b) => b ^ 0x55);
    const m = await resealedWithKey(op, { ...op.header, label_lock: lock }, keyText);
    assert.equal((await verify(m)).tiers, 2);
    assert.equal((await verify(m, { key: keyText })).keyTier, 2);
    const p1 = await decrypt(m, { key: keyText, tier: 1 });
    assert.equal(p1.tier, 1);
    assert.ok((await open(p1.model)).lock);
    await verify(p1.model, { key: keyText });
    const sealRefused = (e) => e instanceof Modified && /sealed seed of the label lock does not open/.test(e.message);
    await assert.rejects(decrypt(m, { key: keyText }), sealRefused);
    await assert.rejects(decrypt(p1.model, { key: keyText }), sealRefused);
    const file = path.join(dir, "sealed-otherwise.onnx");
    fs.writeFileSync(file, m);
    await assert.rejects(decryptFile(file, { key: keyText, engine: "js" }), sealRefused);
    // The command line refuses it too, and verifies it.
    run(BIN, ["verify", file, "--key-file", key, "-q"]);
    assert.throws(() => run(BIN, ["decrypt", file, "-o", path.join(dir, "out.onnx"), "--key-file", key, "-q"]), (e) => /modified/.test(String(e.stderr)));
    assert.ok(!fs.existsSync(path.join(dir, "out.onnx")));
    // Step 6 comes first: content that does not match its digest is refused as that, the
    // seal not yet opened.
    const w = op.tensors.find((t) => t.storage === 1 && t.nbytes > 0);
    const changed = m.slice();
    changed[w.segments[0][0]] ^= 1;
    await assert.rejects(decrypt(changed, { key: keyText }), (e) => e instanceof Modified && /content does not match/.test(e.message));
  });
});

// A model of the tensors the §15 rules judge, each with 3 classes along axis 0, and a node
// reading `x` into the output `y` (protobuf written by hand).
function varint(v) {
  const out = [];
  let x = BigInt(v);
  while (x >= 0x80n) {
    out.push(Number(x & 0x7fn) | 0x80);
    x >>= 7n;
  }
  out.push(Number(x));
  return Buffer.from(out);
}
const bytesField = (n, value) => Buffer.concat([varint((n << 3) | 2), varint(value.length), Buffer.from(value)]);
const varintField = (n, value) => Buffer.concat([varint(n << 3), varint(value)]);
const packed = (n, values) => bytesField(n, Buffer.concat(values.map(varint)));
const tensorProto = (name, dataType, dims, storage) =>
  Buffer.concat([...dims.map((d) => varintField(1, d)), varintField(2, dataType), bytesField(8, name), storage]);

function storageModel() {
  const inits = [
    tensorProto("w", 1, [3, 4], bytesField(9, Buffer.alloc(48, 0x3f))), // FLOAT in raw_data
    tensorProto("s", 8, [3], Buffer.concat(["a", "b", "c"].map((x) => bytesField(6, x)))), // STRING
    tensorProto("e", 1, [3, 0], Buffer.alloc(0)), // no stored data
    tensorProto("f6", 27, [3], packed(5, [1, 2, 3])), // FLOAT6E2M3 in int32_data
    tensorProto("f6raw", 28, [3], bytesField(9, [5, 6, 7])), // FLOAT6E3M2 in raw_data
    tensorProto("i8", 3, [3], packed(5, [1, 2, 3])), // INT8 in int32_data
  ];
  const node = Buffer.concat([bytesField(1, "x"), bytesField(2, "y"), bytesField(3, "n"), bytesField(4, "Identity")]);
  const graph = Buffer.concat([
    bytesField(1, node), bytesField(2, "g"), ...inits.map((t) => bytesField(5, t)),
    bytesField(11, bytesField(1, "x")), bytesField(12, bytesField(1, "y")),
  ]);
  return Buffer.concat([varintField(1, 10), bytesField(7, graph), bytesField(8, varintField(2, 21))]);
}

test("a lock naming a STRING tensor, one without stored data, a 6-bit float in int32_data or a tensor twice is modified without a key", { skip }, async () => {
  await inTempDir(async (dir) => {
    const plain = path.join(dir, "m.onnx");
    fs.writeFileSync(plain, storageModel());
    const key = path.join(dir, "k.key");
    run(BIN, ["keygen", "-o", key, "-q"]);
    const keyText = fs.readFileSync(key, "utf8");
    const prot = path.join(dir, "p.onnx");
    run(BIN, ["encrypt", plain, "-o", prot, "--key-file", key, "-q", "--allow-empty"]);
    const op = await open(fs.readFileSync(prot));
    const lockOf = (names) => ({
      classes: 3,
      sealed_seed: new Uint8Array(48),
      tensors: names.map((n) => {
        const t = op.tensors.find((x) => x.name === n);
        return { locator: t.locator, name: t.name, data_type: t.dataType, dims: t.dims, axis: 0, part: "weight" };
      }),
      outputs: [{ name: "y", kind: 1 }],
      node: "n",
    });
    const refused = [
      [["s"], "'s'", "holds strings"],
      [["w", "e"], "'e'", "no stored data"],
      [["f6"], "'f6'", "in int32_data"],
      [["f6", "w"], "'f6'", "in int32_data"],
      [["w", "s"], "'s'", "holds strings"],
      [["w", "w"], "'w'", "named twice"],
      [["i8", "w", "i8"], "'i8'", "named twice"],
    ];
    for (const [names, tensor, what] of refused) {
      const m = await resealed(op, { ...op.header, label_lock: lockOf(names) });
      const says = (e) => e instanceof Modified && e.message.includes(tensor) && e.message.includes(what);
      await assert.rejects(open(m), says, names.join(" "));
      await assert.rejects(verify(m), says, names.join(" "));
      await assert.rejects(decrypt(m, { key: keyText }), says, names.join(" "));
    }
    // Bytes that can be stored back (raw_data of any type, varints of whole-byte types) pass
    // the header check; the MACs, computed without the lock, then refuse them.
    for (const names of [["w"], ["f6raw"], ["i8"], ["w", "f6raw", "i8"]]) {
      const m = await resealed(op, { ...op.header, label_lock: lockOf(names) });
      assert.ok((await open(m)).lock, names.join(" "));
      await verify(m);
      await assert.rejects(decrypt(m, { key: keyText }), (e) => e instanceof Modified && /MAC/.test(e.message), names.join(" "));
    }
  });
});
