// Reading a protected model, step by step (docs/format.md §12): the entry (§1), the
// messages and their rules (§2, §3, §8), the checksum and the content digest (§9, §10),
// the model matched to the header (§4–§6), a stanza opened (§7, §8), the seals checked,
// then the spans decrypted. Nothing is returned before every check has passed.

import { Decrypter } from "age-encryption";

import {
  AlreadyDecrypted, InvalidModel, Modified, NotProtected, NotSigned, OnnxProtectError, UnsupportedVersion, UsageError,
  WrongKey,
} from "./errors.js";
import {
  argon2id, blake3, constantTimeEqual, hkdf, hkdfExpand, hkdfExtract, hmacSha256, keyedSwaps, Keystream, label, sha256,
  u32be, u64be, unwrapChaCha, verifyStrict,
} from "./crypto.js";
import { parseIdentities, parseKey, passphraseBytes, parseSigner, KeyInput, signerString } from "./keys.js";
import { grantedTier, LicenceOptions } from "./licence.js";
import { classOrder, HeaderLock, readLock, unlockElements } from "./lock.js";
import { digestOfLeaves, Piece } from "./backend.js";
import { backend } from "#backend";
import {
  applyEdits, BITS, checkLocation, Edit, elementBytes, elementSize, elementViews, ExternalFiles, FP_MASKS, graphOutputs, locationEdit, STRING,
  Tensor, VARINT_STORAGES, varintEdits, varintWidth, walk,
} from "./model.js";
import {
  bytesEqual, concat, decodeCanonical, decodeUtf8, encode, encodeUtf8, Field, lengthDelimited, Message, parseFields,
  plain, readSmallVarint, WT_LEN,
} from "./wire.js";

export const ENTRY_KEY = "onnx-protect/v2";
const MODE_CTR = 1, MODE_FP = 2, MODE_DP = 3;
const MAX_ENTRIES = 1 << 20;
const MAX_STANZAS = 1024;
const MAX_RECIPIENTS = 1 << 20;
const MAX_SIGNATURES = 64;
/** Stanza kinds whose opening costs seconds: at most this many of each (§8). */
const COSTLY = new Set(["passphrase", "pkcs11", "command", "age-plugin", "tpm"]);
const MAX_COSTLY = 8;
const MAX_AGE_BODY = 1024;
const MAX_MODEL_ID_LEN = 1024;

/** What opens a protected model: exactly one of these. */
export interface KeyMaterial {
  /** A key: 32 raw bytes, 64 hex digits, or the text of a key file. */
  key?: KeyInput;
  /** A passphrase (its UTF-8 bytes, or raw bytes). */
  passphrase?: string | Uint8Array;
  /** The text of an age identity file (`AGE-SECRET-KEY-1…` lines). */
  identity?: string;
}

export interface ReadOptions extends KeyMaterial, LicenceOptions {
  /** The model's external data files by `location` (what the model names). */
  externalData?: ExternalFiles | Record<string, Uint8Array>;
  /** Decrypt up to this tier (default: the key's own). */
  tier?: number;
  /** Trusted publishers (`onnx-protect-signer1…`): a model without a valid signature of
   * one of them is refused. */
  signers?: string[];
}

/** A decrypted model: the original model file and its external data files. */
export interface Decrypted {
  model: Uint8Array;
  /** By the locations `model` names: after a full decryption, the original model's names
   * (`Header.original_external_files` when the header records them, §12 step 7). */
  externalData: Map<string, Uint8Array>;
  /** The tier the result is decrypted to (the number of tiers: the original model). */
  tier: number;
  tiers: number;
  tensors: number;
  decryptedBytes: number;
}

interface Entry {
  e: Message;
  tensor: Tensor;
  spans: Array<[number, number]>;
}

/** A protected model whose manifest and content have been checked (§12 steps 1–3). */
export class Opened {
  constructor(
    readonly model: Uint8Array,
    readonly entryStart: number,
    readonly env: Message,
    readonly header: Message,
    readonly stanzas: Message[],
    readonly external: ExternalFiles,
    readonly tensors: Tensor[],
    readonly entries: Entry[],
    /** The label lock (§15), checked against the model. */
    readonly lock: HeaderLock | null,
  ) {}

  get tiers(): number {
    return this.header.tiers;
  }
  get restored(): number {
    return this.env.restored_tiers;
  }
  get content(): Uint8Array {
    return this.model.subarray(0, this.entryStart);
  }
  /** `T` of §10. */
  macInput(): Uint8Array {
    const h = this.env.header as Uint8Array, r = this.env.recipients as Uint8Array;
    return concat([u64be(h.length), h, u64be(r.length), r, this.env.content_digest]);
  }
}

// ---------------------------------------------------------------- §1, §2, §3, §8 shapes

/** A search from the end for the entry's bytes (§1), for a model whose top level does not
 * parse: true when it ends in one. */
