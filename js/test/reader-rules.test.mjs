// The JavaScript reader against the answers docs/format.md gives to questions on §8 (age-plugin
// and tpm stanzas at step 1), §12 (external_sizes, the opening stanza, a repeated location key)
// and Appendix C (licence recipients, control characters, model ids). The reader opens no tpm
// or age-plugin stanza with a key: for those kinds only its keyless step-1 checks are tested.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";

import { decrypt, evaluateLicence, LicenceMalformed, LicenceWrongDevice, Modified, open, parseLicence, verify, WrongKey } from "../dist/index.js";
import { binary, inTempDir, resealedWithKey, ROOT, run, VECTORS } from "./util.mjs";

const read = (p) => new Uint8Array(fs.readFileSync(p));

/** `op` (from `open`) with its stanzas replaced by `change(stanzas)`, the checksum sealed again
 * (the MACs, which cover the stanzas, left as they were: keyless checks only). */
async function withStanzas(op, change) {
  const { sha256 } = await import("../dist/crypto.js");
  const { concat, encode, encodeUtf8, lengthDelimited } = await import("../dist/wire.js");
  const env = { ...op.env, recipients: encode("Recipients", { stanzas: change(op.stanzas) }), checksum: new Uint8Array(0) };
  env.checksum = sha256(concat([encodeUtf8("onnx-protect/v2/checksum"), encode("Envelope", env)]));
  const value = encodeUtf8(Buffer.from(encode("Envelope", env)).toString("base64"));
  const entry = lengthDelimited(14, concat([lengthDelimited(1, encodeUtf8("onnx-protect/v2")), lengthDelimited(2, value)]));
  return concat([op.model.subarray(0, op.entryStart), entry]);
}

const stanza = (kind, fields) => ({ kind, tier: 1, label: "", salt: new Uint8Array(0), kdf: null, body: new Uint8Array(0), ...fields });

test("§8 age-plugin at step 1: only salt and kdf absent and a body of at most 16384 bytes; label and body content unexamined", async () => {
  const op = await open(read(path.join(VECTORS, "cnn_torch_v2_ctr/protected.onnx")));
  const add = (fields) => withStanzas(op, (s) => [...s, stanza("age-plugin", fields)]);
  // Passing step 1: an empty body, a body no age file, a label no recipient at all.
  for (const [what, fields] of Object.entries({
    "an empty body": {},
    "a body of 16384 bytes that is no age file, a label with a control character": { body: new Uint8Array(16384).fill(0x41), label: "not\ta recipient" },
    "an age-looking body, an upper-case label": { body: new TextEncoder().encode("age-encryption.org/v1\n-> X25519 a\n-> X25519 b\n---"), label: "AGE1YUBIKEY1QQQ" },
  })) await verify(await add(fields), {}).catch((e) => assert.fail(`${what}: ${e.message}`));
  for (const [what, fields] of Object.entries({
    "a salt": { salt: new Uint8Array(16), label: "age1yubikey1q" },
    "a kdf": { kdf: { algorithm: "argon2id", salt: new Uint8Array(16), m_cost_kib: 8, t_cost: 1, p_cost: 1 } },
    "a body of 16385 bytes": { body: new Uint8Array(16385) },
  })) await assert.rejects(verify(await add(fields)), Modified, what);
});

test("§8 tpm: the label is compared as a string, never decoded; at step 1 it is not examined", async () => {
  const dir = path.join(VECTORS, "cnn_torch_v2_tpm");
  const model = read(path.join(dir, "protected.onnx"));
  const op = await open(model);
  const tpm = op.stanzas.find((s) => s.kind === "tpm");
  assert.equal(tpm.label, "onnx-protect-tpm1qd43050juykyy3lchnnw2caygre8wqmasyk7kvaq7jsnj3wcnrpfvm7cs3u");
  for (const label of [tpm.label.toUpperCase(), "", "no recipient", "onnx-protect-tpm1\u0085"]) {
    const m = await withStanzas(op, (s) => s.map((st) => (st.kind === "tpm" ? { ...st, label } : st)));
    await verify(m);
  }
  // The key stanza still opens the model beside the tpm stanza the reader skips.
  const key = fs.readFileSync(path.join(dir, "key.hex"), "utf8");
  const out = await decrypt(model, { key });
  assert.deepEqual(Buffer.from(out.model), Buffer.from(read(path.join(dir, "original.onnx"))));
});

