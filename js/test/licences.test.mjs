// Models encrypted with a licence authority (format.md Appendix C) open only with a licence
// of that authority valid for the model, the stanza that opened it and the time: each refusal
// is its own exception, as in the command line (tests/integration/licences.rs) and Python.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";

import { generateX25519Identity, identityToRecipient } from "age-encryption";

import {
  decrypt, open, verify, storageClock, parseLicence, ClockSetBack, LicenceBadSignature, LicenceError, LicenceExpired,
  LicenceMalformed, LicenceMissing, LicenceNotYetValid, LicenceWrongDevice, LicenceWrongModel, Modified, UsageError,
} from "../dist/index.js";
import { clockFile } from "../dist/node.js";
import { parseSigner } from "../dist/keys.js";
import { encodeUtf8 } from "../dist/wire.js";
import { binary, inTempDir, issueLicence, publisher, recipientsOf, resealed, ROOT, run, WINDOW } from "./util.mjs";

const BIN = binary();
const MODEL = path.join(ROOT, "fixtures/models/cnn_torch/model.onnx");
const skip = BIN ? false : "no onnx-protect binary (build it with cargo, or set ONNX_PROTECT_BIN)";
const same = (a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)) === 0;

/** A key, a publisher and the cnn model encrypted for that publisher's licences. */
function licensed(dir, extra = [], keygen = []) {
  const key = path.join(dir, "k.key");
  run(BIN, ["keygen", "-o", key, "-q", ...keygen]);
  const pub = publisher(BIN, dir, "pub.sk");
  const prot = path.join(dir, "p.onnx");
  run(BIN, ["encrypt", MODEL, "-o", prot, "--key-file", key, "-q", "--licence-authority", pub.authority, ...extra]);
  return { key: fs.readFileSync(key, "utf8"), pub, prot, model: fs.readFileSync(prot) };
}

/** The model with its header changed by `change`, resealed (the MACs left as they were). */
async function withHeader(model, change) {
  const op = await open(model);
  return resealed(op, change({ ...op.header }));
}

/** In a temporary folder: the model licensed with model id det-v3, and a licence for it
 * (any recipient, for decades). */
function byId(fn) {
  return inTempDir(async (dir) => {
    const m = licensed(dir, ["--model-id", "det-v3"]);
    const ok = issueLicence(BIN, dir, m.pub.sk, "ok.lic", ["--model", "id:det-v3", "--recipient", "any", ...WINDOW]);
    return fn({ dir, ...m, ok });
  });
}

/** A Web-Storage-like store in memory. */
function memoryStorage() {
  const m = new Map();
  return { getItem: (k) => m.get(k) ?? null, setItem: (k, v) => m.set(k, String(v)), map: m };
}