function endsInEntry(model: Uint8Array): boolean {
  const keyBytes = encodeUtf8(ENTRY_KEY);
  const pat = concat([Uint8Array.of(0x0a, keyBytes.length), keyBytes, Uint8Array.of(0x12)]);
  // The value is base64 text, which holds neither 0x0A nor 0x0F: the last occurrence of
  // these bytes is the entry's key, if there is an entry.
  outer: for (let i = model.length - pat.length; i >= 0; i--) {
    for (let j = 0; j < pat.length; j++) if (model[i + j] !== pat[j]) continue outer;
    try {
      const [vlen, vstart] = readSmallVarint(model, i + pat.length, model.length);
      return vstart + vlen === model.length;
    } catch {
      return false;
    }
  }
  return false;
}

/** The manifest entries among the top-level metadata entries: [key, field]. */
function manifestEntries(model: Uint8Array, top: Field[]): Array<[string, Field]> {
  const out: Array<[string, Field]> = [];
  for (const f of top) {
    if (f.number !== 14 || f.wire !== WT_LEN) continue;
    let sub;
    try {
      sub = parseFields(model, f.vstart, f.vend);
    } catch (e) {
      // §1: a metadata entry that does not parse is a file that does not parse.
      if (endsInEntry(model)) throw new Modified(`the model no longer parses (${(e as Error).message})`);
      throw new InvalidModel(`a metadata_props entry is not a protobuf message: ${(e as Error).message}`);
    }
    for (const g of sub) {
      if (g.number !== 1 || g.wire !== WT_LEN) continue;
      const k = decodeUtf8(model.subarray(g.vstart, g.vend));
      if (k !== null && /^onnx-protect\/v[0-9]+$/.test(k)) out.push([k, f]);
    }
  }
  return out;
}

/** §1: the start of the entry and its base64 value. */
function findEntry(model: Uint8Array): [number, Uint8Array] {
  let top: Field[];
  try {
    top = parseFields(model);
  } catch (e) {
    if (endsInEntry(model)) throw new Modified(`the model no longer parses (${(e as Error).message})`);
    throw new InvalidModel(`not a protobuf message: ${(e as Error).message}`);
  }
  const found = manifestEntries(model, top);
  if (!found.length) throw new NotProtected();
  if (found.length > 1) throw new Modified("more than one onnx-protect manifest entry");
  const [k, f] = found[0];
  if (k === "onnx-protect/v1") throw new UnsupportedVersion("format 1 (onnx-protect/v1) is read by the onnx-protect command and its Rust, Python and C libraries, not by this package");
  if (k !== ENTRY_KEY) throw new UnsupportedVersion(`metadata key '${k}'`);
  if (f !== top[top.length - 1]) throw new Modified("the onnx-protect/v2 entry is not the last field of the file");
  const sub = parseFields(model, f.vstart, f.vend);
  const v = sub.find((g) => g.number === 2 && g.wire === WT_LEN);
  const value = v ? model.subarray(v.vstart, v.vend) : new Uint8Array(0);
  const exact = lengthDelimited(14, concat([lengthDelimited(1, encodeUtf8(ENTRY_KEY)), lengthDelimited(2, value)]));
  if (!bytesEqual(exact, model.subarray(f.start))) throw new Modified("the onnx-protect/v2 entry is not encoded as §1 says");
  return [f.start, value];
}

function b64decode(value: Uint8Array): Uint8Array {
  const text = decodeUtf8(value);
  if (text === null || !/^[A-Za-z0-9+/]*={0,2}$/.test(text) || text.length % 4) throw new Modified("the manifest value is not base64");
  const bin = atob(text);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  if (b64encode(out) !== text) throw new Modified("the manifest value is not canonical base64");
  return out;
}

function b64encode(b: Uint8Array): string {
  let s = "";
  for (let i = 0; i < b.length; i += 0x8000) s += String.fromCharCode(...b.subarray(i, i + 0x8000));
  return btoa(s);
}

