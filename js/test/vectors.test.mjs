// Every format-2 vector of fixtures/vectors decrypts to its original byte for byte, with
// each of its key materials; other key material is "wrong key"; format 1 is refused.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";

import { decrypt, verify, WrongKey, UnsupportedVersion, NotSigned, Modified, AlreadyDecrypted, UsageError, KeyError } from "../dist/index.js";
import { decryptFile, readModelFiles } from "../dist/node.js";
import { keyOf, vectors, VECTORS } from "./util.mjs";

const same = (a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)) === 0;

for (const v of vectors()) {
  test(`vector ${v.name}: decrypts to the original`, async () => {
    const { model, externalData } = await readModelFiles(v.protected);
    const r = await decrypt(model, { ...keyOf(v.dir), externalData });
    assert.ok(same(r.model, fs.readFileSync(v.original)), "model bytes differ");
    assert.equal(r.tier, r.tiers);
    for (const [loc, data] of r.externalData) {
      assert.ok(same(data, fs.readFileSync(path.join(v.dir, "original", loc))), `${loc} differs`);
    }
    const rep = await verify(model, { externalData });
    assert.equal(rep.tensors > 0, true);
    // decryptFile by the JavaScript engine: the same result, read and decrypted in place
    // (native.test.mjs compares the native engine with it).
    const f = await decryptFile(v.protected, { ...keyOf(v.dir), engine: "js" });
    assert.ok(same(f.model, r.model), "decryptFile: model bytes differ");
    for (const [loc, data] of f.externalData) assert.ok(same(data, r.externalData.get(loc)), `decryptFile: ${loc}`);
  });

  test(`vector ${v.name}: other key material is a wrong key`, async () => {
    const { model, externalData } = await readModelFiles(v.protected);
    const other = keyOf(v.dir).key ? { key: new Uint8Array(32).fill(7) } : { passphrase: "not the passphrase of this model" };
    await assert.rejects(decrypt(model, { ...other, externalData }), WrongKey);
  });
}

test("a key given as 32 raw bytes (a Uint8Array or a Buffer) decrypts", async () => {
  for (const name of ["cnn_torch_v2_ctr", "external_data_v2_ctr"]) {
    const v = vectors().find((x) => x.name === name);
    const hex = fs.readFileSync(path.join(v.dir, "key.hex"), "utf8").trim();
    const raw = Uint8Array.from(Buffer.from(hex, "hex"));
    assert.equal(raw.length, 32);
    const { model, externalData } = await readModelFiles(v.protected);
    for (const key of [raw, Buffer.from(raw)]) {
      const r = await decrypt(model, { key, externalData });
      assert.ok(same(r.model, fs.readFileSync(v.original)), name);
    }
    // One bit of the raw key changed: a wrong key.
    raw[31] ^= 1;
    await assert.rejects(decrypt(model, { key: raw, externalData }), WrongKey);
  }
});

test("tier keys decrypt up to their tier, as the partial vectors", async () => {
  const dir = path.join(VECTORS, "cnn_torch_v2_tiers");
  const model = fs.readFileSync(path.join(dir, "protected.onnx"));
  for (const t of [1, 2]) {
    const r = await decrypt(model, { key: fs.readFileSync(path.join(dir, `tier${t}.hex`), "utf8") });
    assert.equal(r.tier, t);
    assert.ok(same(r.model, fs.readFileSync(path.join(dir, `partial-t${t}.onnx`))), `tier ${t}`);
  }
  const top = { key: fs.readFileSync(path.join(dir, "tier3.hex"), "utf8") };
  const r1 = await decrypt(model, { ...top, tier: 1 });
  assert.ok(same(r1.model, fs.readFileSync(path.join(dir, "partial-t1.onnx"))));
  // A partially decrypted file goes on to the next tier, and refuses its own tier's key.
  const p1 = fs.readFileSync(path.join(dir, "partial-t1.onnx"));
  const r2 = await decrypt(p1, { key: fs.readFileSync(path.join(dir, "tier2.hex"), "utf8") });
  assert.ok(same(r2.model, fs.readFileSync(path.join(dir, "partial-t2.onnx"))));
  const full = await decrypt(p1, top);
  assert.ok(same(full.model, fs.readFileSync(path.join(dir, "original.onnx"))));
  assert.ok(same((await decryptFile(path.join(dir, "partial-t1.onnx"), { ...top, engine: "js" })).model, fs.readFileSync(path.join(dir, "original.onnx"))));
  await assert.rejects(decrypt(p1, { key: fs.readFileSync(path.join(dir, "tier1.hex"), "utf8") }), AlreadyDecrypted);
  await assert.rejects(decrypt(model, { key: fs.readFileSync(path.join(dir, "tier1.hex"), "utf8"), tier: 2 }), UsageError);
});

