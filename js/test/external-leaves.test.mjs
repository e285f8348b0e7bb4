// Header.external_leaves (format.md §3, §9, §12 step 6): the binary lists the leaves of a
// model's external data files in its header; a header listing them with a wrong length is
// refused as modified without a key, one listing a wrong leaf (its MACs made again by a key
// holder) is refused as modified at step 6, and a header without them (a file written before
// the field) is accepted.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { after, test } from "node:test";

import { decrypt, open, verify, Modified, OnnxProtectError } from "../dist/index.js";
import { decryptFile, nativeEngine, readModelFiles } from "../dist/node.js";
import { blake3, u32be, u64be } from "../dist/crypto.js";
import { concat, encodeUtf8, encodeVarint, lengthDelimited } from "../dist/wire.js";
import { binary, keyOf, resealed, resealedWithKey, ROOT, run, tempDir, vectors } from "./util.mjs";

const BIN = binary();
const skip = BIN ? false : "no onnx-protect binary (build it with cargo, or set ONNX_PROTECT_BIN)";
/** decryptFile by each engine: the JavaScript one, and the native one where it is built. */
const ENGINES = nativeEngine() ? ["js", "native"] : ["js"];
const same = (a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)) === 0;
/** The JavaScript engine's refusal of the listed leaves (the native engine's words are its own). */
const isLeaves = (e) => e instanceof Modified && /external_leaves/.test(e.message);
const OTHER_KEY = new Uint8Array(32).fill(7);
/** The refusal of a header breaking §3 at step 1: `Modified` by the JavaScript engine; the
 * native engine (crates/node) reports the core's bad-manifest errors as `InvalidModel`,
 * its message saying "modified". */
const headerRefused = (engine) => (e) => (engine === "js" ? e instanceof Modified : e instanceof OnnxProtectError && /modified/.test(e.message));

const varintField = (n, v) => concat([encodeVarint(n << 3), encodeVarint(v)]);
const str = (n, s) => lengthDelimited(n, encodeUtf8(s));
const packed = (n, values) => lengthDelimited(n, concat(values.map((v) => encodeVarint(v))));

function floats(n, seed) {
  const f = new Float32Array(n);
  for (let i = 0; i < n; i++) f[i] = Math.sin(i * 0.3 + seed) * 0.05;
  return new Uint8Array(f.buffer);
}

function valueInfo(name, dims) {
  const shape = lengthDelimited(2, concat(dims.map((d) => lengthDelimited(1, varintField(1, d)))));
  return concat([str(1, name), lengthDelimited(2, lengthDelimited(1, concat([varintField(1, 1), shape])))]);
}

/** model.onnx, a.bin and b.bin in `dir`: Y_i = MatMul(X, W_i), W_a and W_b external, each
 * file 4.5 MiB (five chunks of the 1 MiB the binary writes for a model under 64 MiB). */
function writeTwoFileModel(dir) {
  const K = 1024, N = 1152;
  const weight = (name, file, seed) => {
    const data = floats(K * N, seed);
    fs.writeFileSync(path.join(dir, file), data);
    const entry = (k, v) => lengthDelimited(13, concat([str(1, k), str(2, v)]));
    return concat([packed(1, [K, N]), varintField(2, 1), str(8, name), entry("location", file), entry("offset", "0"), entry("length", String(data.length)), varintField(14, 1)]);
  };
  const node = (w, y) => lengthDelimited(1, concat([str(1, "X"), str(1, w), str(2, y), str(3, `mm_${w}`), str(4, "MatMul")]));
  const graph = concat([
    node("Wa", "Ya"), node("Wb", "Yb"), str(2, "two_files"),
    lengthDelimited(5, weight("Wa", "a.bin", 1)), lengthDelimited(5, weight("Wb", "b.bin", 2)),
    lengthDelimited(11, valueInfo("X", [1, K])),
    lengthDelimited(12, valueInfo("Ya", [1, N])), lengthDelimited(12, valueInfo("Yb", [1, N])),
  ]);
  const model = concat([varintField(1, 8), lengthDelimited(7, graph), lengthDelimited(8, concat([str(1, ""), varintField(2, 13)]))]);
  fs.writeFileSync(path.join(dir, "model.onnx"), model);
}