function checkHeader(h: Message): void {
  if (h.format_version !== 2) throw new Modified(`header format_version ${h.format_version}`);
  const n = h.tiers;
  if (!(n >= 1 && n <= 16)) throw new Modified(`tiers ${n} outside 1..=16`);
  if (h.key_checks.length !== n || h.key_checks.some((k: Uint8Array) => k.length !== 16)) throw new Modified("key_checks: not `tiers` values of 16 bytes");
  const c = h.chunk_size as bigint;
  if (c < 1n << 16n || c > 1n << 30n || (c & (c - 1n)) !== 0n) throw new Modified(`chunk_size ${c} is not a power of two in [2^16, 2^30]`);
  if (h.tensors.length > MAX_ENTRIES) throw new Modified("too many entries");
  if (h.positions !== 0 && h.positions !== 1) throw new Modified(`positions ${h.positions}`);
  if (h.licence_authority.length !== 0 && h.licence_authority.length !== 32) throw new Modified("the licence authority is not 32 bytes");
  if (!h.licence_authority.length && h.model_id.length) throw new Modified("a model id without a licence authority");
  if (encodeUtf8(h.model_id).length > MAX_MODEL_ID_LEN) throw new Modified(`the model id is longer than ${MAX_MODEL_ID_LEN} bytes`);
  if (h.external_sizes.length !== 0 && h.external_sizes.length !== h.external_files.length) {
    throw new Modified("external_sizes does not hold one length per external file");
  }
  checkListedLeavesLength(h);
  checkOriginalNames(h);
  const streams = new Set<bigint>();
  const pairs = new Set<string>();
  const byLocator = new Map<string, Message[]>();
  for (const e of h.tensors) {
    const loc = e.locator as string;
    if (!/^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(\/(0|[1-9][0-9]*)\.(0|[1-9][0-9]*))*$/.test(loc)) throw new Modified(`locator '${loc}' is not written as §4 says`);
    if (!(e.tier >= 1 && e.tier <= n)) throw new Modified(`${loc}: tier ${e.tier} outside 1..=${n}`);
    if (![MODE_CTR, MODE_FP, MODE_DP].includes(e.mode)) throw new Modified(`${loc}: mode ${e.mode}`);
    if (!(e.storage >= 1 && e.storage <= 7)) throw new Modified(`${loc}: storage ${e.storage}`);
    if (!(e.data_type in BITS) || e.data_type === STRING) throw new Modified(`${loc}: data_type ${e.data_type} is never encrypted`);
    if (streams.has(e.stream_id)) throw new Modified(`stream_id ${e.stream_id} used twice`);
    streams.add(e.stream_id);
    const key = `${loc}#${e.tier}`;
    if (pairs.has(key)) throw new Modified(`${loc}: two entries for tier ${e.tier}`);
    pairs.add(key);
    if (!byLocator.has(loc)) byLocator.set(loc, []);
    byLocator.get(loc)!.push(e);
    const secret = h.positions === 1;
    if (secret ? e.spans.length || !e.sealed_spans.length : !e.spans.length || e.sealed_spans.length) {
      throw new Modified(`${loc}: its spans must be ${secret ? "sealed" : "public"}`);
    }
    if (!secret) checkSpans(e, e.spans);
  }
  for (const [loc, es] of byLocator) {
    const first = es[0];
    for (const e of es.slice(1)) {
      for (const k of ["mode", "data_type", "storage", "nbytes"]) {
        if (String(e[k]) !== String(first[k])) throw new Modified(`${loc}: entries of one tensor disagree on ${k}`);
      }
    }
    if (VARINT_STORAGES.has(first.storage)) {
      if (es.length !== 1 || first.tier !== n) throw new Modified(`${loc}: a varint-stored tensor has one entry, of the top tier`);
      if (varintWidth(first.data_type) === null) throw new Modified(`${loc}: FLOAT6 in int32_data is never encrypted`);
    }
  }
}

/** §3: `external_leaves` is empty or holds 32 bytes for each chunk of the external files,
 * their lengths those `external_sizes` gives (which it needs). Checked at step 1, without a
 * key; the leaves themselves at step 6 ([`checkListedLeaves`]). */
function checkListedLeavesLength(h: Message): void {
  const listed = h.external_leaves as Uint8Array;
  if (!listed.length) return;
  const sizes = h.external_sizes as bigint[];
  if (!sizes.length) throw new Modified("external_leaves without external_sizes");
  const c = h.chunk_size as bigint;
  const chunks = sizes.reduce((n, len) => n + (len + c - 1n) / c, 0n);
  if (BigInt(listed.length) !== 32n * chunks) {
    throw new Modified(`external_leaves holds ${listed.length} bytes, not 32 for each of the ${chunks} chunks of the external files`);
  }
}

/** §3, §12 step 6: the leaves of the external files in canonical form (covered files 1 … n
 * of `leaves`, file 0 the model file) are those the header lists, when it lists them. */
function checkListedLeaves(h: Message, leaves: Uint8Array[]): void {
  const listed = h.external_leaves as Uint8Array;
  if (listed.length && !constantTimeEqual(concat(leaves.slice(1)), listed)) {
    throw new Modified("the external files' chunk hashes in the header (external_leaves) do not match their content");
  }
}

/** §3: `original_external_files` is empty or names each external file once, each name a
 * location §5 allows. */
function checkOriginalNames(h: Message): void {
  const names = h.original_external_files as string[];
  if (names.length && names.length !== h.external_files.length) {
    throw new Modified(`original_external_files holds ${names.length} names for ${h.external_files.length} external files`);
  }
  const seen = new Set<string>();
  for (const name of names) {
    try {
      checkLocation(name);
    } catch (e) {
      throw new Modified(`original_external_files: ${(e as Error).message}`);
    }
    // §3: alike = naming one file: the same components once empty and "." ones are dropped.
    const file = name.split(/[/\\]/).filter((p) => p !== "" && p !== ".").join("/");
    if (seen.has(file)) throw new Modified(`original_external_files: the name '${name}' names a file named before`);
    seen.add(file);
  }
}

