// Reading a protected model, step by step (docs/format.md §12): the entry (§1), the
// messages and their rules (§2, §3, §8), the checksum and the content digest (§9, §10),
// the model matched to the header (§4–§6), a stanza opened (§7, §8), the seals checked,
// then the spans decrypted. Nothing is returned before every check has passed.

import { AlreadyDecrypted, Modified, OnnxProtectError, UsageError } from "./errors.js";
import { constantTimeEqual, label, sha256 } from "./crypto.js";
import { HeaderLock, readLock } from "./lock.js";
import { digestOfLeaves } from "./backend.js";
import { checkLocation, ExternalFiles, graphOutputs, Tensor, walk } from "./model.js";
import { concat, decodeCanonical, encode, encodeUtf8, lengthDelimited, Message, plain } from "./wire.js";
import { Decrypted, Entry, ENTRY_KEY, MAX_RECIPIENTS, Opened, ReadOptions } from "./reader/opened.js";
import { b64decode, b64encode, checkEnvelope, checkHeader, checkListedLeaves, checkSpans, findEntry } from "./reader/shapes.js";
import { checkExternalSize, contentDigest, coveredLeaves } from "./reader/digest.js";
import { checkSignatures, keyCount, unlock } from "./reader/unlock.js";
import { Owned, transformed } from "./reader/transform.js";

export { ENTRY_KEY, Opened } from "./reader/opened.js";
export type { Decrypted, KeyMaterial, ReadOptions } from "./reader/opened.js";
export { checkExternalSize, externalFilesOf, externalFilesWithSizes } from "./reader/digest.js";
export { checkSignatures } from "./reader/unlock.js";
export type { Owned } from "./reader/transform.js";

// ---------------------------------------------------------------- opening (§12 steps 1–3)

function toMap(ext: ReadOptions["externalData"]): ExternalFiles {
  if (!ext) return new Map();
  const entries = ext instanceof Map ? [...ext] : Object.entries(ext);
  return new Map(entries.map(([k, v]) => [k, plain(v)]));
}

/** §12 steps 1–3 with the keyless digest (step 6 for the files as stored): the entry, its
 * messages and rules, the checksum, the model matched to the header, the digest of the
 * stored content. */
export async function open(input: Uint8Array, externalData?: ReadOptions["externalData"]): Promise<Opened> {
  const op = openManifest(input, externalData);
  const files = [op.content, ...(op.header.external_files as string[]).map((l) => op.external.get(l)!)];
  const want = op.restored ? op.env.stored_digest : op.env.content_digest;
  const leaves = await coveredLeaves(files, Number(op.header.chunk_size));
  if (!constantTimeEqual(await digestOfLeaves(files.map((f) => f.length), leaves), want)) {
    throw new Modified("the model's content does not match its manifest");
  }
  // The listed leaves are those of the canonical content: of a partially decrypted file,
  // checked with a key (`unlock`).
  if (!op.restored) checkListedLeaves(op.header, leaves);
  return op;
}

/** Whether a decryption result keeps a label lock (§15): a partial decryption of a locked
 * model, whose scores come out in locked order. */
export function keepsLabelLock(d: Decrypted): boolean {
  return d.tier < d.tiers && openManifest(d.model, d.externalData).lock !== null;
}

/** §12 steps 1–3: the entry, its messages and rules, the checksum, the model matched to
 * the header. The digest of the content is left to the caller. */
function openManifest(input: Uint8Array, externalData?: ReadOptions["externalData"]): Opened {
  const model = plain(input);
  const [entryStart, value] = findEntry(model);
  const envBytes = b64decode(value);
  const env = decodeCanonical("Envelope", envBytes);
  const header = decodeCanonical("Header", env.header);
  if (env.recipients.length > MAX_RECIPIENTS) throw new Modified(`the Recipients message is over ${MAX_RECIPIENTS} bytes`);
  const rec = decodeCanonical("Recipients", env.recipients);
  checkHeader(header);
  checkEnvelope(env, header, rec.stanzas);
  // The checksum (§10): field 8, last in the canonical encoding, 0x42 0x20 and 32 bytes.
  const prefix = envBytes.subarray(0, envBytes.length - 34);
  if (envBytes[envBytes.length - 34] !== 0x42 || envBytes[envBytes.length - 33] !== 0x20 ||
      !constantTimeEqual(sha256(concat([label("onnx-protect/v2/checksum"), prefix])), env.checksum)) {
    throw new Modified("the manifest's checksum does not match");
  }
  const ext = toMap(externalData);
  const files: Uint8Array[] = [model.subarray(0, entryStart)];
  for (const loc of header.external_files as string[]) {
    try {
      checkLocation(loc);
    } catch (e) {
      throw new Modified(`external file '${loc}' of the header: ${(e as Error).message}`);
    }
    const d = ext.get(loc);
    if (!d) throw new UsageError(`the model keeps tensors in the external data file '${loc}', which was not given (externalData)`);
    files.push(d);
  }
  const sizes = header.external_sizes as bigint[];
  sizes.forEach((n, i) => checkExternalSize(header.external_files[i], files[i + 1].length, n));
  let tensors: Tensor[];
  try {
    tensors = walk(model.subarray(0, entryStart), ext);
  } catch (e) {
    if (e instanceof OnnxProtectError) throw new Modified(`the model no longer parses (${e.message})`);
    throw e;
  }
  const order: string[] = [];
  for (const t of tensors) if (t.external && !order.includes(t.external.location)) order.push(t.external.location);
  if (order.join("\0") !== (header.external_files as string[]).join("\0") || order.length !== header.external_files.length) {
    throw new Modified("the model's external data files are not those of its header");
  }
  const byLoc = new Map(tensors.map((t) => [t.locator, t]));
  const entries: Entry[] = [];
  for (const e of header.tensors as Message[]) {
    const t = byLoc.get(e.locator);
    if (!t) throw new Modified(`tensor '${e.name}' at ${e.locator} is not in the model`);
    if (t.name !== e.name || t.dataType !== e.data_type || BigInt(t.nbytes) !== e.nbytes || t.storage !== e.storage) {
      throw new Modified(`tensor at ${e.locator} does not match the manifest (name, type, size or storage changed)`);
    }
    entries.push({ e, tensor: t, spans: header.positions === 1 ? [] : checkSpans(e, e.spans) });
  }
  let lock: HeaderLock | null;
  try {
    lock = readLock(header, byLoc, graphOutputs(model.subarray(0, entryStart)));
  } catch (e) {
    if (e instanceof OnnxProtectError && !(e instanceof Modified)) throw new Modified(`the model no longer parses (${e.message})`);
    throw e;
  }
  return new Opened(model, entryStart, env, header, rec.stanzas, ext, tensors, entries, lock);
}