let work = null;
let made = null;
after(() => work && fs.rmSync(work, { recursive: true, force: true }));

/** The cases, made once: `one-chunk` (fixtures/models/external_data: two files of one
 * chunk each) and `two-chunk` (two files of several chunks each), each protected by the binary
 * into a folder of its own; `tiers`: the two-chunk model with two tiers. */
function cases() {
  if (made) return made;
  work = tempDir();
  const key = path.join(work, "k.key");
  run(BIN, ["keygen", "-o", key, "-q"]);
  const key2 = path.join(work, "k2.key");
  run(BIN, ["keygen", "-o", key2, "-q", "--tiers", "2"]);
  const twoSrc = path.join(work, "two-src");
  fs.mkdirSync(twoSrc);
  writeTwoFileModel(twoSrc);
  const protect = (name, srcDir, files, keyFile, args = []) => {
    const outDir = path.join(work, name);
    fs.mkdirSync(outDir);
    run(BIN, ["encrypt", path.join(srcDir, "model.onnx"), "-o", path.join(outDir, "model.onnx"), "--key-file", keyFile, "-q", "--coefficient", "*=1", ...args]);
    return { name, srcDir, files, prot: path.join(outDir, "model.onnx"), key: fs.readFileSync(keyFile, "utf8") };
  };
  made = {
    list: [
      protect("one-chunk", path.join(ROOT, "fixtures/models/external_data"), ["weights.bin", "extra.bin"], key),
      protect("two-chunk", twoSrc, ["a.bin", "b.bin"], key),
    ],
    tiers: { ...protect("tiers", twoSrc, ["a.bin", "b.bin"], key2, ["--tiers", "2"]), tier1: fs.readFileSync(`${key2}.tier1`, "utf8") },
  };
  return made;
}

/** §9: `leaf(i, j)` of every chunk of `data` as covered file `i`, concatenated. */
async function leavesOf(i, data, chunk) {
  const b3 = await blake3();
  const out = [];
  for (let j = 0; j < Math.ceil(data.length / chunk); j++) {
    out.push(b3([encodeUtf8("onnx-protect/v2/chunk"), u32be(i), u64be(j), data.subarray(j * chunk, (j + 1) * chunk)]));
  }
  return concat(out);
}

/** `model` and the external files written into a fresh folder of `work`: the model's path. */
let written = 0;
function writeCase(model, externalData) {
  const dir = path.join(work, `case-${written++}`);
  fs.mkdirSync(dir);
  fs.writeFileSync(path.join(dir, "model.onnx"), model);
  for (const [loc, data] of externalData) fs.writeFileSync(path.join(dir, loc), data);
  return path.join(dir, "model.onnx");
}

/** `d` (a decryption) is the original model of case `c` and its files, byte for byte. */
function isOriginal(d, c, what) {
  assert.ok(same(d.model, fs.readFileSync(path.join(c.srcDir, "model.onnx"))), `${what}: model bytes differ`);
  assert.deepEqual([...d.externalData.keys()].sort(), [...c.files].sort(), what);
  for (const [loc, data] of d.externalData) assert.ok(same(data, fs.readFileSync(path.join(c.srcDir, loc))), `${what}: ${loc} differs`);
}

test("the binary lists the external files' leaves in the header; the model decrypts byte for byte", { skip }, async () => {
  for (const c of cases().list) {
    const { model, externalData } = await readModelFiles(c.prot);
    const op = await open(model, externalData);
    const h = op.header;
    const chunk = Number(h.chunk_size);
    assert.deepEqual(h.external_files, c.files, c.name);
    assert.deepEqual(h.external_sizes, c.files.map((l) => BigInt(externalData.get(l).length)), c.name);
    const chunks = c.files.reduce((n, l) => n + Math.ceil(externalData.get(l).length / chunk), 0);
    assert.equal(chunks, c.name === "two-chunk" ? 10 : 2, c.name);
    assert.equal(h.external_leaves.length, 32 * chunks, c.name);
    const want = concat(await Promise.all(c.files.map((l, i) => leavesOf(i + 1, externalData.get(l), chunk))));
    assert.ok(same(h.external_leaves, want), `${c.name}: the listed leaves are leaf(i, j) of the external files`);
    isOriginal(await decrypt(model, { key: c.key, externalData }), c, c.name);
    await verify(model, { externalData });
    assert.equal((await verify(model, { key: c.key, externalData })).keyTier, 1);
    for (const engine of ENGINES) isOriginal(await decryptFile(c.prot, { key: c.key, engine }), c, `${c.name} decryptFile (${engine})`);
  }
});