/** §6: the spans of an entry, as pairs; "modified" when a rule is broken. */
function checkSpans(e: Message, values: bigint[]): Array<[number, number]> {
  const loc = e.locator;
  if (values.length % 2) throw new Modified(`${loc}: odd number of span values`);
  const dt = e.data_type as number, mode = e.mode as number;
  const nbytes = e.nbytes as bigint;
  if (mode === MODE_FP && !(dt in FP_MASKS)) throw new Modified(`${loc}: no format-preserving mask for data_type ${dt}`);
  if (mode === MODE_DP && BITS[dt] < 8) throw new Modified(`${loc}: the distribution-preserving mode needs whole-byte elements`);
  if (mode === MODE_DP && nbytes >= 1n << 40n) throw new Modified(`${loc}: nbytes too large for the distribution-preserving mode`);
  const esize = BigInt(elementSize(dt));
  const out: Array<[number, number]> = [];
  let prev: bigint | null = null;
  for (let i = 0; i < values.length; i += 2) {
    const b = values[i], en = values[i + 1];
    if (!(b < en)) throw new Modified(`${loc}: empty or reversed span [${b}, ${en})`);
    if (en > nbytes) throw new Modified(`${loc}: span [${b}, ${en}) past nbytes ${nbytes}`);
    if (prev !== null && (b < prev || (b === prev && mode !== MODE_DP))) throw new Modified(`${loc}: spans not sorted and disjoint`);
    if (mode !== MODE_CTR && (b % esize || en % esize)) throw new Modified(`${loc}: span [${b}, ${en}) not element-aligned`);
    if (mode === MODE_DP && (en - b) / esize < 16n) throw new Modified(`${loc}: span [${b}, ${en}) has fewer than 16 elements`);
    prev = en;
    out.push([Number(b), Number(en)]);
  }
  return out;
}

function checkAgeBody(body: Uint8Array, i: number): void {
  if (body.length > MAX_AGE_BODY) throw new Modified(`stanza ${i}: an x25519 body is at most ${MAX_AGE_BODY} bytes`);
  const lines: Uint8Array[] = [];
  let s = 0;
  for (let p = 0; p <= body.length; p++) {
    if (p === body.length || body[p] === 0x0a) {
      lines.push(body.subarray(s, p));
      s = p + 1;
    }
  }
  let x25519 = 0, other = 0;
  for (const l of lines.slice(1)) {
    if (l[0] === 0x2d && l[1] === 0x2d && l[2] === 0x2d) break;
    if (l[0] === 0x2d && l[1] === 0x3e && l[2] === 0x20) {
      const text = new TextDecoder("latin1").decode(l);
      if (text.startsWith("-> X25519 ")) x25519++;
      else other++;
    }
  }
  if (x25519 !== 1 || other > 1) throw new Modified(`stanza ${i}: an x25519 body holds one X25519 stanza and at most one other`);
}

function checkStanza(st: Message, i: number, tiers: number): void {
  if (!(st.tier >= 1 && st.tier <= tiers)) throw new Modified(`stanza ${i} is for tier ${st.tier}, which the model does not have`);
  const kind = st.kind as string;
  // Caps on every stanza, whatever its kind (§8).
  if (encodeUtf8(kind).length > 64 || encodeUtf8(st.label).length > 4096 || st.body.length > 16384) {
    throw new Modified(`stanza ${i}: a kind over 64 bytes, a label over 4096 or a body over 16384`);
  }
  if (kind === "key") {
    if (st.salt.length !== 16 || st.kdf !== null || st.body.length !== 48) throw new Modified(`stanza ${i}: a key stanza has a 16-byte salt, a 48-byte body and no kdf`);
  } else if (kind === "passphrase") {
    const k = st.kdf;
    if (!k || st.salt.length !== 16 || st.body.length !== 48) throw new Modified(`stanza ${i}: a passphrase stanza has a kdf, a 16-byte salt and a 48-byte body`);
    if (k.algorithm !== "argon2id" || k.salt.length !== 16) throw new Modified(`stanza ${i}: kdf algorithm or salt`);
    const { m_cost_kib: m, t_cost: t, p_cost: p } = k;
    if (!(m >= 8 && m <= 131072 && t >= 1 && t <= 6 && p >= 1 && p <= 4 && m >= 8 * p)) {
      throw new Modified(`stanza ${i}: Argon2id parameters m=${m} t=${t} p=${p} outside the caps`);
    }
  } else if (kind === "x25519") {
    if (st.salt.length || st.kdf !== null) throw new Modified(`stanza ${i}: an x25519 stanza has no salt and no kdf`);
    checkAgeBody(st.body, i);
  } else if (kind === "pkcs11") {
    if (st.body.length !== 60 || st.salt.length || st.kdf !== null) throw new Modified(`stanza ${i}: a pkcs11 stanza has a 60-byte body, no salt, no kdf`);
  } else if (kind === "tpm") {
    // The label is compared with a recipient only by a reader holding a TPM key (§8).
    if (st.salt.length || st.kdf !== null || st.body.length !== 81) throw new Modified(`stanza ${i}: a tpm stanza has an 81-byte body, no salt, no kdf`);
  } else if (kind === "age-plugin") {
    // Step 1 looks at nothing else: the label and the body's content are the plugin's (§8).
    if (st.salt.length || st.kdf !== null || st.body.length > 16384) throw new Modified(`stanza ${i}: an age-plugin stanza has no salt, no kdf and a body of at most 16384 bytes`);
  } else if (kind === "command") {
    const lab = encodeUtf8(st.label);
    // eslint-disable-next-line no-control-regex
    const control = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/.test(st.label);
    if (st.body.length < 1 || st.body.length > 16384 || lab.length > 512 || control || st.salt.length || st.kdf !== null) {
      throw new Modified(`stanza ${i}: a command stanza breaks its limits`);
    }
  }
}

