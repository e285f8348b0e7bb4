// The native engine (crates/node) against the JavaScript engine: decryptFile gives the same
// bytes, tier and counts for every vector and key material, and the same typed refusals
// (wrong key, changed bytes anywhere in the file, unsigned, format 1, tiers out of reach).
// Skips, with the reason, where the addon is not built, unless ONNX_PROTECT_REQUIRE_NATIVE=1
// (the README's test command builds it and sets that).
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";

import {
  AlreadyDecrypted, KeyError, Modified, NotSigned, OnnxProtectError, UnsupportedVersion, UsageError, WrongKey,
} from "../dist/index.js";
import { createSessionFromFile, decryptFile, nativeEngine, nativeEngineError } from "../dist/node.js";
import { nativeOnDemand, nativeOpenForSession } from "../dist/native.js";
import { keyOf, tempDir, vectors, VECTORS } from "./util.mjs";

const same = (a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)) === 0;
const engine = nativeEngine();
const skip = engine ? false : `native engine not available: ${nativeEngineError()}`;
if (!engine && process.env.ONNX_PROTECT_REQUIRE_NATIVE === "1") throw new Error(`ONNX_PROTECT_REQUIRE_NATIVE=1: ${nativeEngineError()}`);

/** decryptFile by both engines: the same bytes, external files, tier and counts. */
async function bothAlike(file, opts, what) {
  const n = await decryptFile(file, { ...opts, engine: "native" });
  const j = await decryptFile(file, { ...opts, engine: "js" });
  assert.ok(same(n.model, j.model), `${what}: model bytes`);
  assert.deepEqual([...n.externalData.keys()].sort(), [...j.externalData.keys()].sort(), `${what}: external files`);
  for (const [loc, data] of j.externalData) assert.ok(same(n.externalData.get(loc), data), `${what}: ${loc}`);
  for (const k of ["tier", "tiers", "tensors", "decryptedBytes"]) assert.equal(n[k], j[k], `${what}: ${k}`);
  return n;
}

/** Both engines refuse with the same class. */
async function bothRefuse(file, opts, cls, what) {
  await assert.rejects(decryptFile(file, { ...opts, engine: "js" }), cls, `${what} (js)`);
  await assert.rejects(decryptFile(file, { ...opts, engine: "native" }), cls, `${what} (native)`);
}

test("every format-2 vector decrypts alike by both engines", { skip }, async () => {
  for (const v of vectors()) {
    const n = await bothAlike(v.protected, keyOf(v.dir), v.name);
    assert.ok(same(n.model, fs.readFileSync(v.original)), `${v.name}: the original`);
    const other = keyOf(v.dir).key ? { key: new Uint8Array(32).fill(7) } : { passphrase: "not the passphrase of this model" };
    await bothRefuse(v.protected, other, WrongKey, `${v.name}: other key material`);
  }
});

test("key material of every kind: raw bytes, key file text, passphrase, age identity", { skip }, async () => {
  const v = vectors().find((x) => x.name === "cnn_torch_v2_ctr");
  const hex = fs.readFileSync(path.join(v.dir, "key.hex"), "utf8");
  await bothAlike(v.protected, { key: Uint8Array.from(Buffer.from(hex.trim(), "hex")) }, "raw key");
  await bothAlike(v.protected, { key: Buffer.from(hex) }, "key text as bytes");
  const x = path.join(VECTORS, "roles_mix_v2_x25519");
  await bothAlike(path.join(x, "protected.onnx"), { identity: fs.readFileSync(path.join(x, "identity.txt"), "utf8") }, "identity");
  const other = "AGE-SECRET-KEY-1GQ9778VQXMMJVE8SK7J6VT8UJ4HDQAJUVSFCWCM02D8GEWQ72PVQ2Y5J33";
  await bothRefuse(path.join(x, "protected.onnx"), { identity: other }, WrongKey, "another identity");
  await bothRefuse(v.protected, { key: "not a key" }, KeyError, "malformed key");
  await assert.rejects(decryptFile(v.protected, { key: hex, passphrase: "x", engine: "native" }), UsageError);
});