test("external_leaves of a wrong length is refused as modified, without a key", { skip }, async () => {
  for (const c of cases().list) {
    const { model, externalData } = await readModelFiles(c.prot);
    const op = await open(model, externalData);
    const listed = op.header.external_leaves;
    const bad = {
      "one leaf short": { external_leaves: listed.subarray(0, listed.length - 32) },
      "one leaf more": { external_leaves: concat([listed, listed.subarray(0, 32)]) },
      "one byte more": { external_leaves: concat([listed, Uint8Array.of(0)]) },
      "one byte short": { external_leaves: listed.subarray(0, listed.length - 1) },
      "one leaf": { external_leaves: listed.subarray(0, 32) },
      "no external_sizes": { external_sizes: [] },
    };
    for (const [what, change] of Object.entries(bad)) {
      const header = { ...op.header, ...change };
      // The checksum sealed again, and (for a key holder) the MACs: the header's shape is
      // what refuses it, at step 1.
      for (const [how, changed] of [["resealed", await resealed(op, header)], ["MACs made again", await resealedWithKey(op, header, c.key)]]) {
        const w = `${c.name}, ${what}, ${how}`;
        await assert.rejects(verify(changed, { externalData }), isLeaves, `${w} (keyless)`);
        await assert.rejects(decrypt(changed, { key: OTHER_KEY, externalData }), isLeaves, `${w} (another key: modified, not wrong key)`);
        await assert.rejects(decrypt(changed, { key: c.key, externalData }), isLeaves, `${w} (the key)`);
        const file = writeCase(changed, externalData);
        for (const engine of ENGINES) {
          await assert.rejects(decryptFile(file, { key: OTHER_KEY, engine }), headerRefused(engine), `${w} decryptFile (${engine})`);
        }
      }
    }
  }
});

test("a wrong leaf in external_leaves, the MACs made again by a key holder, is refused as modified", { skip }, async () => {
  for (const c of cases().list) {
    const { model, externalData } = await readModelFiles(c.prot);
    const op = await open(model, externalData);
    const listed = op.header.external_leaves;
    // The forger's MACs are right: a header changed elsewhere, sealed the same way, opens.
    isOriginal(await decrypt(await resealedWithKey(op, { ...op.header, policy_summary: "changed" }, c.key), { key: c.key, externalData }), c, `${c.name}: resealed`);
    const wrong = [];
    for (let k = 0; k < listed.length / 32; k++) {
      const leaves = Uint8Array.from(listed);
      leaves[32 * k + (k % 32)] ^= 1;
      wrong.push([`leaf ${k} changed`, leaves]);
    }
    if (c.name === "two-chunk") {
      // The same leaves, file 2's listed first.
      const first = 32 * Math.ceil(Number(op.header.external_sizes[0]) / Number(op.header.chunk_size));
      wrong.push(["the files' leaves swapped", concat([listed.subarray(first), listed.subarray(0, first)])]);
      // The leaves of the model file's first chunk (covered file 0) for file 1's.
      const own = await leavesOf(0, op.content, Number(op.header.chunk_size));
      wrong.push(["a leaf of another file", concat([own.subarray(0, 32), listed.subarray(32)])]);
    }
    for (const [what, leaves] of wrong) {
      const changed = await resealedWithKey(op, { ...op.header, external_leaves: leaves }, c.key);
      const w = `${c.name}, ${what}`;
      await assert.rejects(decrypt(changed, { key: c.key, externalData }), isLeaves, `${w} (the key)`);
      await assert.rejects(verify(changed, { key: c.key, externalData }), isLeaves, `${w} (verify, the key)`);
      await assert.rejects(verify(changed, { externalData }), isLeaves, `${w} (keyless)`);
      const file = writeCase(changed, externalData);
      for (const engine of ENGINES) await assert.rejects(decryptFile(file, { key: c.key, engine }), Modified, `${w} decryptFile (${engine})`);
    }
  }
});

