// Models over the size from which Node spreads the work over worker threads (16 MiB per
// covered file): a ~95 MB model written here (a raw_data weight, a float_data weight and an
// external one, each crossing many 4 MiB chunks), protected by the binary in the CTR and
// format-preserving modes and with two tiers, decrypts byte for byte, from shared memory
// (readModelFiles), from a private buffer and from the file (decryptFile) alike, and runs in
// onnxruntime-node; a changed byte is refused.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";

import * as ort from "onnxruntime-node";

import { createSession, decrypt, open, verify, KeyError, Modified } from "../dist/index.js";
import { createSessionFromFile, decryptFile, nativeEngine, readModelFiles } from "../dist/node.js";
import { nativeOnDemand } from "../dist/native.js";
import { concat, encodeUtf8, encodeVarint, lengthDelimited } from "../dist/wire.js";
import { binary, run, tempDir } from "./util.mjs";

/** decryptFile by each engine: the JavaScript one, and the native one where it is built. */
const ENGINES = nativeEngine() ? ["js", "native"] : ["js"];
const BIN = binary();
const skip = BIN ? false : "no onnx-protect binary (build it with cargo, or set ONNX_PROTECT_BIN)";
const same = (a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)) === 0;

const varintField = (n, v) => concat([encodeVarint(n << 3), encodeVarint(v)]);
const str = (n, s) => lengthDelimited(n, encodeUtf8(s));
const packed = (n, values) => lengthDelimited(n, concat(values.map((v) => encodeVarint(v))));

function floats(n, seed) {
  const f = new Float32Array(n);
  for (let i = 0; i < n; i++) f[i] = Math.sin(i * 0.7 + seed) * 0.05;
  return new Uint8Array(f.buffer);
}

function valueInfo(name, dims) {
  const shape = lengthDelimited(2, concat(dims.map((d) => lengthDelimited(1, varintField(1, d)))));
  const tensorType = lengthDelimited(1, concat([varintField(1, 1), shape]));
  return concat([str(1, name), lengthDelimited(2, tensorType)]);
}

/** model.onnx and w2.bin in `dir`: Y_i = MatMul(X, W_i) for a raw_data W1 (`N1` columns), an
 * external W2 (`N`) and a float_data W3 (`N3`). */
function writeModel(dir, { N1, N, N3 } = { N1: 12800, N: 6144, N3: 4160 }) {
  const K = 1024;
  const w1 = concat([packed(1, [K, N1]), varintField(2, 1), str(8, "W1"), lengthDelimited(9, floats(K * N1, 1))]);
  const w2data = floats(K * N, 2);
  fs.writeFileSync(path.join(dir, "w2.bin"), w2data);
  const entry = (k, v) => lengthDelimited(13, concat([str(1, k), str(2, v)]));
  const w2 = concat([packed(1, [K, N]), varintField(2, 1), str(8, "W2"), entry("location", "w2.bin"), entry("offset", "0"), entry("length", String(w2data.length)), varintField(14, 1)]);
  const w3 = concat([packed(1, [K, N3]), varintField(2, 1), lengthDelimited(4, floats(K * N3, 3)), str(8, "W3")]);
  const node = (w, y) => lengthDelimited(1, concat([str(1, "X"), str(1, w), str(2, y), str(3, `mm_${w}`), str(4, "MatMul")]));
  const graph = concat([
    node("W1", "Y1"), node("W2", "Y2"), node("W3", "Y3"), str(2, "large"),
    lengthDelimited(5, w1), lengthDelimited(5, w2), lengthDelimited(5, w3),
    lengthDelimited(11, valueInfo("X", [1, K])),
    lengthDelimited(12, valueInfo("Y1", [1, N1])), lengthDelimited(12, valueInfo("Y2", [1, N])), lengthDelimited(12, valueInfo("Y3", [1, N3])),
  ]);
  const model = concat([varintField(1, 8), lengthDelimited(7, graph), lengthDelimited(8, concat([str(1, ""), varintField(2, 13)]))]);
  fs.writeFileSync(path.join(dir, "model.onnx"), model);
  return path.join(dir, "model.onnx");
}

