// Every exception class the package exports is raised, as that class and with its `kind`,
// by a case below: the table must name each exported class (a new class without a case
// fails the last test).
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { after, before, test } from "node:test";

import * as api from "../dist/index.js";
import { readModelFiles } from "../dist/node.js";
import { binary, issueLicence, keyOf, publisher, ROOT, run, tempDir, VECTORS, vectors, WINDOW } from "./util.mjs";

const { decrypt, verify, createSession, storageClock } = api;
const BIN = binary();
const vector = (name) => vectors().find((v) => v.name === name);
const read = (f) => fs.readFileSync(f);

/** A model needing a licence and licences for it (made by the binary); null without one. */
let licensed = null;
let dir;
before(() => {
  if (!BIN) return;
  dir = tempDir();
  const key = path.join(dir, "k.key");
  run(BIN, ["keygen", "-o", key, "-q"]);
  const pub = publisher(BIN, dir, "pub.sk");
  const prot = path.join(dir, "p.onnx");
  run(BIN, ["encrypt", path.join(ROOT, "fixtures/models/cnn_torch/model.onnx"), "-o", prot, "--key-file", key, "-q", "--licence-authority", pub.authority, "--model-id", "m"]);
  const lic = (name, args) => issueLicence(BIN, dir, pub.sk, name, args);
  licensed = {
    model: read(prot), key: fs.readFileSync(key, "utf8"),
    ok: lic("ok.lic", ["--model", "id:m", "--recipient", "any", ...WINDOW]),
    expired: lic("expired.lic", ["--model", "id:m", "--recipient", "any", "--not-before", "2020-01-01T00:00:00Z", "--not-after", "2021-01-01T00:00:00Z"]),
    future: lic("future.lic", ["--model", "id:m", "--recipient", "any", "--not-before", "2098-01-01T00:00:00Z", "--not-after", "2099-01-01T00:00:00Z"]),
    otherModel: lic("model.lic", ["--model", "id:n", "--recipient", "any", ...WINDOW]),
    otherDevice: lic("device.lic", ["--model", "id:m", "--recipient", "key 0000000000000000", ...WINDOW]),
    foreign: issueLicence(BIN, dir, publisher(BIN, dir, "other.sk").sk, "other.lic", ["--model", "id:m", "--recipient", "any", ...WINDOW]),
  };
});
after(() => dir && fs.rmSync(dir, { recursive: true, force: true }));

const withLicence = (opts) => decrypt(licensed.model, { key: licensed.key, ...opts });

/** Each exported exception class, its kind, and a call that raises it. */
const CASES = {
  Modified: ["modified", async () => {
    const v = vector("cnn_torch_v2_ctr");
    const m = Uint8Array.from(read(v.protected));
    m[100] ^= 1;
    return decrypt(m, keyOf(v.dir));
  }],
  WrongKey: ["wrong_key", () => decrypt(read(vector("cnn_torch_v2_ctr").protected), { key: new Uint8Array(32) })],
  UnsupportedVersion: ["unsupported_version", () => decrypt(read(path.join(VECTORS, "cnn_torch_ctr/protected.onnx")), { key: new Uint8Array(32) })],
  NotProtected: ["not_protected", () => verify(read(path.join(ROOT, "fixtures/models/cnn_torch/model.onnx")))],
  InvalidModel: ["invalid_model", () => verify(Uint8Array.from([0x0a, 0x05, 0x01]))],
  NotSigned: ["not_signed", () => verify(read(vector("cnn_torch_v2_ctr").protected), { signers: [fs.readFileSync(path.join(VECTORS, "fp16_v2_fp_signed/signer.pub"), "utf8").trim()] })],
  AlreadyDecrypted: ["already_decrypted", () => decrypt(read(path.join(VECTORS, "cnn_torch_v2_tiers/partial-t1.onnx")), { key: fs.readFileSync(path.join(VECTORS, "cnn_torch_v2_tiers/tier1.hex"), "utf8") })],
  KeyError: ["key", () => decrypt(read(vector("cnn_torch_v2_ctr").protected), { key: "onnx-protect-key-v1 master tiers=0 " + "0".repeat(64) })],
  UsageError: ["usage", () => createSession({ InferenceSession: { create: async () => null } }, read(vector("cnn_torch_v2_ctr").protected), keyOf(vector("cnn_torch_v2_ctr").dir), { optimizedModelFilePath: "/tmp/x.onnx" })],
  LicenceMissing: ["licence_missing", () => withLicence({})],
  LicenceMalformed: ["licence_malformed", () => withLicence({ licence: licensed.ok.replace("tiers: 1", "tiers: 1 ") })],
  LicenceBadSignature: ["licence_bad_signature", () => withLicence({ licence: licensed.foreign })],
  LicenceExpired: ["licence_expired", () => withLicence({ licence: licensed.expired })],
  LicenceNotYetValid: ["licence_not_yet_valid", () => withLicence({ licence: licensed.future })],
  LicenceWrongModel: ["licence_wrong_model", () => withLicence({ licence: licensed.otherModel })],
  LicenceWrongDevice: ["licence_wrong_device", () => withLicence({ licence: licensed.otherDevice })],
  ClockSetBack: ["licence_clock", () => {
    const storage = new Map([["onnx-protect/licence-clock", "2090-01-01T00:00:00Z"]]);
    const licenceClock = storageClock({ getItem: (k) => storage.get(k) ?? null, setItem: (k, v) => storage.set(k, v) });
    return withLicence({ licence: licensed.ok, licenceClock });
  }],
};

const needsBinary = (name) => name.startsWith("Licence") || name === "ClockSetBack";

for (const [name, [kind, call]] of Object.entries(CASES)) {
  test(`${name} is raised (kind '${kind}')`, { skip: needsBinary(name) && !BIN ? "no onnx-protect binary" : false }, async () => {
    await assert.rejects(call(), (e) => e instanceof api[name] && e instanceof api.OnnxProtectError && e.kind === kind && e.name === name);
  });
}

test("an external data file linked from outside the model's folder is followed (readModelFiles)", async () => {
  const dir = tempDir();
  try {
    const v = vector("external_data_v2_ctr");
    const inner = path.join(dir, "inner");
    fs.mkdirSync(inner);
    fs.copyFileSync(v.protected, path.join(inner, "model.onnx"));
    for (const f of fs.readdirSync(path.dirname(v.protected))) if (f !== "model.onnx") fs.copyFileSync(path.join(path.dirname(v.protected), f), path.join(dir, f));
    const locations = api.externalFilesOf(read(v.protected));
    for (const loc of locations) fs.symlinkSync(path.join(dir, loc), path.join(inner, loc));
    const { model, externalData } = await readModelFiles(path.join(inner, "model.onnx"));
    assert.deepEqual([...externalData.keys()], locations);
    await api.verify(model, { externalData });
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("every exported exception class has a case", () => {
  const exported = Object.entries(api)
    .filter(([, v]) => typeof v === "function" && v.prototype instanceof api.OnnxProtectError && v !== api.LicenceError)
    .map(([k]) => k)
    .sort();
  assert.deepEqual(Object.keys(CASES).sort(), exported);
  for (const name of exported.filter(needsBinary)) assert.ok(api[name].prototype instanceof api.LicenceError, name);
});