function checkEnvelope(env: Message, h: Message, stanzas: Message[]): void {
  const n = h.tiers;
  if (env.content_digest.length !== 32 || env.checksum.length !== 32) throw new Modified("the content digest or the checksum is not 32 bytes");
  if (env.macs.length !== n || env.macs.some((m: Uint8Array) => m.length !== 32)) throw new Modified("the MACs do not match the tiers");
  if (env.signatures.length > MAX_SIGNATURES) throw new Modified("too many signatures");
  const keys = new Set<string>();
  for (const s of env.signatures) {
    if (s.public_key.length !== 32 || s.signature.length !== 64) throw new Modified("a signature has the wrong length");
    const k = signerString(s.public_key);
    if (keys.has(k)) throw new Modified("two signatures by one public key");
    keys.add(k);
  }
  const r = env.restored_tiers;
  if (!(r < n)) throw new Modified(`restored_tiers ${r} not below tiers ${n}`);
  if (env.stored_digest.length !== (r > 0 ? 32 : 0)) throw new Modified("restored tiers and the stored digest disagree");
  if (!stanzas.length || stanzas.length > MAX_STANZAS) throw new Modified("no stanza, or too many");
  const costly = new Map<string, number>();
  stanzas.forEach((st, i) => {
    checkStanza(st, i, n);
    if (COSTLY.has(st.kind)) {
      const c = (costly.get(st.kind) ?? 0) + 1;
      if (c > MAX_COSTLY) throw new Modified(`more than ${MAX_COSTLY} ${st.kind} stanzas`);
      costly.set(st.kind, c);
    }
  });
}

// ---------------------------------------------------------------- §9 digest

/** §9: the leaves of each covered file. */
function coveredLeaves(files: Uint8Array[], chunk: number): Promise<Uint8Array[]> {
  return Promise.all(files.map((f, i) => backend.leaves(i, f, chunk)));
}

/** §9: `D` of the covered files. */
async function contentDigest(files: Uint8Array[], chunk: number): Promise<Uint8Array> {
  return digestOfLeaves(files.map((f) => f.length), await coveredLeaves(files, chunk));
}

/** The external data files a protected model's header lists (§3), each location checked
 * as §5 says; for a caller that must fetch them before [`open`]. */
export function externalFilesOf(model: Uint8Array): string[] {
  return externalFilesWithSizes(model).map((f) => f.location);
}

/** [`externalFilesOf`] with each file's length as the header records it (`external_sizes`,
 * §3; `null` in a header without them), for a reader that compares a file's length with it
 * before reading the file. */
export function externalFilesWithSizes(model: Uint8Array): Array<{ location: string; size: bigint | null }> {
  const [, value] = findEntry(plain(model));
  const env = decodeCanonical("Envelope", b64decode(value));
  const header = decodeCanonical("Header", env.header);
  const files = header.external_files as string[], sizes = header.external_sizes as bigint[];
  if (sizes.length !== 0 && sizes.length !== files.length) throw new Modified("external_sizes does not hold one length per external file");
  for (const loc of files) {
    try {
      checkLocation(loc);
    } catch (e) {
      throw new Modified(`external file '${loc}' of the header: ${(e as Error).message}`);
    }
  }
  return files.map((location, i) => ({ location, size: sizes.length ? sizes[i] : null }));
}

/** Refuses an external data file whose length is not the one the header records (§3), with
 * the words `open` uses for it. */
export function checkExternalSize(location: string, actual: number | bigint, recorded: bigint | null): void {
  if (recorded !== null && BigInt(actual) !== recorded) {
    throw new Modified(`external file '${location}' is ${actual} bytes, its header says ${recorded}`);
  }
}

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

// ---------------------------------------------------------------- keys (§7, §8)

class TierKeys {
  readonly prk: Uint8Array;
  constructor(readonly dk: Uint8Array) {
    this.prk = hkdfExtract(sha256, dk, label("onnx-protect/v2/data-key"));
  }
  tensorKey(stream: bigint): Uint8Array {
    return hkdfExpand(sha256, this.prk, concat([label("onnx-protect/v2/tensor"), u64be(stream)]), 32);
  }
  macKey(): Uint8Array {
    return hkdfExpand(sha256, this.prk, label("onnx-protect/v2/mac"), 32);
  }
  kcv(): Uint8Array {
    return hkdfExpand(sha256, this.prk, label("onnx-protect/v2/key-check"), 16);
  }
  positionsKey(): Uint8Array {
    return hkdfExpand(sha256, this.prk, label("onnx-protect/v2/positions"), 32);
  }
}

function tierDown(dk: Uint8Array): Uint8Array {
  return hkdf(sha256, dk, label("onnx-protect/v2/tier-salt"), label("onnx-protect/v2/tier-down"), 32);
}