test("large models: decrypted byte for byte through the worker threads, from shared or private memory; a changed byte is refused", { skip }, async () => {
  const dir = tempDir();
  try {
    const srcDir = path.join(dir, "src");
    fs.mkdirSync(srcDir);
    const src = writeModel(srcDir);
    assert.ok(fs.statSync(src).size > 40e6);
    const key = path.join(dir, "k.key");
    run(BIN, ["keygen", "-o", key, "-q", "--tiers", "2"]);
    const keyText = fs.readFileSync(key, "utf8");
    const original = fs.readFileSync(src), w2 = fs.readFileSync(path.join(srcDir, "w2.bin"));
    for (const [name, args] of [["ctr", ["--coefficient", "*=1"]], ["fp-rows", ["--coefficient", "*=0.5", "--mode", "*=fp"]], ["tiers", ["--tiers", "2"]]]) {
      const outDir = path.join(dir, name);
      fs.mkdirSync(outDir);
      const prot = path.join(outDir, "model.onnx");
      run(BIN, ["encrypt", src, "-o", prot, "--key-file", key, "-q", ...args]);
      const shared = await readModelFiles(prot);
      assert.ok(shared.model.buffer instanceof SharedArrayBuffer);
      const privateFiles = { model: new Uint8Array(fs.readFileSync(prot)), externalData: new Map([["w2.bin", new Uint8Array(fs.readFileSync(path.join(outDir, "w2.bin")))]]) };
      for (const [how, f] of [["shared", shared], ["private", privateFiles]]) {
        const d = await decrypt(f.model, { key: keyText, externalData: f.externalData });
        assert.ok(same(d.model, original), `${name} ${how}: model`);
        assert.ok(same(d.externalData.get("w2.bin"), w2), `${name} ${how}: w2.bin`);
        await verify(f.model, { externalData: f.externalData });
      }
      // decryptFile: read, hashed and decrypted in place (js); mapped by the Rust core (native).
      for (const engine of ENGINES) {
        const df = await decryptFile(prot, { key: keyText, engine });
        assert.ok(same(df.model, original), `${name} decryptFile (${engine}): model`);
        assert.ok(same(df.externalData.get("w2.bin"), w2), `${name} decryptFile (${engine}): w2.bin`);
      }
      if (name === "ctr" && ENGINES.includes("native")) {
        // The native engine's buffers are the decrypted memory itself: in a fresh process the
        // resident set grows by about the decrypted bytes once (a copy into JavaScript memory
        // would make it twice).
        const total = original.length + w2.length;
        const script = `
          import { decryptFile } from ${JSON.stringify(new URL("../dist/node.js", import.meta.url).href)};
          const before = process.memoryUsage().rss;
          const d = await decryptFile(${JSON.stringify(prot)}, { key: ${JSON.stringify(keyText)}, engine: "native" });
          const after = process.memoryUsage().rss;
          console.log(JSON.stringify({ grew: after - before, bytes: d.model.length + d.externalData.get("w2.bin").length }));`;
        const r = JSON.parse(execFileSync(process.execPath, ["--input-type=module", "-e", script]).toString());
        assert.equal(r.bytes, total);
        assert.ok(r.grew > 0.8 * total && r.grew < 1.4 * total, `the resident set grew by ${r.grew} bytes for ${total} decrypted`);
      }
      if (name === "ctr") {
        // onnxruntime-node takes the result (ordinary memory) and gives the plain model's outputs.
        const feeds = { X: new ort.Tensor("float32", Float32Array.from({ length: 1024 }, (_, i) => Math.cos(i)), [1, 1024]) };
        const plain = await (await ort.InferenceSession.create(src)).run(feeds);
        const { session } = await createSession(ort, shared.model, { key: keyText, externalData: shared.externalData });
        const got = await session.run(feeds);
        for (const y of ["Y1", "Y2", "Y3"]) assert.deepEqual(Array.from(got[y].data), Array.from(plain[y].data), y);
        const fromFile = (await createSessionFromFile(ort, prot, { key: keyText })).session;
        const got2 = await fromFile.run(feeds);
        for (const y of ["Y1", "Y2", "Y3"]) assert.deepEqual(Array.from(got2[y].data), Array.from(plain[y].data), y);
      }
      // A bit changed deep in each file: refused, with the key and without.
      const model = Uint8Array.from(shared.model);
      model[30_000_000] ^= 4;
      const changedModel = new Uint8Array(new SharedArrayBuffer(model.length));
      changedModel.set(model);
      await assert.rejects(decrypt(changedModel, { key: keyText, externalData: shared.externalData }), Modified);
      await assert.rejects(decrypt(model, { key: keyText, externalData: shared.externalData }), Modified);
      await assert.rejects(verify(changedModel, { externalData: shared.externalData }), Modified);
      const changedDir = path.join(dir, `${name}-changed`);
      fs.mkdirSync(changedDir);
      fs.writeFileSync(path.join(changedDir, "model.onnx"), model);
      fs.copyFileSync(path.join(outDir, "w2.bin"), path.join(changedDir, "w2.bin"));
      for (const engine of ENGINES) await assert.rejects(decryptFile(path.join(changedDir, "model.onnx"), { key: keyText, engine }), Modified);
      if (name === "ctr") {
        // A session from the file as well (by the native engine, W1's 50 MiB are filled on
        // demand for it: byte 10,000,000 is inside them, 60,000,000 inside W3).
        for (const at of [10_000_000, 60_000_000]) {
          const m = Uint8Array.from(shared.model);
          m[at] ^= 4;
          fs.writeFileSync(path.join(changedDir, "model.onnx"), m);
          for (const engine of ENGINES) {
            await assert.rejects(createSessionFromFile(ort, path.join(changedDir, "model.onnx"), { key: keyText, engine }), Modified, `${engine}, byte ${at}`);
          }
        }
      }
      fs.writeFileSync(path.join(changedDir, "model.onnx"), shared.model);
      const w2changed = fs.readFileSync(path.join(outDir, "w2.bin"));
      w2changed[12_345_678] ^= 2;
      fs.writeFileSync(path.join(changedDir, "w2.bin"), w2changed);
      for (const engine of ENGINES) await assert.rejects(decryptFile(path.join(changedDir, "model.onnx"), { key: keyText, engine }), Modified);
      if (name === "ctr" && nativeOnDemand()) {
        // W2's chunks are filled on demand as the session reads them: the changed one is found
        // as the session is built (read as zeros), reported when the region settles, and the
        // session built from it released. The stand-in reads every buffer as onnxruntime-node does.
        const made = [];
        const reading = { InferenceSession: { async create(m, o = {}) {
          const s = { copies: (o.externalData ?? []).map(({ data }) => Buffer.from(data)), released: false, async release() { s.released = true; } };
          made.push(s);
          return s;
        } } };
        await assert.rejects(createSessionFromFile(reading, path.join(changedDir, "model.onnx"), { key: keyText, engine: "native" }), Modified, "w2.bin changed");
        assert.equal(made.length, 1, "found after the session was built");
        assert.ok(made[0].released, "the session built is released");
      }
      const data = new Uint8Array(new SharedArrayBuffer(w2.length));
      data.set(shared.externalData.get("w2.bin"));
      data[w2.length - 5] ^= 1;
      await assert.rejects(decrypt(shared.model, { key: keyText, externalData: new Map([["w2.bin", data]]) }), Modified);
      await assert.rejects(verify(shared.model, { externalData: new Map([["w2.bin", data]]) }), Modified);
      if (name === "tiers") {
        // The tier-1 key's partial decryption: the command line's bytes.
        const t1 = `${key}.tier1`;
        const part = path.join(dir, "part", "model.onnx");
        fs.mkdirSync(path.dirname(part));
        run(BIN, ["decrypt", prot, "-o", part, "--key-file", t1, "-q"]);
        const d = await decrypt(shared.model, { key: fs.readFileSync(t1, "utf8"), externalData: shared.externalData });
        assert.equal(d.tier, 1);
        for (const engine of ENGINES) {
          assert.ok(same((await decryptFile(prot, { key: fs.readFileSync(t1, "utf8"), engine })).model, fs.readFileSync(part)), `tier 1 decryptFile (${engine})`);
        }
        assert.ok(same(d.model, fs.readFileSync(part)), "tier 1: model");
        assert.ok(same(d.externalData.get("w2.bin"), fs.readFileSync(path.join(path.dirname(part), "w2.bin"))), "tier 1: w2.bin");
      }
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("a model under 64 MiB with files over 16 MiB: its 1 MiB chunks hashed by the worker threads, decrypted byte for byte; a changed byte is refused", { skip }, async () => {
  const dir = tempDir();
  try {
    const srcDir = path.join(dir, "src");
    fs.mkdirSync(srcDir);
    // A 20 MiB raw_data W1 and 2 MiB float_data W3 in the model file, an 18 MiB W2 beside it.
    const src = writeModel(srcDir, { N1: 5120, N: 4608, N3: 512 });
    const key = path.join(dir, "k.key");
    run(BIN, ["keygen", "-o", key, "-q"]);
    const keyText = fs.readFileSync(key, "utf8");
    const original = fs.readFileSync(src), w2 = fs.readFileSync(path.join(srcDir, "w2.bin"));
    assert.ok(original.length > 16 << 20 && w2.length > 16 << 20 && original.length + w2.length < 64 << 20);
    const prot = path.join(dir, "out", "model.onnx");
    fs.mkdirSync(path.dirname(prot));
    run(BIN, ["encrypt", src, "-o", prot, "--key-file", key, "-q"]);
    const shared = await readModelFiles(prot);
    assert.equal(Number((await open(shared.model, shared.externalData)).header.chunk_size), 1 << 20);
    const d = await decrypt(shared.model, { key: keyText, externalData: shared.externalData });
    assert.ok(same(d.model, original) && same(d.externalData.get("w2.bin"), w2));
    for (const engine of ENGINES) {
      const df = await decryptFile(prot, { key: keyText, engine });
      assert.ok(same(df.model, original) && same(df.externalData.get("w2.bin"), w2), engine);
    }
    for (const [file, at] of [["model", 15_000_000], ["w2.bin", 9_000_001]]) {
      const m = Uint8Array.from(shared.model), w = Uint8Array.from(shared.externalData.get("w2.bin"));
      (file === "model" ? m : w)[at] ^= 8;
      const model = new Uint8Array(new SharedArrayBuffer(m.length)), data = new Uint8Array(new SharedArrayBuffer(w.length));
      model.set(m);
      data.set(w);
      await assert.rejects(decrypt(model, { key: keyText, externalData: new Map([["w2.bin", data]]) }), Modified, file);
      await assert.rejects(verify(model, { externalData: new Map([["w2.bin", data]]) }), Modified, file);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

// A label-locked model whose weights are one tensor of 50 MiB: the native engine hands
// onnxruntime-node a graph without weight bytes (the tensor filled on demand), and below the
// top tier the Rust core refuses it before anything reaches onnxruntime.
test("a label-locked model opened as a graph is refused below its top tier by the native engine", {
  skip: skip || (nativeEngine() && nativeOnDemand() ? false : "no native engine filling memory on demand"),
}, async () => {
  const dir = tempDir();
  try {
    const K = 1024, N = 12800;
    const w1 = concat([packed(1, [K, N]), varintField(2, 1), str(8, "W1"), lengthDelimited(9, floats(K * N, 1))]);
    const node = lengthDelimited(1, concat([str(1, "X"), str(1, "W1"), str(2, "Y"), str(3, "head"), str(4, "MatMul")]));
    const graph = concat([node, str(2, "head"), lengthDelimited(5, w1), lengthDelimited(11, valueInfo("X", [1, K])), lengthDelimited(12, valueInfo("Y", [1, N]))]);
    const src = path.join(dir, "model.onnx");
    fs.writeFileSync(src, concat([varintField(1, 8), lengthDelimited(7, graph), lengthDelimited(8, concat([str(1, ""), varintField(2, 13)]))]));
    const key = path.join(dir, "k.key");
    const locked = path.join(dir, "locked.onnx");
    run(BIN, ["keygen", "-o", key, "--tiers", "2", "-q"]);
    run(BIN, ["encrypt", src, "-o", locked, "--key-file", key, "--tiers", "2", "--lock-outputs", "-q"]);
    const top = fs.readFileSync(key, "utf8");
    const seen = [];
    const fake = { InferenceSession: { create: async (model, options) => { seen.push(options); return "session"; } } };
    for (const opts of [{ key: fs.readFileSync(`${key}.tier1`, "utf8") }, { key: top, tier: 1 }]) {
      await assert.rejects(createSessionFromFile(fake, locked, { ...opts, engine: "native" }), (e) => e instanceof KeyError && /label-locked/.test(e.message));
    }
    assert.equal(seen.length, 0, "onnxruntime was not called below the top tier");
    assert.equal((await createSessionFromFile(fake, locked, { key: top, engine: "native" })).session, "session");
    assert.ok(seen[0].externalData.some((f) => f.path.startsWith("onnx-protect-node.")), "the graph path was taken");
    // And onnxruntime-node gives the plain model's outputs from it.
    const feeds = { X: new ort.Tensor("float32", Float32Array.from({ length: K }, (_, i) => Math.sin(i)), [1, K]) };
    const plain = await (await ort.InferenceSession.create(src)).run(feeds);
    const got = await (await createSessionFromFile(ort, locked, { key: top, engine: "native" })).session.run(feeds);
    assert.deepEqual(Array.from(got.Y.data), Array.from(plain.Y.data));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
