// Protected copies of the digits and zoo models, made by the onnx-protect binary, decrypt
// byte for byte and run in onnxruntime-node with the plain model's outputs.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";

import * as ort from "onnxruntime-node";

import { createSession, decrypt } from "../dist/index.js";
import { readModelFiles } from "../dist/node.js";
import { binary, readNpy, ROOT, run, tempDir } from "./util.mjs";

const BIN = binary();
const ZOO = path.join(ROOT, "fixtures/zoo");
const zoo = (folder, names) => names.map((m) => ({ file: path.join(ZOO, folder, `${m}.onnx`), x: path.join(ZOO, folder, "ref_x.npy"), ref: path.join(ZOO, folder, `${m}.ref.npy`) }));
/** A folder whose models come with their own input (`NAME.x.npy`) and reference output. */
const own = (folder) => fs.readdirSync(path.join(ZOO, folder)).filter((f) => f.endsWith(".onnx")).sort().map((f) => {
  const m = f.slice(0, -5);
  return { file: path.join(ZOO, folder, f), x: path.join(ZOO, folder, `${m}.x.npy`), ref: path.join(ZOO, folder, `${m}.ref.npy`) };
});
// The four digits models, the zoo's fourteen classifiers and its 23 operator probes.
const MODELS = [
  ...["cnn", "mlp", "convmixer", "vit"].map((m) => ({ file: path.join(ROOT, "fixtures/digits", `${m}.onnx`), x: path.join(ZOO, "digits/ref_x.npy") })),
  ...zoo("digits", ["cnn", "mlp", "convmixer", "vit"]),
  ...zoo("vowels", ["lstm", "gru", "cnn", "mlp", "vit"]),
  ...zoo("osuleaf", ["conv1d", "convmixer", "vit"]),
  ...own("families"),
  ...own("ops"),
];
const POLICIES = { builtin: [], all: ["--coefficient", "*=1"], fp: ["--coefficient", "*=0.5", "--mode", "*=fp"] };

async function outputs(session, x) {
  const name = session.inputNames[0];
  const out = await session.run({ [name]: new ort.Tensor("float32", x.data, x.shape) });
  return out[session.outputNames[0]].data;
}

const skip = BIN ? false : "no onnx-protect binary (build it with cargo, or set ONNX_PROTECT_BIN)";

test("digits and zoo models (classifiers, families, operator probes): decrypted byte for byte, same outputs in onnxruntime-node", { skip }, async () => {
  assert.equal(MODELS.length, 4 + 14 + 23);
  const dir = tempDir();
  const key = path.join(dir, "model.key");
  run(BIN, ["keygen", "-o", key, "-q"]);
  const keyText = fs.readFileSync(key, "utf8");
  try {
    for (const m of MODELS) {
      const x = readNpy(m.x);
      const plain = await ort.InferenceSession.create(m.file);
      const want = await outputs(plain, x);
      if (m.ref) {
        const ref = readNpy(m.ref).data;
        for (let i = 0; i < ref.length; i++) assert.ok(Math.abs(ref[i] - want[i]) <= 1e-4 * Math.max(1, Math.abs(ref[i])), `${m.file}: onnxruntime-node and onnxruntime differ`);
      }
      for (const [pname, args] of Object.entries(POLICIES)) {
        const out = path.join(dir, `p-${pname}.onnx`);
        // --allow-empty: seven operator probes have no weight; they are authenticated all the same.
        run(BIN, ["encrypt", m.file, "-o", out, "--key-file", key, "-q", "--force", "--allow-empty", ...args]);
        const { model, externalData } = await readModelFiles(out);
        const d = await decrypt(model, { key: keyText, externalData });
        assert.ok(Buffer.compare(Buffer.from(d.model), fs.readFileSync(m.file)) === 0, `${m.file} ${pname}: not byte-identical`);
        const { session } = await createSession(ort, model, { key: keyText, externalData });
        const got = await outputs(session, x);
        assert.deepEqual(Array.from(got), Array.from(want), `${m.file} ${pname}: outputs differ`);
      }
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("a model with external data: decrypted with its side files, run from memory", { skip }, async () => {
  const src = path.join(ROOT, "fixtures/models/external_data/model.onnx");
  const dir = tempDir();
  try {
    const key = path.join(dir, "k.key");
    run(BIN, ["keygen", "-o", key, "-q"]);
    const outDir = path.join(dir, "out");
    fs.mkdirSync(outDir);
    run(BIN, ["encrypt", src, "-o", path.join(outDir, "model.onnx"), "--key-file", key, "-q", "--coefficient", "*=1"]);
    const { model, externalData } = await readModelFiles(path.join(outDir, "model.onnx"));
    assert.ok(externalData.size > 0);
    const d = await decrypt(model, { key: fs.readFileSync(key, "utf8"), externalData });
    assert.ok(Buffer.compare(Buffer.from(d.model), fs.readFileSync(src)) === 0);
    for (const [loc, data] of d.externalData) {
      assert.ok(Buffer.compare(Buffer.from(data), fs.readFileSync(path.join(path.dirname(src), loc))) === 0, loc);
    }
    // The header records each external file's length: a file one byte longer is refused
    // before any of its bytes is read, naming the file.
    const [loc0, data0] = [...externalData][0];
    const grown = new Map(externalData).set(loc0, new Uint8Array([...data0, 0]));
    await assert.rejects(decrypt(model, { key: fs.readFileSync(key, "utf8"), externalData: grown }),
      (e) => e.kind === "modified" && e.message.includes(`'${loc0}' is ${data0.length + 1} bytes`));
    const plain = await ort.InferenceSession.create(src);
    const { session } = await createSession(ort, model, { key: fs.readFileSync(key, "utf8"), externalData });
    const feeds = {};
    for (const [i, name] of plain.inputNames.entries()) {
      const meta = plain.inputMetadata[i];
      const shape = meta.shape.map((s) => (typeof s === "number" ? s : 1));
      const n = shape.reduce((a, b) => a * b, 1);
      feeds[name] = new ort.Tensor("float32", Float32Array.from({ length: n }, (_, k) => Math.sin(k)), shape);
    }
    const a = await plain.run(feeds), b = await session.run(feeds);
    for (const o of plain.outputNames) assert.deepEqual(Array.from(b[o].data), Array.from(a[o].data), o);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