function keyCount(k: KeyMaterial): number {
  return [k.key, k.passphrase, k.identity].filter((x) => x !== undefined).length;
}

/** §8: the highest tier the key material opens, its data key and the stanza that opened. */
async function openStanza(op: Opened, km: KeyMaterial): Promise<[number, Uint8Array, Message]> {
  if (keyCount(km) !== 1) throw new UsageError("give exactly one of key, passphrase or identity");
  const w = km.key !== undefined ? parseKey(km.key).key : null;
  const pass = km.passphrase !== undefined ? passphraseBytes(km.passphrase) : null;
  const ids = km.identity !== undefined ? parseIdentities(km.identity) : null;
  let best: [number, Uint8Array, Message] | null = null;
  let tries = 0;
  for (const st of op.stanzas) {
    if (best && best[0] >= st.tier) continue;
    let dk: Uint8Array | null = null;
    if (st.kind === "key" && w) {
      const kek = hkdf(sha256, w, st.salt, concat([label("onnx-protect/v2/wrap/key"), u32be(st.tier)]), 32);
      dk = unwrapChaCha(kek, st.body);
    } else if (st.kind === "passphrase" && pass) {
      if (++tries > MAX_COSTLY) break;
      const k = st.kdf;
      const wp = await argon2id(pass, k.salt, k.m_cost_kib, k.t_cost, k.p_cost);
      const kek = hkdf(sha256, wp, st.salt, concat([label("onnx-protect/v2/wrap/passphrase"), u32be(st.tier)]), 32);
      dk = unwrapChaCha(kek, st.body);
    } else if (st.kind === "x25519" && ids) {
      dk = await openAge(st.body, ids);
    }
    if (dk !== null) {
      if (dk.length !== 32) throw new Modified("a stanza's payload is not 32 bytes");
      best = [st.tier, dk, st];
    }
  }
  if (!best) throw new WrongKey();
  return best;
}

async function openAge(body: Uint8Array, ids: string[]): Promise<Uint8Array | null> {
  const d = new Decrypter();
  for (const id of ids) d.addIdentity(id);
  let payload: Uint8Array;
  try {
    payload = await d.decrypt(body);
  } catch {
    return null; // not a well-formed age file for these identities: does not open (§8)
  }
  if (payload.length !== 32) throw new Modified("the age payload of an x25519 stanza is not 32 bytes");
  return payload;
}

interface Unlocked {
  tier: number;
  keys: Map<number, TierKeys>;
}

/** §6 secret positions: the spans of the entries of the tiers `keys` reach. */
function unseal(op: Opened, keys: Map<number, TierKeys>): void {
  if (op.header.positions !== 1) return;
  for (const en of op.entries) {
    const k = keys.get(en.e.tier);
    if (!k) continue;
    const nonce = concat([new Uint8Array(4), u64be(en.e.stream_id)]);
    const plain = unwrapChaCha(k.positionsKey(), en.e.sealed_spans, nonce, label("onnx-protect/v2/positions"));
    if (!plain || plain.length % 8) throw new Modified(`the sealed positions of tensor '${en.e.name}' do not open`);
    const dv = new DataView(plain.buffer, plain.byteOffset, plain.length);
    const values: bigint[] = [];
    for (let i = 0; i < plain.length; i += 8) values.push(dv.getBigUint64(i));
    if (!values.length) throw new Modified(`tensor '${en.e.name}' has no span`);
    en.spans = checkSpans(en.e, values);
  }
  // Spans of different tiers of one tensor stay disjoint (§3).
  const byTensor = new Map<Tensor, Array<[number, number]>>();
  for (const en of op.entries) {
    if (!byTensor.has(en.tensor)) byTensor.set(en.tensor, []);
    byTensor.get(en.tensor)!.push(...en.spans);
  }
  for (const spans of byTensor.values()) {
    spans.sort((a, b) => a[0] - b[0]);
    for (let i = 1; i < spans.length; i++) if (spans[i][0] < spans[i - 1][1]) throw new Modified("spans of different tiers overlap");
  }
}

/** §12 steps 4–5: a stanza opened, the KCVs, the licence, the canonical digest, the MACs,
 * the signers. */