test("§3, §12 step 3: external_sizes is compared with each file's length before any key work", async () => {
  const dir = path.join(VECTORS, "external_data_v2_leaves/protected");
  const model = read(path.join(dir, "model.onnx"));
  const files = Object.fromEntries(["weights.bin", "extra.bin"].map((f) => [f, read(path.join(dir, f))]));
  const op = await open(model, new Map(Object.entries(files)));
  assert.equal(op.header.external_sizes.length, 2);
  const key = fs.readFileSync(path.join(VECTORS, "external_data_v2_leaves/key.hex"), "utf8");
  const wrong = "ab".repeat(32);
  const longer = new Map(Object.entries({ ...files, "weights.bin": new Uint8Array([...files["weights.bin"], 0]) }));
  for (const k of [key, wrong]) await assert.rejects(decrypt(model, { key: k, externalData: longer }), (e) => e instanceof Modified && /'weights.bin' is \d+ bytes, its header says/.test(e.message), k);
  await assert.rejects(verify(model, { externalData: longer }), Modified);
  // A file of the recorded length with other bytes passes step 3: a wrong key is found first.
  const flipped = files["weights.bin"].slice();
  flipped[0] ^= 1;
  const same = new Map(Object.entries({ ...files, "weights.bin": flipped }));
  await assert.rejects(decrypt(model, { key: wrong, externalData: same }), WrongKey);
  await assert.rejects(decrypt(model, { key, externalData: same }), Modified);
});

/** A licence signed in the test by a fresh authority: { text, facts } (the facts of a model it
 * names by id "m"). `lines` go between the authority and the `tiers` line. */
async function licence(lines, tiers = 1) {
  const { concat, ed25519Public, ed25519Sign } = await import("../dist/crypto.js");
  const { signerString } = await import("../dist/keys.js");
  const seed = new Uint8Array(32).fill(7);
  const pub = ed25519Public(seed);
  const body = `onnx-protect-licence-v1\nauthority: ${signerString(pub)}\n${lines}tiers: ${tiers}\nnot-before: 2020-01-01T00:00:00Z\nnot-after: 2099-01-01T00:00:00Z\n`;
  const enc = new TextEncoder();
  const sig = ed25519Sign(seed, concat([enc.encode("onnx-protect/licence/v1"), enc.encode(body)]));
  return { text: `${body}signature: ${Buffer.from(sig).toString("base64")}\n`, facts: { authority: pub, contentDigest: new Uint8Array(32), modelId: "m" } };
}

test("Appendix C: 'recipient: KIND' without a label names only the stanzas of that kind whose label is empty", async () => {
  const now = Date.UTC(2030, 0, 1) / 1000;
  for (const kind of ["key", "command", "passphrase", "x25519", "tpm"]) {
    const { text, facts } = await licence(`model: id:m\nrecipient: ${kind}\n`);
    const l = parseLicence(text);
    assert.equal(evaluateLicence(l, facts, { kind, label: "" }, now), 1, kind);
    for (const label of ["0123456789abcdef", " ", "x"]) {
      assert.throws(() => evaluateLicence(l, facts, { kind, label }, now), LicenceWrongDevice, `${kind} '${label}'`);
    }
    const other = kind === "key" ? "command" : "key";
    assert.throws(() => evaluateLicence(l, facts, { kind: other, label: "" }, now), LicenceWrongDevice, `${other} for ${kind}`);
  }
  const { text, facts } = await licence("model: id:m\nrecipient: key 0123456789abcdef\n");
  assert.equal(evaluateLicence(parseLicence(text), facts, { kind: "key", label: "0123456789abcdef" }, now), 1);
  assert.throws(() => evaluateLicence(parseLicence(text), facts, { kind: "key", label: "" }, now), LicenceWrongDevice);
});