// ---------------------------------------------------------------- the verbs

/** Verifies and decrypts a protected model (§12). Returns the original model and its
 * external data files (below the top tier: the partially decrypted model of §11). */
export async function decrypt(model: Uint8Array, opts: ReadOptions): Promise<Decrypted> {
  return decryptWith(model, opts);
}

/** [`decrypt`] of files the caller gives up (`owned`): decrypted in place. */
export async function decryptWith(model: Uint8Array, opts: ReadOptions, owned?: Owned): Promise<Decrypted> {
  // Steps 4–5 (key, licence, MACs, signers) run before step 6, which the pass that decrypts
  // does on the bytes it reads (§12 allows either order).
  const op = openManifest(model, opts.externalData);
  const u = await unlock(op, opts);
  const to = opts.tier ?? u.tier;
  if (!Number.isInteger(to) || to < 1 || to > u.tier) throw new UsageError(`this key reaches tier ${u.tier} of ${op.tiers}; it cannot decrypt tier ${to}`);
  if (to <= op.restored) throw new AlreadyDecrypted(`tiers 1 to ${op.restored} are in clear in this file`);
  // §12 step 7: a full decryption gives the external files their original names back.
  const names = op.header.original_external_files as string[];
  const locations = op.header.external_files as string[];
  const rename = to === op.tiers && names.length ? new Map(locations.map((l, i) => [l, names[i]])) : undefined;
  // §15: a full decryption puts a label lock's classes back in true order.
  // The seed is opened at step 7, after step 6 (`transformed`): verification and a partial
  // decryption never depend on it.
  const unlockClasses = to === op.tiers && op.lock ? { prk1: u.keys.get(1)!.prk, lock: op.lock } : undefined;
  const stored = op.restored ? op.env.stored_digest : op.env.content_digest;
  // Of a partially decrypted file, `unlock` checked the listed leaves against the canonical
  // content; else the files as given are the canonical content.
  const canonical = op.restored === 0;
  const [content, ext, tensors, bytes] = await transformed(op, u.keys, (t) => t > op.restored && t <= to, false, { rename, unlockClasses, stored, canonical, owned });
  if (to === op.tiers) {
    const externalData = rename ? new Map([...ext].map(([l, d]) => [rename.get(l)!, d])) : ext;
    return { model: content, externalData, tier: to, tiers: op.tiers, tensors, decryptedBytes: bytes };
  }
  // §11: a partial decryption stays a protected model, its entry rewritten.
  const files = [content, ...(op.header.external_files as string[]).map((l) => ext.get(l)!)];
  const env = { ...op.env, restored_tiers: to, stored_digest: await contentDigest(files, Number(op.header.chunk_size)), checksum: new Uint8Array(0) };
  env.checksum = sha256(concat([label("onnx-protect/v2/checksum"), encode("Envelope", env)]));
  const value = encodeUtf8(b64encode(encode("Envelope", env)));
  const entry = lengthDelimited(14, concat([lengthDelimited(1, encodeUtf8(ENTRY_KEY)), lengthDelimited(2, value)]));
  return { model: concat([content, entry]), externalData: ext, tier: to, tiers: op.tiers, tensors, decryptedBytes: bytes };
}

export interface VerifyReport {
  tiers: number;
  restoredTiers: number;
  tensors: number;
  /** The tier the key opened (with a key). */
  keyTier?: number;
  /** Signers whose signatures were verified. */
  signers: string[];
}

/** Keyless: the checksum and the digest of the content (and, when asked, the signers);
 * with key material, also the MACs of the tiers it reaches. */
export async function verify(model: Uint8Array, opts: ReadOptions = {}): Promise<VerifyReport> {
  const op = await open(model, opts.externalData);
  const report: VerifyReport = { tiers: op.tiers, restoredTiers: op.restored, tensors: op.entries.length, signers: opts.signers ?? [] };
  if (keyCount(opts) > 0) {
    report.keyTier = (await unlock(op, opts)).tier;
  } else if (opts.licence !== undefined) {
    throw new UsageError("a licence goes with a key");
  } else if (opts.signers) {
    if (op.restored) throw new UsageError("the signatures of a partially decrypted model can only be checked with a key");
    checkSignatures(op, opts.signers);
  }
  return report;
}