test("tiers: each tier key, a tier asked for, a tier out of reach, a tier already in clear", { skip }, async () => {
  const dir = path.join(VECTORS, "cnn_torch_v2_tiers");
  const prot = path.join(dir, "protected.onnx");
  const keyT = (t) => ({ key: fs.readFileSync(path.join(dir, `tier${t}.hex`), "utf8") });
  for (const t of [1, 2, 3]) {
    const n = await bothAlike(prot, keyT(t), `tier ${t}`);
    assert.equal(n.tier, t);
    assert.ok(same(n.model, fs.readFileSync(path.join(dir, t === 3 ? "original.onnx" : `partial-t${t}.onnx`))), `tier ${t}`);
  }
  await bothAlike(prot, { ...keyT(3), tier: 1 }, "tier 1 asked of the top key");
  await bothAlike(path.join(dir, "partial-t1.onnx"), keyT(3), "on from a partial file");
  await bothRefuse(prot, { ...keyT(1), tier: 2 }, UsageError, "a tier beyond the key's");
  await bothRefuse(prot, { ...keyT(3), tier: 0 }, UsageError, "tier 0");
  await bothRefuse(path.join(dir, "partial-t1.onnx"), { ...keyT(3), tier: 1 }, AlreadyDecrypted, "a tier in clear already");
});

test("signers, format 1, files that are not models", { skip }, async () => {
  const dir = path.join(VECTORS, "fp16_v2_fp_signed");
  const signer = fs.readFileSync(path.join(dir, "signer.pub"), "utf8").trim();
  await bothAlike(path.join(dir, "protected.onnx"), { ...keyOf(dir), signers: [signer] }, "signed");
  const unsigned = vectors().find((x) => x.name === "cnn_torch_v2_ctr");
  await bothRefuse(unsigned.protected, { ...keyOf(unsigned.dir), signers: [signer] }, NotSigned, "unsigned");
  for (const d of fs.readdirSync(VECTORS).filter((d) => !d.includes("_v2_") && fs.statSync(path.join(VECTORS, d)).isDirectory())) {
    const f = fs.existsSync(path.join(VECTORS, d, "protected.onnx")) ? path.join(VECTORS, d, "protected.onnx") : path.join(VECTORS, d, "protected/model.onnx");
    await assert.rejects(decryptFile(f, { key: new Uint8Array(32), engine: "native" }), UnsupportedVersion, d);
  }
  const t = tempDir();
  fs.writeFileSync(path.join(t, "junk.onnx"), "not a model at all");
  await assert.rejects(decryptFile(path.join(t, "junk.onnx"), { key: new Uint8Array(32), engine: "native" }), OnnxProtectError);
  await assert.rejects(decryptFile(path.join(t, "missing.onnx"), { key: new Uint8Array(32), engine: "native" }), (e) => /missing\.onnx/.test(e.message));
});

test("a change of any one byte of a protected file (model or external data) is refused", { skip }, async () => {
  // Every byte of a small model, then every 97th byte of a model with external data and of
  // its data file: each copy changed in one byte, decrypted from disk by the native engine.
  const t = tempDir();
  const cases = [
    [vectors().find((x) => x.name === "cnn_torch_v2_ctr"), "model", 1],
    [vectors().find((x) => x.ext), "model", 97],
    [vectors().find((x) => x.ext), "data", 97],
  ];
  for (const [v, which, step] of cases) {
    const dst = path.join(t, v.name + which);
    fs.mkdirSync(dst);
    const srcDir = path.dirname(v.protected);
    for (const f of fs.readdirSync(srcDir)) fs.copyFileSync(path.join(srcDir, f), path.join(dst, f));
    const model = path.join(dst, path.basename(v.protected));
    const target = which === "model" ? model : path.join(dst, fs.readdirSync(dst).find((f) => f !== path.basename(v.protected)));
    const orig = fs.readFileSync(target);
    let refused = 0;
    for (let i = 0; i < orig.length; i += step) {
      const copy = Buffer.from(orig);
      copy[i] ^= 0x01;
      fs.writeFileSync(target, copy);
      await assert.rejects(decryptFile(model, { ...keyOf(v.dir), engine: "native" }), OnnxProtectError, `${v.name} ${which} byte ${i}`);
      refused++;
    }
    fs.writeFileSync(target, orig);
    await decryptFile(model, { ...keyOf(v.dir), engine: "native" });
    assert.ok(refused > 0);
  }
});

test("a changed byte is refused as Modified, as by the JavaScript engine", { skip }, async () => {
  const v = vectors().find((x) => x.name === "cnn_torch_v2_ctr");
  const t = tempDir();
  const copy = Buffer.from(fs.readFileSync(v.protected));
  copy[Math.floor(copy.length / 2)] ^= 0x10;
  const f = path.join(t, "model.onnx");
  fs.writeFileSync(f, copy);
  await bothRefuse(f, keyOf(v.dir), Modified, "a weight byte");
});

