// A protected copy written next to its original gives its external data files names of its
// own and records the original names in Header field 14 (format.md §3): a full decryption
// gives back the original model and files under their original names, byte for byte; a
// partial one keeps the protected names; a header whose names break §3 is refused.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import * as ort from "onnxruntime-node";

import { createSession, decrypt, externalFilesOf, open, verify, Modified } from "../dist/index.js";
import { createSessionFromFile, nativeEngine, readModelFiles } from "../dist/node.js";
import { binary, resealed, ROOT, run, tempDir } from "./util.mjs";

const BIN = binary();
const SRC = path.join(ROOT, "fixtures/models/external_data");
const ORIGINAL_NAMES = ["weights.bin", "extra.bin"];
const HERE = path.dirname(fileURLToPath(import.meta.url));
const same = (a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)) === 0;
const skip = BIN ? false : "no onnx-protect binary (build it with cargo, or set ONNX_PROTECT_BIN)";

/** An external-data model (`model.onnx` and `names` of `src`) copied into a fresh folder,
 * and a protected copy written into that same folder (`encryptArgs` added). */
function sameFolder(encryptArgs = [], keygenArgs = [], src = SRC, names = ORIGINAL_NAMES) {
  const dir = tempDir();
  for (const f of ["model.onnx", ...names]) {
    fs.mkdirSync(path.dirname(path.join(dir, f)), { recursive: true });
    fs.copyFileSync(path.join(src, f), path.join(dir, f));
  }
  const key = path.join(dir, "k.key");
  run(BIN, ["keygen", "-o", key, "-q", ...keygenArgs]);
  const prot = path.join(dir, "model.protected.onnx");
  run(BIN, ["encrypt", path.join(dir, "model.onnx"), "-o", prot, "--key-file", key, "-q", "--coefficient", "*=1", ...encryptArgs]);
  return { dir, key, prot };
}

/** The model with its header's `original_external_files` replaced by `names`, resealed
 * (the MACs left as they were). */
async function withNames(model, externalData, names) {
  const op = await open(model, externalData);
  return resealed(op, { ...op.header, original_external_files: names });
}

function feedsOf(session) {
  const feeds = {};
  for (const [i, name] of session.inputNames.entries()) {
    const shape = session.inputMetadata[i].shape.map((s) => (typeof s === "number" ? s : 1));
    const n = shape.reduce((a, b) => a * b, 1);
    feeds[name] = new ort.Tensor("float32", Float32Array.from({ length: n }, (_, k) => Math.cos(k)), shape);
  }
  return feeds;
}

