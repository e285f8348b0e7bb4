// js/README.md's examples, run as they are written: the code block under "## Node" (run.mjs)
// and the one under "## In memory" (memory.mjs), each saved in a fresh folder whose
// node_modules links this package and onnxruntime-node (as `npm install` lays them out), on a
// protected vector and its key: they print the plain model's outputs, or its length and input;
// with another key they fail with a wrong key, printing no output.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";

import * as ort from "onnxruntime-node";

import { inTempDir, ROOT, VECTORS } from "./util.mjs";

const JS = path.join(ROOT, "js");

/** The first js code block under the README's heading `## heading`. */
function example(heading) {
  const text = fs.readFileSync(path.join(JS, "README.md"), "utf8");
  const m = new RegExp(`^## ${heading}\\n[\\s\\S]*?^\`\`\`js\\n([\\s\\S]*?)^\`\`\`$`, "m").exec(text);
  assert.ok(m, `README.md has no js code block under '## ${heading}'`);
  return m[1];
}

/** Runs `f(run)` in a fresh folder laid out as a project that installed the package, with the
 * README's block under `heading` as `script`, the vector's model as model.onnx, its key as
 * model.key and another key as other.key; `run(key)` runs the script on model.onnx. */
async function inProject(heading, script, dir, f) {
  await inTempDir(async (work) => {
    fs.writeFileSync(path.join(work, script), example(heading));
    fs.mkdirSync(path.join(work, "node_modules"));
    fs.symlinkSync(JS, path.join(work, "node_modules/onnx-protect"));
    fs.symlinkSync(path.join(JS, "node_modules/onnxruntime-node"), path.join(work, "node_modules/onnxruntime-node"));
    fs.copyFileSync(path.join(dir, "protected.onnx"), path.join(work, "model.onnx"));
    fs.copyFileSync(path.join(dir, "key.hex"), path.join(work, "model.key"));
    fs.writeFileSync(path.join(work, "other.key"), "07".repeat(32));
    await f((key) => spawnSync(process.execPath, [script, "model.onnx", key], { cwd: work, encoding: "utf8" }));
  });
}

test("the README's Node example prints the plain model's outputs, and refuses another key", async () => {
  const dir = path.join(VECTORS, "cnn_torch_v2_ctr");
  const plain = await ort.InferenceSession.create(path.join(dir, "original.onnx"));
  const { name, shape } = plain.inputMetadata[0];
  const out = await plain.run({ [name]: new ort.Tensor("float32", new Float32Array(shape.reduce((a, b) => a * b, 1)), shape) });
  const want = Array.from(out[plain.outputNames[0]].data);
  await inProject("Node", "run.mjs", dir, async (run) => {
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

test("the README's in-memory example verifies, decrypts to the original file and makes a session, and refuses another key", async () => {
  const dir = path.join(VECTORS, "cnn_torch_v2_ctr");
  const original = fs.readFileSync(path.join(dir, "original.onnx"));
  const plain = await ort.InferenceSession.create(path.join(dir, "original.onnx"));
  await inProject("In memory", "memory.mjs", dir, async (run) => {
    const r = run("model.key");
    assert.equal(r.status, 0, r.stderr);
    const [tensors, length, tier, input] = r.stdout.trim().split(" ");
    assert.ok(Number(tensors) >= 1, r.stdout);
    assert.deepEqual([Number(length), tier, input], [original.length, "1/1", plain.inputNames[0]], r.stdout);
    const wrong = run("other.key");
    assert.notEqual(wrong.status, 0);
    assert.match(wrong.stderr, /wrong key/);
    assert.equal(wrong.stdout, "");
  });
});