test("options the native engine does not take go to the JavaScript engine, or are refused with engine 'native'", { skip }, async () => {
  const v = vectors().find((x) => x.name === "cnn_torch_v2_ctr");
  await assert.rejects(decryptFile(v.protected, { ...keyOf(v.dir), licence: "x", engine: "native" }), UsageError);
  await assert.rejects(decryptFile(v.protected, { ...keyOf(v.dir), engine: "rust" }), UsageError);
  // "auto" with a licence: the JavaScript engine, which (as for any model that names no
  // licence authority) opens it with the key alone.
  assert.ok(same((await decryptFile(v.protected, { ...keyOf(v.dir), licence: "x" })).model, fs.readFileSync(v.original)));
});

test("the session from a file by the native engine gives the plain model's outputs", { skip }, async (t) => {
  let ort;
  try {
    ort = await import("onnxruntime-node");
  } catch {
    t.skip("onnxruntime-node is not installed");
    return;
  }
  for (const name of ["cnn_torch_v2_ctr", "external_data_v2_ctr", "external_data_v2_leaves"]) {
    const v = vectors().find((x) => x.name === name);
    if (!v) continue;
    const plain = await ort.InferenceSession.create(v.original);
    const { session } = await createSessionFromFile(ort, v.protected, { ...keyOf(v.dir), engine: "native" });
    const feeds = {};
    for (const input of plain.inputNames) {
      const meta = plain.inputMetadata.find((m) => m.name === input);
      const shape = meta.shape.map((d) => (typeof d === "number" && d > 0 ? d : 1));
      const n = shape.reduce((a, b) => a * b, 1);
      feeds[input] = new ort.Tensor("float32", Float32Array.from({ length: n }, (_, i) => Math.sin(i)), shape);
    }
    const a = await plain.run(feeds), b = await session.run(feeds);
    for (const k of plain.outputNames) assert.deepEqual(Array.from(b[k].data), Array.from(a[k].data), `${name}: ${k}`);
  }
});

/** An onnxruntime stand-in that copies every external data buffer it is given, as
 * onnxruntime-node does, and keeps the copies (what a session built from them would hold). */
function copyingOrt() {
  const made = [];
  return {
    made,
    InferenceSession: {
      async create(model, options = {}) {
        const copies = new Map((options.externalData ?? []).map(({ path: p, data }) => [p, Buffer.from(data)]));
        const s = { model: Buffer.from(model), copies, released: false, async release() { s.released = true; } };
        made.push(s);
        return s;
      },
    },
  };
}

test("a session by the native engine fills external data on demand and settles it before it is returned", { skip }, async () => {
  const v = vectors().find((x) => x.name === "external_data_v2_leaves");
  const key = keyOf(v.dir);
  const { decrypted, region, graph } = await nativeOpenForSession(v.protected, key);
  assert.ok(graph, "onnxruntime is handed a graph built for the session");
  // Where the system has userfaultfd (Linux), the external data is a region filled on demand.
  assert.equal(region !== null, nativeOnDemand(), "a region exactly where on-demand filling is available");
  region?.settle();
  const ort = copyingOrt();
  const { session } = await createSessionFromFile(ort, v.protected, { ...key, engine: "native" });
  const whole = await decryptFile(v.protected, { ...key, engine: "js" });
  // The session's files are named anew; each external data file its graph names is handed
  // over whole (the model file's own tensors and unaligned copies have files of their own).
  const files = [...whole.externalData.values()];
  const external = [...session.copies].filter(([name]) => /^onnx-protect-node\.[0-9]+\.[0-9]+$/.test(name));
  assert.ok(external.length > 0, "an external data file handed over");
  for (const [name, data] of external) assert.ok(files.some((f) => same(f, data)), `${name}: the bytes handed over`);
  assert.ok([...session.copies.keys()].every((n) => n.startsWith("onnx-protect-node.")), "only the session's own files");
  assert.ok(!session.released);
  assert.ok(decrypted.externalData.size > 0);
});