test("same folder: the original model and files come back under their original names, and run", { skip }, async () => {
  const { dir, key, prot } = sameFolder();
  try {
    const keyText = fs.readFileSync(key, "utf8");
    const { model, externalData } = await readModelFiles(prot);
    const stored = [...externalData.keys()];
    assert.deepEqual(stored, externalFilesOf(model));
    assert.ok(stored.every((l) => !ORIGINAL_NAMES.includes(l)), `the protected copy's files have names of their own: ${stored}`);
    await verify(model, { externalData });
    const d = await decrypt(model, { key: keyText, externalData });
    assert.ok(same(d.model, fs.readFileSync(path.join(dir, "model.onnx"))), "model bytes differ from the original");
    assert.deepEqual([...d.externalData.keys()], ORIGINAL_NAMES);
    for (const [loc, data] of d.externalData) assert.ok(same(data, fs.readFileSync(path.join(dir, loc))), `${loc} differs`);
    // The command line's decryption writes the same bytes under the same names.
    const out = path.join(dir, "restored");
    fs.mkdirSync(out);
    run(BIN, ["decrypt", prot, "-o", path.join(out, "model.onnx"), "--key-file", key, "-q"]);
    assert.ok(same(d.model, fs.readFileSync(path.join(out, "model.onnx"))));
    for (const [loc, data] of d.externalData) assert.ok(same(data, fs.readFileSync(path.join(out, loc))), `CLI ${loc}`);
    // In memory: onnxruntime gets the restored model with its files, and gives the plain
    // model's outputs.
    const plain = await ort.InferenceSession.create(path.join(dir, "model.onnx"));
    const { session } = await createSession(ort, model, { key: keyText, externalData });
    const feeds = feedsOf(plain);
    const a = await plain.run(feeds), b = await session.run(feeds);
    for (const o of plain.outputNames) assert.deepEqual(Array.from(b[o].data), Array.from(a[o].data), o);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("same folder: external tensors in nested graphs, and varint-stored tensors beside them, come back byte for byte and run", { skip }, async () => {
  // js/test/fixtures/make_external.py wrote these models.
  for (const [name, names] of [["nested_external", ["data/a.bin", "b.bin"]], ["fp16_external", ["fp16.bin"]]]) {
    const { dir, key, prot } = sameFolder([], [], path.join(HERE, "fixtures", name), names);
    try {
      const { model, externalData } = await readModelFiles(prot);
      assert.ok([...externalData.keys()].every((l) => !names.includes(l)), name);
      const d = await decrypt(model, { key: fs.readFileSync(key, "utf8"), externalData });
      assert.ok(same(d.model, fs.readFileSync(path.join(dir, "model.onnx"))), `${name}: model bytes differ from the original`);
      assert.deepEqual([...d.externalData.keys()], names);
      for (const [loc, data] of d.externalData) assert.ok(same(data, fs.readFileSync(path.join(dir, loc))), `${name}: ${loc} differs`);
      if (name === "nested_external") {
        // onnxruntime looks for a subgraph's external data on disk only (here it would find
        // nothing under the original names): the session's model holds those tensors.
        const plain = await ort.InferenceSession.create(path.join(dir, "model.onnx"));
        const feeds = feedsOf(plain);
        const want = await plain.run(feeds);
        for (const engine of nativeEngine() ? ["js", "native"] : ["js"]) {
          const { session } = await createSessionFromFile(ort, prot, { key: fs.readFileSync(key, "utf8"), engine });
          const got = await session.run(feeds);
          for (const o of plain.outputNames) assert.deepEqual(Array.from(got[o].data), Array.from(want[o].data), `${engine} ${o}`);
        }
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }
});

test("same folder, two tiers: a partial decryption keeps the protected names, a full one restores them", { skip }, async () => {
  const { dir, key, prot } = sameFolder(["--tiers", "2"], ["--tiers", "2"]);
  try {
    const tier1 = fs.readFileSync(`${key}.tier1`, "utf8");
    const { model, externalData } = await readModelFiles(prot);
    const stored = [...externalData.keys()];
    const p = await decrypt(model, { key: tier1, externalData });
    assert.equal(p.tier, 1);
    assert.deepEqual([...p.externalData.keys()], stored);
    assert.deepEqual(externalFilesOf(p.model), stored);
    // The command line's partial decryption gives the same bytes.
    const out = path.join(dir, "partial");
    fs.mkdirSync(out);
    const cliOut = path.join(out, path.basename(prot));
    run(BIN, ["decrypt", prot, "-o", cliOut, "--key-file", `${key}.tier1`, "-q"]);
    assert.ok(same(p.model, fs.readFileSync(cliOut)), "partial model differs from the command line's");
    for (const [loc, data] of p.externalData) assert.ok(same(data, fs.readFileSync(path.join(out, loc))), `partial ${loc}`);
    // The partial file, decrypted on with the top key, is the original under its own names.
    const full = await decrypt(p.model, { key: fs.readFileSync(key, "utf8"), externalData: p.externalData });
    assert.ok(same(full.model, fs.readFileSync(path.join(dir, "model.onnx"))));
    assert.deepEqual([...full.externalData.keys()], ORIGINAL_NAMES);
    for (const [loc, data] of full.externalData) assert.ok(same(data, fs.readFileSync(path.join(dir, loc))), loc);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("original_external_files breaking §3 is refused as modified, with and without the key", { skip }, async () => {
  const { dir, key, prot } = sameFolder();
  try {
    const keyText = fs.readFileSync(key, "utf8");
    const { model, externalData } = await readModelFiles(prot);
    const bad = {
      "a '..' component": ["../weights.bin", "extra.bin"],
      "a '..' component inside": ["a/../weights.bin", "extra.bin"],
      "a duplicate": ["weights.bin", "weights.bin"],
      "one name for two files": ["weights.bin"],
      "three names for two files": ["weights.bin", "extra.bin", "more.bin"],
      "an absolute name": ["/tmp/weights.bin", "extra.bin"],
      "a backslash root": ["\\weights.bin", "extra.bin"],
      "a drive letter": ["C:weights.bin", "extra.bin"],
      "an empty name": ["", "extra.bin"],
      "a name alike another once empty components go": ["data//weights.bin", "data/weights.bin"],
      "a name of empty components only": ["./", "extra.bin"],
      "a NUL": ["weights\0.bin", "extra.bin"],
    };
    for (const [what, names] of Object.entries(bad)) {
      const changed = await withNames(model, externalData, names);
      const isField = (e) => e instanceof Modified && e.message.includes("original_external_files");
      await assert.rejects(verify(changed, { externalData }), isField, `${what} (keyless)`);
      await assert.rejects(decrypt(changed, { key: keyText, externalData }), isField, `${what} (key)`);
    }
    // The re-sealed checksum is what these refusals got past: names that obey §3 pass the
    // keyless checks, and the MACs (which cover the header) refuse them with the key.
    for (const names of [["extra.bin", "weights.bin"], ["sub/w.bin", "x.bin"], ["data//weights.bin", "./extra.bin"], []]) {
      const changed = await withNames(model, externalData, names);
      await verify(changed, { externalData });
      await assert.rejects(decrypt(changed, { key: keyText, externalData }), (e) => e instanceof Modified && /MAC/.test(e.message), JSON.stringify(names));
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