test("Appendix C: control characters are U+0000–U+001F and U+007F–U+009F, tab included", async () => {
  const now = Date.UTC(2030, 0, 1) / 1000;
  for (const c of ["\t", "\u0000", "\u001f", "\u007f", "\u0080", "\u0085", "\u009f"]) {
    const { text } = await licence(`licensee: a${c}b\nmodel: id:m\nrecipient: any\n`);
    assert.throws(() => parseLicence(text), (e) => e instanceof LicenceMalformed && e.message.startsWith("licence line 3:"), JSON.stringify(c));
  }
  for (const c of ["\u00a0", "\u00ad", "\u2028", "\u2029", "\ufeff"]) {
    const { text, facts } = await licence(`licensee: a${c}b\nmodel: id:m\nrecipient: any\n`);
    const l = parseLicence(text);
    assert.equal(l.terms.licensee, `a${c}b`);
    assert.equal(evaluateLicence(l, facts, { kind: "key", label: "" }, now), 1, JSON.stringify(c));
  }
});

test("Appendix C: a reader accepts any model id of at most 1024 bytes; one no licence can name is named by its digest", async () => {
  const dir = path.join(VECTORS, "cnn_torch_v2_ctr");
  const key = fs.readFileSync(path.join(dir, "key.hex"), "utf8");
  const op = await open(read(path.join(dir, "protected.onnx")));
  const { facts } = await licence("");
  const digest = Buffer.from(op.env.content_digest).toString("hex");
  const { text: byDigest } = await licence(`model: digest:${digest}\nrecipient: any\n`);
  const original = read(path.join(dir, "original.onnx"));
  for (const id of ["x".repeat(1022), "é".repeat(512), " m", "m ", "a\tb", "a\u0085b", "a\u2028b", "\u0000"]) {
    const m = await resealedWithKey(op, { ...op.header, licence_authority: facts.authority, model_id: id }, key);
    await verify(m);
    const out = await decrypt(m, { key, licence: byDigest });
    assert.deepEqual(Buffer.from(out.model), Buffer.from(original), JSON.stringify(id));
  }
  const over = await resealedWithKey(op, { ...op.header, licence_authority: facts.authority, model_id: "é".repeat(512) + "x" }, key);
  await assert.rejects(verify(over), Modified);
});

/** `op` with `header` and `stanzas`, every MAC the key's stanzas reach computed again (as a
 * forger holding the key would) and the checksum sealed again. */
async function sealedWithKey(op, header, stanzas, key) {
  const { hkdf, hkdfExpand, hkdfExtract, hmacSha256, sha256, unwrapChaCha, u32be, u64be } = await import("../dist/crypto.js");
  const { concat, encode, encodeUtf8, lengthDelimited } = await import("../dist/wire.js");
  const { parseKey } = await import("../dist/keys.js");
  const w = parseKey(key).key;
  let top = null;
  for (const st of stanzas) {
    const dk = st.kind === "key" && unwrapChaCha(hkdf(sha256, w, st.salt, concat([encodeUtf8("onnx-protect/v2/wrap/key"), u32be(st.tier)]), 32), st.body);
    if (dk && (!top || st.tier > top.tier)) top = { tier: st.tier, dk };
  }
  const h = encode("Header", header), r = encode("Recipients", { stanzas });
  const t = concat([u64be(h.length), h, u64be(r.length), r, op.env.content_digest]);
  const macs = [...op.env.macs];
  for (let tier = top.tier, dk = top.dk; tier >= 1; tier--) {
    const macKey = hkdfExpand(sha256, hkdfExtract(sha256, dk, encodeUtf8("onnx-protect/v2/data-key")), encodeUtf8("onnx-protect/v2/mac"), 32);
    macs[tier - 1] = hmacSha256(macKey, concat([encodeUtf8("onnx-protect/v2/mac"), u32be(tier), t]));
    dk = hkdf(sha256, dk, encodeUtf8("onnx-protect/v2/tier-salt"), encodeUtf8("onnx-protect/v2/tier-down"), 32);
  }
  const env = { ...op.env, header: h, recipients: r, macs, checksum: new Uint8Array(0) };
  env.checksum = sha256(concat([encodeUtf8("onnx-protect/v2/checksum"), encode("Envelope", env)]));
  const value = encodeUtf8(Buffer.from(encode("Envelope", env)).toString("base64"));
  const entry = lengthDelimited(14, concat([lengthDelimited(1, encodeUtf8("onnx-protect/v2")), lengthDelimited(2, value)]));
  return concat([op.model.subarray(0, op.entryStart), entry]);
}