test("every changed byte of external data filled on demand is refused before a session is built when a file is not handed over", { skip }, async () => {
  const v = vectors().find((x) => x.name === "external_data_v2_leaves");
  const key = keyOf(v.dir);
  const dir = tempDir();
  try {
    fs.cpSync(path.join(v.dir, "protected"), dir, { recursive: true });
    const model = path.join(dir, "model.onnx");
    for (const name of fs.readdirSync(dir).filter((f) => f !== "model.onnx")) {
      const file = path.join(dir, name);
      const good = fs.readFileSync(file);
      for (let i = 0; i < good.length; i++) {
        const bad = Buffer.from(good);
        bad[i] ^= 0x01;
        fs.writeFileSync(file, bad);
        const ort = copyingOrt();
        await assert.rejects(createSessionFromFile(ort, model, { ...key, engine: "native" }), Modified, `${name} byte ${i}`);
        // The graph built for the session holds this model's small tensors, read from the
        // region, and names no tensor of extra.bin: that file is verified (which settles the
        // region, and so every file) before a session is built (large.test.mjs: a change
        // found after it).
        assert.equal(ort.made.length, 0, `${name} byte ${i}: found before a session was built`);
        assert.ok(ort.made.every((s) => s.released), `${name} byte ${i}: a session built is released`);
      }
      fs.writeFileSync(file, good);
    }
    const { session } = await createSessionFromFile(copyingOrt(), model, { ...key, engine: "native" });
    assert.ok(!session.released, "the restored files open");
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("engine 'native' without the addon is a usage error that says why; 'auto' falls back", async () => {
  const v = vectors().find((x) => x.name === "cnn_torch_v2_ctr");
  const script = `
    import { decryptFile, nativeEngine } from ${JSON.stringify(new URL("../dist/node.js", import.meta.url).href)};
    const key = ${JSON.stringify(keyOf(v.dir))};
    const d = await decryptFile(${JSON.stringify(v.protected)}, key);
    let refused = "";
    try { await decryptFile(${JSON.stringify(v.protected)}, { ...key, engine: "native" }); } catch (e) { refused = e.constructor.name + ": " + e.message; }
    console.log(JSON.stringify({ engine: nativeEngine(), bytes: d.model.length, refused }));`;
  const out = execFileSync(process.execPath, ["--input-type=module", "-e", script], {
    env: { ...process.env, ONNX_PROTECT_NODE_ADDON: "/nonexistent/onnx_protect.node" },
  });
  const r = JSON.parse(out.toString());
  assert.equal(r.engine, null);
  assert.equal(r.bytes, fs.readFileSync(v.original).length);
  assert.match(r.refused, /^UsageError: .*\/nonexistent\/onnx_protect\.node/);
});

test("a changed byte of the manifest entry is refused with the same kind by both engines", { skip }, async () => {
  // Every byte from the manifest's key to the end of the file (the entry and the fields
  // after it): each copy decrypted by both engines, which must say the same. One difference
  // is allowed: a byte that breaks the entry's own framing leaves a file with no entry at its
  // end (docs/format.md §1), which the JavaScript engine, reading only the entry, calls not
  // protected, and the native engine, parsing the model first, an invalid model (it no longer
  // parses as a ModelProto).
  const v = vectors().find((x) => x.name === "cnn_torch_v2_ctr");
  const orig = fs.readFileSync(v.protected);
  const at = orig.lastIndexOf(Buffer.from("onnx-protect/v2"));
  assert.ok(at > 0, "the manifest entry's key");
  const f = path.join(tempDir(), "model.onnx");
  const kind = async (engine) => {
    try {
      await decryptFile(f, { ...keyOf(v.dir), engine });
      return "accepted";
    } catch (e) {
      return e.kind;
    }
  };
  const seen = new Map();
  for (let i = at; i < orig.length; i++) {
    const copy = Buffer.from(orig);
    copy[i] ^= 0x01;
    fs.writeFileSync(f, copy);
    const [j, n] = [await kind("js"), await kind("native")];
    assert.notEqual(j, "accepted", `byte ${i}`);
    if (!(j === "not_protected" && n === "invalid_model")) {
      assert.equal(n, j, `byte ${i}: the native engine says ${n}, the JavaScript engine ${j}`);
    }
    seen.set(`${j}/${n}`, (seen.get(`${j}/${n}`) ?? 0) + 1);
  }
  // Most bytes are the header's: "modified" (bad manifests included, as format.md §3 says).
  assert.ok((seen.get("modified/modified") ?? 0) > (orig.length - at) / 2, JSON.stringify([...seen]));
});
