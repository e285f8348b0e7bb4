// Answers docs/format.md gives where a reader could go either way: §1, a metadata entry
// whose framing is broken is an invalid model (modified only under an entry found at the
// end of the file); §3, two original names that name one file are alike; §8, the step-1
// rules of an x25519 stanza's body look at its header lines only, and a body passing them
// that is not a well-formed age file does not open.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";

import { decrypt, InvalidModel, Modified, NotProtected, open, verify, WrongKey } from "../dist/index.js";
import { readModelFiles } from "../dist/node.js";
import { resealed, VECTORS } from "./util.mjs";

const read = (p) => new Uint8Array(fs.readFileSync(p));

test("§1: a broken entry frame is an invalid model, a broken content under an intact entry modified", async () => {
  const m = read(path.join(VECTORS, "cnn_torch_v2_ctr/protected.onnx"));
  const key = Buffer.from("onnx-protect/v2");
  const at = Buffer.from(m).lastIndexOf(key);
  const valueLen = m.slice();
  valueLen[at + key.length + 1] += 1; // the value's length runs past its entry
  await assert.rejects(verify(valueLen), InvalidModel);
  const broken = new Uint8Array([0x3a, 0xff, 0xff, 0x03, ...m]); // a field running past the end
  await assert.rejects(verify(broken), Modified);
  const other = m.slice();
  other[at - 5] = 0x7a; // the entry (0x72, a 2-byte length, 0x0A 0x0F) becomes field 15: no manifest key
  assert.equal(m[at - 5], 0x72);
  await assert.rejects(verify(other), NotProtected);
});

test("§3: original names that name one file once empty and '.' components are dropped are modified", async () => {
  const { model, externalData } = await readModelFiles(path.join(VECTORS, "external_data_v2_ctr/protected/model.onnx"));
  const op = await open(model, externalData);
  for (const names of [["./c.bin", "c.bin"], ["d/c.bin", "d/./c.bin"]]) {
    const changed = await resealed(op, { ...op.header, original_external_files: names });
    await assert.rejects(verify(changed, { externalData }), Modified, names.join(" "));
  }
  const fine = await resealed(op, { ...op.header, original_external_files: ["d/c.bin", "c.bin"] });
  await verify(fine, { externalData });
});

/** `op` (from `open`) with the body of its x25519 stanza replaced by `change(body as latin1
 * text)`, the checksum sealed again (the MACs, which cover the stanzas, left as they were). */
async function withAgeBody(op, change) {
  const { sha256 } = await import("../dist/crypto.js");
  const { concat, encode, encodeUtf8, lengthDelimited } = await import("../dist/wire.js");
  const stanzas = op.stanzas.map((st) => (st.kind === "x25519" ? { ...st, body: new Uint8Array(Buffer.from(change(Buffer.from(st.body).toString("latin1")), "latin1")) } : st));
  const env = { ...op.env, recipients: encode("Recipients", { stanzas }), checksum: new Uint8Array(0) };
  env.checksum = sha256(concat([encodeUtf8("onnx-protect/v2/checksum"), encode("Envelope", env)]));
  const value = encodeUtf8(Buffer.from(encode("Envelope", env)).toString("base64"));
  const entry = lengthDelimited(14, concat([lengthDelimited(1, encodeUtf8("onnx-protect/v2")), lengthDelimited(2, value)]));
  return concat([op.model.subarray(0, op.entryStart), entry]);
}

test("§8: an x25519 body's first line is not examined; without a '---' line every later line is a header line; a malformed age file is a wrong key", async () => {
  const dir = path.join(VECTORS, "roles_mix_v2_x25519");
  const identity = fs.readFileSync(path.join(dir, "identity.txt"), "utf8");
  const op = await open(read(path.join(dir, "protected.onnx")));
  const body = Buffer.from(op.stanzas.find((st) => st.kind === "x25519").body).toString("latin1");
  assert.match(body, /^age-encryption\.org\/v1\n-> X25519 [^\n]*\n[^\n]*\n-> [^\n]*-grease[^\n]*\n[^\n]*\n--- /);
  const noMacLine = (b) => b.replace("\n--- ", "\n+++ ");
  // Bodies that pass step 1 (without a key: verified) but are no age file the identity
  // opens: decrypting with the identity is "wrong key", never "modified".
  const opensNot = {
    "another first line": (b) => b.replace(/^[^\n]*/, "age-encryption.org/v2"),
    "an X25519 line as the first line": (b) => b.replace(/^[^\n]*/, "-> X25519 AAAA"),
    "a third stanza line as the first line": (b) => b.replace(/^[^\n]*/, "-> other"),
    "no '---' line": noMacLine,
    "lines of two more stanzas after the '---' line": (b) => `${b}\n-> X25519 AAAA\n-> a\n-> b`,
    "a broken X25519 stanza": (b) => b.replace("-> X25519 A", "-> X25519 B"),
    "a broken MAC": (b) => b.replace(/\n--- ./, (m) => m.slice(0, -1) + (m.endsWith("A") ? "B" : "A")),
  };
  for (const [what, change] of Object.entries(opensNot)) {
    const m = await withAgeBody(op, change);
    assert.notEqual(Buffer.compare(Buffer.from(m), read(path.join(dir, "protected.onnx"))), 0, what);
    await verify(m);
    await assert.rejects(decrypt(m, { identity }), WrongKey, what);
  }
  // Without a '---' line the lines after it count: two X25519 lines, or a third stanza
  // line, is "modified" without a key, before any stanza is opened.
  const modified = {
    "a second X25519 line after a missing '---' line": (b) => `${noMacLine(b)}\n-> X25519 AAAA`,
    "a third stanza line after a missing '---' line": (b) => `${noMacLine(b)}\n-> other`,
    "a third stanza line before the '---' line": (b) => b.replace("\n--- ", "\n-> other\nAAAA\n--- "),
  };
  for (const [what, change] of Object.entries(modified)) {
    const m = await withAgeBody(op, change);
    await assert.rejects(verify(m), (e) => e instanceof Modified && /x25519 body/.test(e.message), what);
    await assert.rejects(decrypt(m, { identity }), Modified, what);
  }
  // The body as written opens.
  await decrypt(await withAgeBody(op, (b) => b), { identity });
});
