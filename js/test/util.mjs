// Shared by the tests: paths, the vectors, the onnx-protect binary, .npy files.
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const VECTORS = path.join(ROOT, "fixtures/vectors");

/** The format-2 vector cases: folder, protected path, original path, external dirs. */
export function vectors() {
  return fs.readdirSync(VECTORS).filter((d) => d.includes("_v2_")).sort().map((name) => {
    const dir = path.join(VECTORS, name);
    const ext = fs.existsSync(path.join(dir, "protected"));
    return {
      name, dir, ext,
      protected: ext ? path.join(dir, "protected/model.onnx") : path.join(dir, "protected.onnx"),
      original: ext ? path.join(dir, "original/model.onnx") : path.join(dir, "original.onnx"),
    };
  });
}

/** The key material of a vector case (its key, else its passphrase). */
export function keyOf(dir) {
  if (fs.existsSync(path.join(dir, "key.hex"))) return { key: fs.readFileSync(path.join(dir, "key.hex"), "utf8") };
  return { passphrase: fs.readFileSync(path.join(dir, "passphrase.txt"), "utf8").split(/\r?\n/)[0] };
}

/** The onnx-protect binary the Rust build made (ONNX_PROTECT_BIN, else target/debug). */
export function binary() {
  const b = path.resolve(ROOT, process.env.ONNX_PROTECT_BIN ?? path.join(process.env.CARGO_TARGET_DIR ?? "target", "debug/onnx-protect"));
  return fs.existsSync(b) ? b : null;
}

export function run(bin, args, env = {}) {
  return execFileSync(bin, args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, ...env } });
}

export function tempDir() {
  return fs.mkdtempSync(path.join(os.tmpdir(), "onnx-protect-js-"));
}

/** A float32 or int64 .npy file: { shape, data } (little-endian, C order). */
export function readNpy(file) {
  const b = fs.readFileSync(file);
  const hlen = b.readUInt16LE(8);
  const header = b.subarray(10, 10 + hlen).toString("latin1");
  const descr = /'descr':\s*'([^']+)'/.exec(header)[1];
  const shape = /'shape':\s*\(([^)]*)\)/.exec(header)[1].split(",").map((s) => s.trim()).filter(Boolean).map(Number);
  const body = b.subarray(10 + hlen);
  const copy = new Uint8Array(body.length);
  copy.set(body);
  if (descr === "<f4") return { shape, data: new Float32Array(copy.buffer) };
  if (descr === "<i8") return { shape, data: new BigInt64Array(copy.buffer) };
  throw new Error(`${file}: dtype ${descr}`);
}

/** A publisher's signing key made by the binary: { sk (path), authority (its signer string) }. */
export function publisher(bin, dir, name) {
  const sk = path.join(dir, name);
  run(bin, ["keygen", "--signing", "-o", sk, "-q"]);
  const authority = /^# public key: (\S+)$/m.exec(fs.readFileSync(sk, "utf8"))[1];
  return { sk, authority };
}

/** A validity window that holds now and for decades. */
export const WINDOW = ["--not-before", "2020-01-01T00:00:00Z", "--not-after", "2099-12-31T23:59:59Z"];

/** A licence issued by the binary with `sk`: its text. */
export function issueLicence(bin, dir, sk, name, args) {
  const out = path.join(dir, name);
  run(bin, ["licence", "issue", "--sign-key", sk, "-o", out, "-q", ...args]);
  return fs.readFileSync(out, "utf8");
}

/** The recipients of a protected model as `inspect` lists them ('key 0123…'), by tier. */
export function recipientsOf(bin, file) {
  const j = JSON.parse(run(bin, ["inspect", "--json", file]).toString());
  return j.protection.recipients.map((r) => r.replace(/ \(tier [0-9]+\)$/, ""));
}

/** Runs `fn(dir)` with a fresh temporary folder, removed afterwards. */
export async function inTempDir(fn) {
  const dir = tempDir();
  try {
    return await fn(dir);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** The opened protected model `op` (from `open`) with its header replaced by `header`, the
 * manifest entry rebuilt and its checksum sealed again (the MACs left as they were, unless
 * `macs` are given). */
export async function resealed(op, header, macs = op.env.macs) {
  const { sha256 } = await import("../dist/crypto.js");
  const { concat, encode, encodeUtf8, lengthDelimited } = await import("../dist/wire.js");
  const env = { ...op.env, header: encode("Header", header), macs, checksum: new Uint8Array(0) };
  env.checksum = sha256(concat([encodeUtf8("onnx-protect/v2/checksum"), encode("Envelope", env)]));
  const value = encodeUtf8(Buffer.from(encode("Envelope", env)).toString("base64"));
  const entry = lengthDelimited(14, concat([lengthDelimited(1, encodeUtf8("onnx-protect/v2")), lengthDelimited(2, value)]));
  return concat([op.model.subarray(0, op.entryStart), entry]);
}

/** [`resealed`] by a key holder: the MACs of every tier `key` (a key stanza's `W`, key file
 * text or hex) reaches computed again over the new header (format.md §7, §8, §10), as a
 * forger holding the key would; the other tiers' MACs left as they were. */
export async function resealedWithKey(op, header, key) {
  const { hkdf, hkdfExpand, hkdfExtract, hmacSha256, sha256, unwrapChaCha, u32be, u64be } = await import("../dist/crypto.js");
  const { concat, encode, encodeUtf8 } = await import("../dist/wire.js");
  const { parseKey } = await import("../dist/keys.js");
  const label = (s) => encodeUtf8(s);
  const w = parseKey(key).key;
  // The data key of the highest tier whose key stanza the key opens (§8).
  let top = null;
  for (const st of op.stanzas) {
    if (st.kind !== "key") continue;
    const kek = hkdf(sha256, w, st.salt, concat([label("onnx-protect/v2/wrap/key"), u32be(st.tier)]), 32);
    const dk = unwrapChaCha(kek, st.body);
    if (dk && (!top || st.tier > top.tier)) top = { tier: st.tier, dk };
  }
  if (!top) throw new Error("the key opens no key stanza of the model");
  const h = encode("Header", header), r = op.env.recipients;
  const t = concat([u64be(h.length), h, u64be(r.length), r, op.env.content_digest]);
  const macs = [...op.env.macs];
  for (let tier = top.tier, dk = top.dk; tier >= 1; tier--) {
    const prk = hkdfExtract(sha256, dk, label("onnx-protect/v2/data-key"));
    const macKey = hkdfExpand(sha256, prk, label("onnx-protect/v2/mac"), 32);
    macs[tier - 1] = hmacSha256(macKey, concat([label("onnx-protect/v2/mac"), u32be(tier), t]));
    dk = hkdf(sha256, dk, label("onnx-protect/v2/tier-salt"), label("onnx-protect/v2/tier-down"), 32);
  }
  return resealed(op, header, macs);
}