test("a licensed model opens only with a valid licence; each refusal is its own exception", { skip }, async () => {
  await byId(async ({ dir, key, pub, prot, model, ok }) => {
    const clock = storageClock(memoryStorage());
    // No licence: refused with the authority named; keyless verification still works.
    await assert.rejects(decrypt(model, { key }), (e) => e instanceof LicenceMissing && e.kind === "licence_missing" && e.message.includes(pub.authority));
    await verify(model);
    await assert.rejects(verify(model, { key }), LicenceMissing);
    await assert.rejects(verify(model, { licence: "x" }), UsageError);

    const d = await decrypt(model, { key, licence: ok, licenceClock: clock });
    assert.ok(same(d.model, fs.readFileSync(MODEL)), "not the original");
    assert.equal((await verify(model, { key, licence: ok })).keyTier, 1);
    // The licence as bytes, and one naming the content digest for the key's stanza only.
    await decrypt(model, { key, licence: encodeUtf8(ok) });
    const [stanza] = recipientsOf(BIN, prot);
    assert.match(stanza, /^key [0-9a-f]{16}$/);
    const byDigest = issueLicence(BIN, dir, pub.sk, "digest.lic", ["--model-of", prot, "--recipient", stanza, ...WINDOW]);
    assert.ok(same((await decrypt(model, { key, licence: byDigest })).model, fs.readFileSync(MODEL)));

    const refusals = [
      ["expired.lic", ["--model", "id:det-v3", "--recipient", "any", "--not-before", "2020-01-01T00:00:00Z", "--not-after", "2021-01-01T00:00:00Z"], LicenceExpired, "licence_expired"],
      ["future.lic", ["--model", "id:det-v3", "--recipient", "any", "--not-before", "2098-01-01T00:00:00Z", "--not-after", "2099-01-01T00:00:00Z"], LicenceNotYetValid, "licence_not_yet_valid"],
      ["model.lic", ["--model", "id:other", "--recipient", "any", ...WINDOW], LicenceWrongModel, "licence_wrong_model"],
      ["device.lic", ["--model", "id:det-v3", "--recipient", "key 0000000000000000", ...WINDOW], LicenceWrongDevice, "licence_wrong_device"],
    ];
    for (const [name, args, cls, kind] of refusals) {
      const l = issueLicence(BIN, dir, pub.sk, name, args);
      await assert.rejects(decrypt(model, { key, licence: l }), (e) => e instanceof cls && e instanceof LicenceError && e.kind === kind, name);
      await assert.rejects(verify(model, { key, licence: l }), cls, name);
    }
    // Another publisher's licence: a bad signature.
    const other = publisher(BIN, dir, "other.sk");
    const foreign = issueLicence(BIN, dir, other.sk, "other.lic", ["--model", "id:det-v3", "--recipient", "any", ...WINDOW]);
    await assert.rejects(decrypt(model, { key, licence: foreign }), (e) => e instanceof LicenceBadSignature && e.kind === "licence_bad_signature");
    // Malformed text names its line.
    await assert.rejects(decrypt(model, { key, licence: ok.replace("tiers: 1", "tiers: 01") }), (e) => e instanceof LicenceMalformed && /line 5/.test(e.message));
    await assert.rejects(decrypt(model, { key, licence: "" }), LicenceMalformed);
    // A wrong key is a wrong key, licence or not.
    await assert.rejects(decrypt(model, { key: new Uint8Array(32).fill(9), licence: ok }), (e) => e.kind === "wrong_key");
  });
});

test("every byte of a valid licence changed is refused (bad signature or malformed), never opened", { skip }, async () => {
  await byId(async ({ key, model, ok }) => {
    const text = encodeUtf8(ok);
    const kinds = new Map();
    for (let i = 0; i < text.length; i++) {
      const t = Uint8Array.from(text);
      t[i] ^= 0x01;
      try {
        await decrypt(model, { key, licence: t });
        assert.fail(`byte ${i} changed: opened`);
      } catch (e) {
        assert.ok(e instanceof LicenceBadSignature || e instanceof LicenceMalformed, `byte ${i}: ${e}`);
        kinds.set(e.kind, (kinds.get(e.kind) ?? 0) + 1);
      }
    }
    assert.ok(kinds.get("licence_bad_signature") > 0 && kinds.get("licence_malformed") > 0, JSON.stringify([...kinds]));
  });
});