test("§12 step 4: the licence is checked against the first opening stanza of the top tier alone; no other is tried", async () => {
  const dir = path.join(VECTORS, "cnn_torch_v2_tiers");
  const key = fs.readFileSync(path.join(dir, "key.hex"), "utf8");
  const op = await open(read(path.join(dir, "protected.onnx")));
  const { facts } = await licence("");
  const header = { ...op.header, licence_authority: facts.authority };
  const digest = Buffer.from(op.env.content_digest).toString("hex");
  const lic = async (label) => (await licence(`model: digest:${digest}\nrecipient: key ${label}\n`, 16)).text;
  const { hkdf, sha256, unwrapChaCha, u32be, concat } = await import("../dist/crypto.js");
  const { parseKey } = await import("../dist/keys.js");
  const w = parseKey(key).key;
  const opens = (st) => st.kind === "key" && unwrapChaCha(hkdf(sha256, w, st.salt, concat([new TextEncoder().encode("onnx-protect/v2/wrap/key"), u32be(st.tier)]), 32), st.body) !== null;
  const mine = op.stanzas.filter(opens);
  assert.ok(mine.length >= 1);
  const top = mine.reduce((a, b) => (b.tier > a.tier ? b : a));
  const lower = mine.find((st) => st.tier < top.tier);
  // Two copies of the top stanza (the same wrap: the key opens both) with other labels.
  const first = { ...top, label: "1111111111111111" }, second = { ...top, label: "2222222222222222" };
  for (const [order, opener, other] of [[[first, second], first, second], [[second, first], second, first]]) {
    const stanzas = [...op.stanzas.filter((st) => st !== top), ...order];
    const m = await sealedWithKey(op, header, stanzas, key);
    const out = await decrypt(m, { key, licence: await lic(opener.label) });
    assert.equal(out.tier, op.tiers);
    await assert.rejects(decrypt(m, { key, licence: await lic(other.label) }), LicenceWrongDevice, other.label);
    if (lower) await assert.rejects(decrypt(m, { key, licence: await lic(lower.label) }), LicenceWrongDevice, `tier ${lower.tier}`);
  }
});

