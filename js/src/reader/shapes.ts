// ---------------------------------------------------------------- §1, §2, §3, §8 shapes

import { InvalidModel, Modified, NotProtected, UnsupportedVersion } from "../errors.js";
import { constantTimeEqual } from "../crypto.js";
import { signerString } from "../keys.js";
import { BITS, checkLocation, elementSize, FP_MASKS, STRING, VARINT_STORAGES, varintWidth } from "../model.js";
import {
  bytesEqual, concat, decodeUtf8, encodeUtf8, Field, lengthDelimited, Message, parseFields, readSmallVarint, WT_LEN,
} from "../wire.js";
import {
  COSTLY, ENTRY_KEY, MAX_AGE_BODY, MAX_COSTLY, MAX_ENTRIES, MAX_MODEL_ID_LEN, MAX_SIGNATURES, MAX_STANZAS, MODE_CTR, MODE_DP, MODE_FP,
} from "./opened.js";

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
export function findEntry(model: Uint8Array): [number, Uint8Array] {
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

export function b64decode(value: Uint8Array): Uint8Array {
  const text = decodeUtf8(value);
  if (text === null || !/^[A-Za-z0-9+/]*={0,2}$/.test(text) || text.length % 4) throw new Modified("the manifest value is not base64");
  const bin = atob(text);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  if (b64encode(out) !== text) throw new Modified("the manifest value is not canonical base64");
  return out;
}

export function b64encode(b: Uint8Array): string {
  let s = "";
  for (let i = 0; i < b.length; i += 0x8000) s += String.fromCharCode(...b.subarray(i, i + 0x8000));
  return btoa(s);
}

export function checkHeader(h: Message): void {
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
export function checkListedLeaves(h: Message, leaves: Uint8Array[]): void {
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
export function checkSpans(e: Message, values: bigint[]): Array<[number, number]> {
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

export function checkEnvelope(env: Message, h: Message, stanzas: Message[]): void {
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