test("an age identity opens the x25519 stanza", async () => {
  const dir = path.join(VECTORS, "roles_mix_v2_x25519");
  const r = await decrypt(fs.readFileSync(path.join(dir, "protected.onnx")), { identity: fs.readFileSync(path.join(dir, "identity.txt"), "utf8") });
  assert.ok(same(r.model, fs.readFileSync(path.join(dir, "original.onnx"))));
  const other = "AGE-SECRET-KEY-1GQ9778VQXMMJVE8SK7J6VT8UJ4HDQAJUVSFCWCM02D8GEWQ72PVQ2Y5J33";
  await assert.rejects(decrypt(fs.readFileSync(path.join(dir, "protected.onnx")), { identity: other }), WrongKey);
});

test("signers: the publisher's signature verifies, another signer is refused", async () => {
  const dir = path.join(VECTORS, "fp16_v2_fp_signed");
  const model = fs.readFileSync(path.join(dir, "protected.onnx"));
  const signer = fs.readFileSync(path.join(dir, "signer.pub"), "utf8").trim();
  await decrypt(model, { ...keyOf(dir), signers: [signer] });
  await verify(model, { signers: [signer] });
  const stranger = "onnx-protect-signer1" + "q".repeat(52) + "qqqqqq";
  await assert.rejects(verify(model, { signers: [stranger] }), (e) => e instanceof NotSigned || e instanceof KeyError);
  const unsigned = fs.readFileSync(path.join(VECTORS, "cnn_torch_v2_ctr/protected.onnx"));
  await assert.rejects(verify(unsigned, { signers: [signer] }), NotSigned);
});

test("format-1 models are refused as an unsupported version", async () => {
  for (const d of fs.readdirSync(VECTORS).filter((d) => !d.includes("_v2_") && fs.statSync(path.join(VECTORS, d)).isDirectory())) {
    const f = fs.existsSync(path.join(VECTORS, d, "protected.onnx")) ? path.join(VECTORS, d, "protected.onnx") : path.join(VECTORS, d, "protected/model.onnx");
    await assert.rejects(decrypt(fs.readFileSync(f), { key: new Uint8Array(32) }), UnsupportedVersion, d);
  }
});

test("a model whose external data is not given is a usage error, not a modified model", async () => {
  const v = vectors().find((x) => x.ext);
  const { model } = await readModelFiles(v.protected);
  await assert.rejects(decrypt(model, keyOf(v.dir)), UsageError);
});

test("signature bytes changed are refused as modified", async () => {
  const dir = path.join(VECTORS, "fp16_v2_fp_signed");
  const signer = fs.readFileSync(path.join(dir, "signer.pub"), "utf8").trim();
  const model = fs.readFileSync(path.join(dir, "protected.onnx"));
  // Changing the model at all is caught by the digest or checksum before the signature:
  // every outcome is a refusal, never acceptance.
  const copy = Uint8Array.from(model);
  copy[copy.length - 40] ^= 1;
  await assert.rejects(verify(copy, { signers: [signer] }), (e) => e instanceof Modified || e.kind);
});