test("§12 step 7: with a repeated location key only the last location entry's last value is renamed", { skip: binary() ? false : "no onnx-protect binary" }, async () => {
  const { applyEdits, locationEdit, walk } = await import("../dist/model.js");
  const { concat, encodeUtf8, lengthDelimited } = await import("../dist/wire.js");
  const { readModelFiles } = await import("../dist/node.js");
  const src = path.join(ROOT, "fixtures/models/external_data");
  const files = new Map(["weights.bin", "extra.bin"].map((f) => [f, read(path.join(src, f))]));
  const plain = read(path.join(src, "model.onnx"));
  // Each external tensor gets, first, a `location` entry naming another file, and in its
  // last `location` entry a first `value` naming another file (ahead of the real one).
  const entry = (...fields) => lengthDelimited(13, concat(fields));
  const edits = walk(plain, files).filter((t) => t.external).flatMap((t) => {
    const self = t.chain[t.chain.length - 1];
    const last = locationEdit(plain, t, "").chain.at(-1);
    return [
      { chain: t.chain, start: self.vstart, end: self.vstart, bytes: entry(lengthDelimited(1, encodeUtf8("location")), lengthDelimited(2, encodeUtf8("early.bin"))) },
      { chain: [...t.chain, last], start: last.vstart, end: last.vstart, bytes: lengthDelimited(2, encodeUtf8("early.bin")) },
    ];
  });
  assert.ok(edits.length >= 4);
  const model = applyEdits(plain, edits);
  const tensors = walk(model, files);
  assert.deepEqual(tensors.filter((t) => t.external).map((t) => t.external.location).sort(), walk(plain, files).filter((t) => t.external).map((t) => t.external.location).sort());
  await inTempDir(async (dir) => {
    fs.writeFileSync(path.join(dir, "model.onnx"), model);
    for (const [f, d] of files) fs.writeFileSync(path.join(dir, f), d);
    const key = path.join(dir, "k.key");
    run(binary(), ["keygen", "-o", key, "-q"]);
    const prot = path.join(dir, "model.protected.onnx");
    run(binary(), ["encrypt", path.join(dir, "model.onnx"), "-o", prot, "--key-file", key, "-q", "--coefficient", "*=1"]);
    const { model: pm, externalData } = await readModelFiles(prot);
    assert.ok([...externalData.keys()].every((l) => !files.has(l)), "the protected files have names of their own");
    assert.equal(Buffer.from(pm).toString("latin1").split("early.bin").length - 1, edits.length, "the encryptor left the earlier entries");
    const d = await decrypt(pm, { key: fs.readFileSync(key, "utf8"), externalData });
    assert.deepEqual(Buffer.from(d.model), Buffer.from(model), "the decrypted model is not the original byte for byte");
    assert.deepEqual([...d.externalData.keys()].sort(), [...files.keys()].sort());
  });
});

test("§8 at step 1: every stanza's caps, a tpm body of 81 bytes, at most 8 tpm and 8 age-plugin stanzas, a Recipients message of at most 1 MiB", async () => {
  const op = await open(read(path.join(VECTORS, "cnn_torch_v2_ctr/protected.onnx")));
  const add = (...more) => withStanzas(op, (s) => [...s, ...more]);
  const tpm = (fields) => stanza("tpm", { body: new Uint8Array(81), label: "onnx-protect-tpm1x", ...fields });
  const plugin = stanza("age-plugin", { label: "age1yubikey1q" });
  const future = (fields) => stanza("future", { salt: new Uint8Array(3), kdf: { algorithm: "x", salt: new Uint8Array(1), m_cost_kib: 0, t_cost: 0, p_cost: 0 }, ...fields });
  for (const [what, more] of Object.entries({
    "an unknown kind at its caps": [future({ kind: "k".repeat(64), label: "l".repeat(4096), body: new Uint8Array(16384) })],
    "eight tpm stanzas": Array(8).fill(tpm({})),
    "eight age-plugin stanzas": Array(8).fill(plugin),
    "a Recipients message just under 1 MiB": Array(63).fill(future({ body: new Uint8Array(16384) })),
  })) await verify(await add(...more)).catch((e) => assert.fail(`${what}: ${e.message}`));
  for (const [what, more] of Object.entries({
    "a kind of 65 bytes": [future({ kind: "k".repeat(65) })],
    "a label of 4097 bytes": [future({ label: "l".repeat(4097) })],
    "a body of 16385 bytes": [future({ body: new Uint8Array(16385) })],
    "a tpm body of 80 bytes": [tpm({ body: new Uint8Array(80) })],
    "a tpm body of 82 bytes": [tpm({ body: new Uint8Array(82) })],
    "a tpm stanza with a salt": [tpm({ salt: new Uint8Array(16) })],
    "nine tpm stanzas": Array(9).fill(tpm({})),
    "nine age-plugin stanzas": Array(9).fill(plugin),
    "a Recipients message over 1 MiB": Array(64).fill(future({ body: new Uint8Array(16384) })),
  })) await assert.rejects(verify(await add(...more)), Modified, what);
});