async function unlock(op: Opened, opts: ReadOptions): Promise<Unlocked> {
  const [opened, dk, by] = await openStanza(op, opts);
  const keys = new Map<number, TierKeys>();
  let d = dk;
  for (let t = opened; t >= 1; t--) {
    keys.set(t, new TierKeys(d));
    d = tierDown(d);
  }
  for (const [t, tk] of keys) {
    if (!constantTimeEqual(tk.kcv(), op.header.key_checks[t - 1])) throw new Modified(`the data key of tier ${t} does not match its key check`);
  }
  // A model with a licence authority opens only as far as a valid licence grants.
  const facts = { authority: op.header.licence_authority, contentDigest: op.env.content_digest, modelId: op.header.model_id };
  const k = await grantedTier(facts, opts, { kind: by.kind, label: by.label }, opened);
  for (let t = k + 1; t <= opened; t++) keys.delete(t);
  if (k <= op.restored) throw new AlreadyDecrypted(`tiers 1 to ${op.restored} are in clear in this file, and the key is for tier ${k}`);
  unseal(op, keys);
  if (op.restored) {
    const [content, ext] = await transformed(op, keys, (t) => t <= op.restored, true);
    const files = [content, ...(op.header.external_files as string[]).map((l) => ext.get(l)!)];
    const leaves = await coveredLeaves(files, Number(op.header.chunk_size));
    if (!constantTimeEqual(await digestOfLeaves(files.map((f) => f.length), leaves), op.env.content_digest)) {
      throw new Modified("the model's content does not match its manifest");
    }
    checkListedLeaves(op.header, leaves);
  }
  const T = op.macInput();
  for (let t = 1; t <= k; t++) {
    const mac = hmacSha256(keys.get(t)!.macKey(), concat([label("onnx-protect/v2/mac"), u32be(t), T]));
    if (!constantTimeEqual(mac, op.env.macs[t - 1])) throw new Modified(`the MAC of tier ${t} does not match`);
  }
  if (opts.signers) checkSignatures(op, opts.signers);
  return { tier: k, keys };
}

/** §10: at least one trusted signer signed, and every trusted signer's signature verifies. */
export function checkSignatures(op: Opened, signers: string[]): void {
  const trusted = signers.map(parseSigner);
  const msg = concat([label("onnx-protect/v2/signature"), op.macInput()]);
  let found = false;
  for (const s of op.env.signatures) {
    if (!trusted.some((t) => bytesEqual(t, s.public_key))) continue;
    if (!verifyStrict(s.public_key, s.signature, msg)) throw new Modified(`the signature of ${signerString(s.public_key)} does not verify`);
    found = true;
  }
  if (!found) throw new NotSigned(`no signature of ${signers.join(", ")} is on the model`);
}

// ---------------------------------------------------------------- §6 transforms

/** What [`transformed`] does besides the spans: with `rename` (location → original name,
 * §12 step 7) every external tensor's location is rewritten, with `unlockClasses` every
 * locked tensor's classes go back in true order (§15), and with `stored` the digest of the
 * files as given must be it (§12 step 6; on a mismatch the copies are zeroed, nothing is
 * returned). */
interface Transform {
  rename?: Map<string, string>;
  unlockClasses?: { prk1: Uint8Array; lock: HeaderLock };
  stored?: Uint8Array;
  /** With `stored`: the files as given are in canonical form (no tier restored), so their
   * external files' leaves must also be those the header lists (§3). */
  canonical?: boolean;
  owned?: Owned;
}

/** Files read for one call and seen by no one else (`decryptFile`), so decrypted in place:
 * the leaves of each covered file, hashed from its bytes as read in chunks of `chunk` bytes
 * (for the model file, of the whole file, its entry included). */
export interface Owned {
  chunk: number;
  leaves: Array<Promise<Uint8Array>>;
}

/** Copies of the content and external files with the spans of tiers `which` encrypted
 * (`encrypt`) or decrypted, the varint-stored tensors rewritten when decrypting. The CTR and
 * format-preserving spans of raw, float, double and external storage go to the byte backend as
 * pieces of the files (copied, hashed and XORed in one pass); the others are done here. */