test("a clock set back below the recorded high-water mark is refused; the state file is the command line's", { skip }, async () => {
  await byId(async ({ dir, key, pub, prot, model, ok }) => {
    const state = path.join(dir, "state", "clock");
    // A first check records the time, in the form the command line reads and writes.
    const before = Math.floor(Date.now() / 1000);
    await decrypt(model, { key, licence: ok, licenceClock: clockFile(state) });
    const m = /^onnx-protect-clock-v1\nhigh-water: (\S+)\n$/.exec(fs.readFileSync(state, "utf8"));
    assert.ok(m, fs.readFileSync(state, "utf8"));
    assert.ok(Date.parse(m[1]) / 1000 >= before);
    const lic = path.join(dir, "ok.lic");
    run(BIN, ["decrypt", prot, "-o", path.join(dir, "out.onnx"), "--key-file", path.join(dir, "k.key"), "--licence", lic, "-q"], { ONNX_PROTECT_LICENCE_CLOCK: state });
    assert.match(fs.readFileSync(state, "utf8"), /^onnx-protect-clock-v1\nhigh-water: /);
    // A mark in 2090: the clock is set back.
    fs.writeFileSync(state, "onnx-protect-clock-v1\nhigh-water: 2090-01-01T00:00:00Z\ntpm: 2089-01-01T00:00:00Z 1234\n");
    await assert.rejects(decrypt(model, { key, licence: ok, licenceClock: clockFile(state) }), (e) => e instanceof ClockSetBack && e.kind === "licence_clock" && e.message.includes("2090-01-01T00:00:00Z"));
    // A licence for another model does not move the mark; a good one advances it and keeps the TPM anchor.
    fs.writeFileSync(state, "onnx-protect-clock-v1\nhigh-water: 2021-01-01T00:00:00Z\ntpm: 2021-01-01T00:00:00Z 1234\n");
    const wrong = issueLicence(BIN, dir, pub.sk, "wrong.lic", ["--model", "id:other", "--recipient", "any", ...WINDOW]);
    await assert.rejects(decrypt(model, { key, licence: wrong, licenceClock: clockFile(state) }), LicenceWrongModel);
    assert.match(fs.readFileSync(state, "utf8"), /high-water: 2021-01-01T00:00:00Z/);
    await decrypt(model, { key, licence: ok, licenceClock: clockFile(state) });
    assert.match(fs.readFileSync(state, "utf8"), /^onnx-protect-clock-v1\nhigh-water: 20[2-9][0-9]-[^\n]+\ntpm: 2021-01-01T00:00:00Z 1234\n$/);
    assert.doesNotMatch(fs.readFileSync(state, "utf8"), /high-water: 2021-01-01/);
    // One anchor per TPM key (format.md, appendix C), as the command line writes them: all kept.
    const anchors = "tpm: 2021-01-01T00:00:00Z 1234 0123456789abcdef0123456789abcdef\ntpm: 2021-02-01T00:00:00Z 99 fedcba9876543210fedcba9876543210\n";
    fs.writeFileSync(state, `onnx-protect-clock-v1\nhigh-water: 2021-01-01T00:00:00Z\n${anchors}`);
    await decrypt(model, { key, licence: ok, licenceClock: clockFile(state) });
    assert.ok(fs.readFileSync(state, "utf8").endsWith(`\n${anchors}`), fs.readFileSync(state, "utf8"));
    // A state file that is not one: refused, never reset.
    fs.writeFileSync(state, "not a clock\n");
    await assert.rejects(decrypt(model, { key, licence: ok, licenceClock: clockFile(state) }), ClockSetBack);
    assert.equal(fs.readFileSync(state, "utf8"), "not a clock\n");
  });
});

