// js/README.md's Node example, run as it is written: its code block saved as run.mjs in a
// fresh folder whose node_modules links this package and onnxruntime-node (as `npm install`
// lays them out), on a protected vector and its key: it prints the plain model's outputs;
// with another key it fails with a wrong key, printing no output.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";

import * as ort from "onnxruntime-node";

import { inTempDir, ROOT, VECTORS } from "./util.mjs";

const JS = path.join(ROOT, "js");

/** The code block under the README's "## Node" heading. */
function nodeExample() {
  const text = fs.readFileSync(path.join(JS, "README.md"), "utf8");
  const m = /^## Node\n[\s\S]*?^```js\n([\s\S]*?)^```$/m.exec(text);
  assert.ok(m, "README.md has no js code block under '## Node'");
  return m[1];
}

test("the README's Node example prints the plain model's outputs, and refuses another key", async () => {
  const dir = path.join(VECTORS, "cnn_torch_v2_ctr");
  const plain = await ort.InferenceSession.create(path.join(dir, "original.onnx"));
  const { name, shape } = plain.inputMetadata[0];
  const out = await plain.run({ [name]: new ort.Tensor("float32", new Float32Array(shape.reduce((a, b) => a * b, 1)), shape) });
  const want = Array.from(out[plain.outputNames[0]].data);
  await inTempDir(async (work) => {
    fs.writeFileSync(path.join(work, "run.mjs"), nodeExample());
    fs.mkdirSync(path.join(work, "node_modules"));
    fs.symlinkSync(JS, path.join(work, "node_modules/onnx-protect"));
    fs.symlinkSync(path.join(JS, "node_modules/onnxruntime-node"), path.join(work, "node_modules/onnxruntime-node"));
    fs.copyFileSync(path.join(dir, "protected.onnx"), path.join(work, "model.onnx"));
    fs.copyFileSync(path.join(dir, "key.hex"), path.join(work, "model.key"));
    fs.writeFileSync(path.join(work, "other.key"), "07".repeat(32));
    const run = (key) => spawnSync(process.execPath, ["run.mjs", "model.onnx", key], { cwd: work, encoding: "utf8" });
    const r = run("model.key");
    assert.equal(r.status, 0, r.stderr);
    const m = /^(\S+) \[([^\]]*)\]/.exec(r.stdout.replace(/\s+/g, " ").trim());
    assert.ok(m, r.stdout);
    assert.equal(m[1], plain.outputNames[0]);
    const got = m[2].split(",").map(Number);
    assert.equal(got.length, want.length);
    got.forEach((v, i) => assert.ok(Math.abs(v - want[i]) <= 1e-5 * Math.max(1, Math.abs(want[i])), `output ${i}: ${v} vs ${want[i]}`));
    const wrong = run("other.key");
    assert.notEqual(wrong.status, 0);
    assert.match(wrong.stderr, /wrong key/);
    assert.equal(wrong.stdout, "");
  });
});