async function transformed(
  op: Opened, keys: Map<number, TierKeys>, which: (tier: number) => boolean, encrypt: boolean, how: Transform = {},
): Promise<[Uint8Array, Map<string, Uint8Array>, number, number]> {
  const locations = op.header.external_files as string[];
  const files = [op.content, ...locations.map((l) => op.external.get(l)!)];
  const fileOf = new Map(locations.map((l, i) => [l, i + 1]));
  const pieces: Piece[][] = files.map(() => []);
  const streamKeys: Uint8Array[] = [];
  const elementwise: Array<{ e: Message; t: Tensor; spans: Array<[number, number]>; key: number }> = [];
  let tensors = 0, bytes = 0;
  for (const { e, tensor: t, spans } of op.entries) {
    if (!which(e.tier)) continue;
    tensors++;
    for (const [a, b] of spans) bytes += b - a;
    const key = streamKeys.push(keys.get(e.tier)!.tensorKey(e.stream_id)) - 1;
    if ((t.storage !== null && VARINT_STORAGES.has(t.storage)) || e.mode === MODE_DP) {
      elementwise.push({ e, t, spans, key });
      continue;
    }
    const mask = e.mode === MODE_FP ? FP_MASKS[e.data_type] : null;
    const f = t.external ? fileOf.get(t.external.location)! : 0;
    for (const [a, b] of spans) {
      let stream = a;
      for (const v of elementViews(op.model, t, op.external, a, b)) {
        pieces[f].push({ offset: v.byteOffset - files[f].byteOffset, length: v.length, key, stream, mask });
        stream += v.length;
      }
    }
  }
  for (const p of pieces) p.sort((x, y) => x.offset - y.offset);
  const chunk = Number(op.header.chunk_size);
  const done = how.owned ? await inPlace(files, chunk, pieces, streamKeys, how.owned)
    : await Promise.all(files.map((f, i) => backend.copyXor(i, f, chunk, pieces[i], streamKeys)));
  if (how.stored) {
    const leaves = done.map((d) => d.leaves);
    const digest = await digestOfLeaves(files.map((f) => f.length), leaves);
    try {
      if (!constantTimeEqual(digest, how.stored)) throw new Modified("the model's content does not match its manifest");
      if (how.canonical) checkListedLeaves(op.header, leaves);
    } catch (e) {
      for (const d of done) d.out.fill(0);
      throw e;
    }
  }
  // §15: the label lock's seed, opened only now (step 7, after step 6); a seal that does
  // not open leaves nothing behind.
  let order: Uint32Array | null = null;
  if (how.unlockClasses) {
    try {
      order = await classOrder(how.unlockClasses.lock, how.unlockClasses.prk1);
    } catch (e) {
      for (const d of done) d.out.fill(0);
      throw e;
    }
  }
  let content = done[0].out;
  const ext = new Map(locations.map((l, i) => [l, done[i + 1].out]));
  const edits: Edit[] = [];
  // The element bytes of varint-stored tensors to write back (they change lengths).
  const varints = new Map<Tensor, Uint8Array>();
  for (const { e, t, spans, key } of elementwise) {
    const elem = elementBytes(content, t, ext);
    await transformElements(elem, e, spans, await Keystream.of(streamKeys[key]), encrypt);
    if (t.storage !== null && VARINT_STORAGES.has(t.storage)) varints.set(t, elem);
    else for (const [a, b] of spans) writeViews(elementViews(content, t, ext, a, b), elem.subarray(a, b));
  }
  for (const { tensor: t, axis } of how.unlockClasses?.lock.tensors ?? []) {
    const varint = t.storage !== null && VARINT_STORAGES.has(t.storage);
    const plainBytes = unlockElements(varints.get(t) ?? elementBytes(content, t, ext), t, axis, order!);
    if (varint) varints.set(t, plainBytes);
    else writeViews(elementViews(content, t, ext, 0, t.nbytes), plainBytes);
  }
  for (const [t, elem] of varints) edits.push(...varintEdits(content, t, elem));
  // Varint-stored tensors and renamed locations change lengths: rewritten last, in one pass.
  if (how.rename) for (const t of op.tensors) if (t.external) edits.push(locationEdit(content, t, how.rename.get(t.external.location)!));
  content = applyEdits(content, edits);
  return [content, ext, tensors, bytes];
}

/** [`transformed`]'s pass over files it owns: the leaves as read (the model file's cut at the
 * end of its content: the chunk the entry starts in is hashed again, here, before any change),
 * then the pieces XORed in place. */
async function inPlace(files: Uint8Array[], chunk: number, pieces: Piece[][], keys: Uint8Array[], owned: Owned): Promise<Array<{ out: Uint8Array; leaves: Uint8Array }>> {
  let leaves: Array<Uint8Array | Promise<Uint8Array>>;
  if (owned.chunk === chunk) {
    const content = files[0];
    const whole = Math.floor(content.length / chunk);
    const tail = content.length % chunk ? [(await blake3())([label("onnx-protect/v2/chunk"), u32be(0), u64be(whole), content.subarray(whole * chunk)])] : [];
    leaves = [owned.leaves[0].then((l) => concat([l.subarray(0, 32 * whole), ...tail])), ...owned.leaves.slice(1)];
  } else {
    leaves = await Promise.all(files.map((f, i) => backend.leaves(i, f, chunk)));
  }
  for (let i = 0; i < files.length; i++) await backend.xor(files[i], pieces[i], keys);
  return Promise.all(files.map(async (out, i) => ({ out, leaves: await leaves[i] })));
}

function writeViews(views: Uint8Array[], data: Uint8Array): void {
  let p = 0;
  for (const v of views) {
    v.set(data.subarray(p, p + v.length));
    p += v.length;
  }
}

async function transformElements(elem: Uint8Array, e: Message, spans: Array<[number, number]>, ks: Keystream, encrypt: boolean): Promise<void> {
  if (e.mode === MODE_CTR) {
    for (const [a, b] of spans) await ks.xor(a, elem.subarray(a, b));
    return;
  }
  if (e.mode === MODE_FP) {
    for (const [a, b] of spans) await ks.xorMasked(a, elem.subarray(a, b), FP_MASKS[e.data_type]);
    return;
  }
  const size = elementSize(e.data_type);
  for (const [a, b] of spans) {
    const n = (b - a) / size;
    // §6: the words of the span starting at element-byte offset `a` begin at keystream byte a·2^24.
    const swaps = await keyedSwaps(ks, BigInt(a) << 24n, n, true);
    const span = elem.subarray(a, b);
    const tmp = new Uint8Array(size);
    const order = encrypt ? swaps : swaps.slice().reverse();
    for (const [i, j] of order) {
      if (i === j) continue;
      tmp.set(span.subarray(i * size, (i + 1) * size));
      span.copyWithin(i * size, j * size, (j + 1) * size);
      span.set(tmp, j * size);
    }
  }
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