test("the caller's clock decides the window; a Web Storage store refuses a clock set back beyond 600 s", { skip }, async () => {
  await byId(async ({ dir, key, pub, model, ok }) => {
    const at = (iso) => () => Date.parse(iso);
    await assert.rejects(decrypt(model, { key, licence: ok, now: at("2019-12-31T23:59:59Z") }), LicenceNotYetValid);
    await decrypt(model, { key, licence: ok, now: at("2020-01-01T00:00:00Z") });
    await decrypt(model, { key, licence: ok, now: at("2099-12-31T23:59:59Z") });
    await assert.rejects(decrypt(model, { key, licence: ok, now: at("2100-01-01T00:00:00Z") }), LicenceExpired);
    await assert.rejects(decrypt(model, { key, licence: ok, now: () => NaN }), UsageError);
    const storage = memoryStorage();
    const licenceClock = storageClock(storage);
    await decrypt(model, { key, licence: ok, now: at("2050-01-01T00:00:00Z"), licenceClock });
    assert.equal(storage.map.get("onnx-protect/licence-clock"), "2050-01-01T00:00:00Z");
    // 600 s behind is a clock correction, and does not move the mark back.
    await decrypt(model, { key, licence: ok, now: at("2049-12-31T23:50:00Z"), licenceClock });
    assert.equal(storage.map.get("onnx-protect/licence-clock"), "2050-01-01T00:00:00Z");
    await assert.rejects(decrypt(model, { key, licence: ok, now: at("2049-12-31T23:49:59Z"), licenceClock }), ClockSetBack);
    // A licence that expired between the clock and the mark is expired.
    const short = issueLicence(BIN, dir, pub.sk, "short.lic", ["--model", "id:det-v3", "--recipient", "any", "--not-before", "2020-01-01T00:00:00Z", "--not-after", "2049-12-31T23:55:00Z"]);
    await assert.rejects(decrypt(model, { key, licence: short, now: at("2049-12-31T23:54:00Z"), licenceClock }), LicenceExpired);
    storage.setItem("onnx-protect/licence-clock", "yesterday");
    await assert.rejects(decrypt(model, { key, licence: ok, now: at("2050-01-02T00:00:00Z"), licenceClock }), ClockSetBack);
  });
});

test("a licence grants its tiers only: the same partial decryption as the command line's", { skip }, async () => {
  await inTempDir(async (dir) => {
    const { key, pub, prot, model } = licensed(dir, ["--tiers", "2", "--mode", "*=fp"], ["--tiers", "2"]);
    const one = issueLicence(BIN, dir, pub.sk, "one.lic", ["--model-of", prot, "--recipient", "any", "--tiers", "1", ...WINDOW]);
    await assert.rejects(decrypt(model, { key, licence: one, tier: 2 }), UsageError);
    const d = await decrypt(model, { key, licence: one });
    assert.equal(d.tier, 1);
    const out = path.join(dir, "out.onnx");
    run(BIN, ["decrypt", prot, "-o", out, "--key-file", path.join(dir, "k.key"), "--licence", path.join(dir, "one.lic"), "-q"], { ONNX_PROTECT_LICENCE_CLOCK: path.join(dir, "clock") });
    assert.ok(same(d.model, fs.readFileSync(out)), "not the command line's partial decryption");
    assert.ok(!same(d.model, fs.readFileSync(MODEL)));
    const two = issueLicence(BIN, dir, pub.sk, "two.lic", ["--model-of", prot, "--recipient", "any", "--tiers", "2", ...WINDOW]);
    assert.ok(same((await decrypt(model, { key, licence: two })).model, fs.readFileSync(MODEL)));
    // The partially decrypted copy still needs a licence (its header keeps the authority).
    await assert.rejects(decrypt(d.model, { key }), LicenceMissing);
  });
});

test("the authority is authenticated: a header naming another publisher, with its licence, fails the MACs", { skip }, async () => {
  await byId(async ({ dir, key, pub, model }) => {
    const other = publisher(BIN, dir, "other.sk");
    const forged = await withHeader(model, (h) => ({ ...h, licence_authority: parseSigner(other.authority) }));
    await verify(forged); // keyless: the checksum is sealed again and the content is unchanged
    const theirs = issueLicence(BIN, dir, other.sk, "theirs.lic", ["--model", "id:det-v3", "--recipient", "any", ...WINDOW]);
    await assert.rejects(decrypt(forged, { key, licence: theirs }), (e) => e instanceof Modified && /MAC/.test(e.message));
    const ours = issueLicence(BIN, dir, pub.sk, "ours.lic", ["--model", "id:det-v3", "--recipient", "any", ...WINDOW]);
    await assert.rejects(decrypt(forged, { key, licence: ours }), LicenceBadSignature);
    // A header without the authority (its licence requirement removed) fails the MACs too.
    const freed = await withHeader(model, (h) => ({ ...h, licence_authority: new Uint8Array(0), model_id: "" }));
    await assert.rejects(decrypt(freed, { key }), (e) => e instanceof Modified && /MAC/.test(e.message));
    // A model id without an authority, or an authority of another length: modified, keyless.
    await assert.rejects(verify(await withHeader(model, (h) => ({ ...h, licence_authority: new Uint8Array(0) }))), Modified);
    await assert.rejects(verify(await withHeader(model, (h) => ({ ...h, licence_authority: new Uint8Array(31) }))), Modified);
  });
});