test("a partially decrypted file keeps the leaves of the canonical content; a wrong one is refused with the key", { skip }, async () => {
  const c = cases().tiers;
  const { model, externalData } = await readModelFiles(c.prot);
  const p = await decrypt(model, { key: c.tier1, externalData });
  assert.equal(p.tier, 1);
  const op = await open(p.model, p.externalData);
  assert.equal(op.restored, 1);
  assert.ok(same(op.header.external_leaves, (await open(model, externalData)).header.external_leaves), "the header is kept");
  // The tier-1 spans in clear: the external files as stored differ from their listed
  // (canonical) leaves, and the top key decrypts on.
  const chunk = Number(op.header.chunk_size);
  const stored = concat(await Promise.all(c.files.map((l, i) => leavesOf(i + 1, p.externalData.get(l), chunk))));
  assert.ok(!same(stored, op.header.external_leaves), "tier 1 decrypted something in the external files");
  isOriginal(await decrypt(p.model, { key: c.key, externalData: p.externalData }), c, "from the partial file");
  await verify(p.model, { key: c.key, externalData: p.externalData });
  const leaves = Uint8Array.from(op.header.external_leaves);
  leaves[40] ^= 0x80;
  const changed = await resealedWithKey(op, { ...op.header, external_leaves: leaves }, c.key);
  await assert.rejects(decrypt(changed, { key: c.key, externalData: p.externalData }), isLeaves, "the top key");
  await assert.rejects(verify(changed, { key: c.key, externalData: p.externalData }), isLeaves, "verify, the top key");
  const file = writeCase(changed, p.externalData);
  for (const engine of ENGINES) await assert.rejects(decryptFile(file, { key: c.key, engine }), Modified, `decryptFile (${engine})`);
});

test("a header without external_leaves (a file written before the field) is accepted", { skip }, async () => {
  for (const c of cases().list) {
    const { model, externalData } = await readModelFiles(c.prot);
    const op = await open(model, externalData);
    const header = { ...op.header, external_leaves: new Uint8Array(0) };
    const older = await resealedWithKey(op, header, c.key);
    assert.equal((await open(older, externalData)).header.external_leaves.length, 0);
    await verify(older, { externalData });
    await verify(older, { key: c.key, externalData });
    isOriginal(await decrypt(older, { key: c.key, externalData }), c, `${c.name} without leaves`);
    const file = writeCase(older, externalData);
    for (const engine of ENGINES) isOriginal(await decryptFile(file, { key: c.key, engine }), c, `${c.name} without leaves, decryptFile (${engine})`);
    // A changed external byte is still refused by the digest.
    const [loc, data] = [...externalData][0];
    const d = Uint8Array.from(data);
    d[d.length - 1] ^= 1;
    const changedData = new Map(externalData).set(loc, d);
    await assert.rejects(decrypt(older, { key: c.key, externalData: changedData }), (e) => e instanceof Modified && /content/.test(e.message));
    // The field is under the MACs: removed without them, the key refuses the header.
    const stripped = await resealed(op, header);
    await verify(stripped, { externalData });
    await assert.rejects(decrypt(stripped, { key: c.key, externalData }), (e) => e instanceof Modified && /MAC/.test(e.message));
  }
});

test("vectors with external data: leaves listed are those of their files, and a vector without them is accepted", async () => {
  for (const v of vectors().filter((x) => x.ext)) {
    const { model, externalData } = await readModelFiles(v.protected);
    const op = await open(model, externalData);
    const h = op.header;
    if (h.external_leaves.length) {
      const want = concat(await Promise.all(h.external_files.map((l, i) => leavesOf(i + 1, externalData.get(l), Number(h.chunk_size)))));
      assert.ok(same(h.external_leaves, want), v.name);
    }
    await verify(model, { ...keyOf(v.dir), externalData });
  }
});
