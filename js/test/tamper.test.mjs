// A one-byte change anywhere (the model's content, its manifest entry, an external data
// file) is refused, with and without the key; nothing is returned.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";

import { decrypt, verify, OnnxProtectError } from "../dist/index.js";
import { readModelFiles } from "../dist/node.js";
import { keyOf, vectors } from "./util.mjs";

/** Positions to change: every byte of the last `tail` bytes (the entry), and `n` more
 * spread evenly over the rest. */
function positions(len, tail, n) {
  const out = new Set();
  const rest = Math.max(0, len - tail);
  for (let i = rest; i < len; i++) out.add(i);
  for (let k = 0; k < n && rest > 0; k++) out.add(Math.floor((k * rest) / n));
  return [...out];
}

async function refused(p) {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof OnnxProtectError, `not a typed refusal: ${e}`);
    return e.kind;
  }
  assert.fail("a changed byte was accepted");
}

for (const name of ["cnn_torch_v2_ctr", "fp16_v2_fp_signed", "external_data_v2_ctr", "external_data_v2_leaves", "cnn_torch_v2_dp"]) {
  test(`${name}: every changed byte is refused, with the key and without`, async () => {
    const v = vectors().find((x) => x.name === name);
    const { model, externalData } = await readModelFiles(v.protected);
    const key = keyOf(v.dir);
    const entryLen = 4096;
    const kinds = new Map();
    for (const i of positions(model.length, entryLen, 300)) {
      const changed = Uint8Array.from(model);
      changed[i] ^= 0x01;
      for (const call of [() => decrypt(changed, { ...key, externalData }), () => verify(changed, { externalData })]) {
        const k = await refused(call());
        kinds.set(k, (kinds.get(k) ?? 0) + 1);
      }
    }
    for (const [loc, data] of externalData) {
      for (const i of positions(data.length, 0, 200)) {
        const changed = new Map(externalData);
        const d = Uint8Array.from(data);
        d[i] ^= 0x01;
        changed.set(loc, d);
        assert.equal(await refused(decrypt(model, { ...key, externalData: changed })), "modified", `${loc} byte ${i}`);
        assert.equal(await refused(verify(model, { externalData: changed })), "modified", `${loc} byte ${i}`);
      }
      // A file grown or cut by a byte is refused too.
      for (const d of [data.subarray(0, data.length - 1), new Uint8Array([...data, 0])]) {
        const changed = new Map(externalData);
        changed.set(loc, d);
        await refused(decrypt(model, { ...key, externalData: changed }));
      }
    }
    assert.ok(kinds.get("modified") > 0, JSON.stringify([...kinds]));
  });
}

// Format 2 authenticates every byte (format.md §9, §10): for a small model with two external
// files, each byte of the model and of both files, changed one bit, is refused with the key
// and without it.
for (const name of ["external_data_v2_ctr", "external_data_v2_leaves"]) test(`${name}: every byte of the model and of its external files changed is refused, with the key and without`, async () => {
  const v = vectors().find((x) => x.name === name);
  const { model, externalData } = await readModelFiles(v.protected);
  const key = keyOf(v.dir);
  const kinds = new Map();
  const count = (k) => kinds.set(k, (kinds.get(k) ?? 0) + 1);
  for (let i = 0; i < model.length; i++) {
    const changed = Uint8Array.from(model);
    changed[i] ^= 1 << (i % 8);
    count(await refused(decrypt(changed, { ...key, externalData })));
    count(await refused(verify(changed, { externalData })));
  }
  assert.equal(externalData.size, 2);
  for (const [loc, data] of externalData) {
    for (let i = 0; i < data.length; i++) {
      const d = Uint8Array.from(data);
      d[i] ^= 1 << (i % 8);
      const changed = new Map(externalData).set(loc, d);
      assert.equal(await refused(decrypt(model, { ...key, externalData: changed })), "modified", `${loc} byte ${i}`);
      assert.equal(await refused(verify(model, { externalData: changed })), "modified", `${loc} byte ${i}`);
    }
  }
  assert.ok(kinds.get("modified") > 0, JSON.stringify([...kinds]));
});