test("a licence for an age recipient opens through that x25519 stanza only", { skip }, async () => {
  await inTempDir(async (dir) => {
    const identity = await generateX25519Identity();
    const recipient = await identityToRecipient(identity);
    const pub = publisher(BIN, dir, "pub.sk");
    const prot = path.join(dir, "p.onnx");
    run(BIN, ["encrypt", MODEL, "-o", prot, "--recipient", recipient, "-q", "--licence-authority", pub.authority]);
    const model = fs.readFileSync(prot);
    assert.deepEqual(recipientsOf(BIN, prot), [`x25519 ${recipient}`]);
    const mine = issueLicence(BIN, dir, pub.sk, "mine.lic", ["--model-of", prot, "--recipient", `x25519 ${recipient}`, ...WINDOW]);
    assert.ok(same((await decrypt(model, { identity, licence: mine })).model, fs.readFileSync(MODEL)));
    const elsewhere = issueLicence(BIN, dir, pub.sk, "else.lic", ["--model-of", prot, "--recipient", "x25519 age1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq", "--recipient", "key 0123456789abcdef", ...WINDOW]);
    await assert.rejects(decrypt(model, { identity, licence: elsewhere }), (e) => e instanceof LicenceWrongDevice && e.message.includes(recipient));
  });
});

test("licence text is parsed strictly (Appendix C)", () => {
  // Line-numbered refusals of malformed texts that no signature check is reached for.
  const head = "onnx-protect-licence-v1\nauthority: onnx-protect-signer1yz2f8ljspdkalhfdgfhs7lkaf3tvqrlcpwk0dt9ruem5zq84eeqq8ed8sp\n";
  const tail = "tiers: 1\nnot-before: 2020-01-01T00:00:00Z\nnot-after: 2021-01-01T00:00:00Z\nsignature: " + "A".repeat(86) + "==\n";
  const good = head + "model: id:m\nrecipient: any\n" + tail;
  assert.equal(parseLicence(good).terms.tiers, 1);
  for (const [text, line] of [
    ["onnx-protect-licence-v2\n" + good.slice(24), 1],
    [good.replace("model: id:m\n", ""), 3],
    [good.replace("recipient: any", "recipient: Key abc"), 4],
    [good.replace("recipient: any", "recipient:  any"), 4],
    [good.replace("model: id:m", "model: digest:ABCD"), 3],
    [good.replace("tiers: 1", "tiers: 17"), 5],
    [good.replace("2021-01-01T00:00:00Z", "2019-02-29T00:00:00Z"), 7],
    [good.replace("2021-01-01T00:00:00Z", "2019-12-31T23:59:59Z"), 7],
    [good.replace("2020-01-01T00:00:00Z", "2020-01-01T00:00:60Z"), 6],
    [good.replace("tiers: 1\n", "tiers: 1\nlicensee: x\n"), 6],
    [good.replace("model: id:m\n", "model: id:m\r\n"), 3],
    [good.replace("A".repeat(86) + "==", "A".repeat(85) + "B=="), 8],
    [good + "x", 9],
    [good.replace("authority: onnx-protect-signer1yz", "authority: onnx-protect-signer1zz"), 2],
  ]) {
    assert.throws(() => parseLicence(text), (e) => e instanceof LicenceMalformed && e.message.startsWith(`licence line ${line}:`), JSON.stringify(text));
  }
  assert.throws(() => parseLicence(new Uint8Array([0xff])), LicenceMalformed);
  assert.throws(() => parseLicence("x".repeat(65537)), (e) => e instanceof LicenceMalformed && e.message.startsWith("licence line 0:"));
});
