// Licences (docs/format.md Appendix C, docs/shipping.md#licences): a publisher's signed text
// naming the models it opens, for which recipients, up to which tier, and when. A model whose
// header records a licence authority opens only with a licence of that authority valid for
// the model, the stanza that opened it and the time. Parsing is strict (every malformed
// field names its line); the signature is Ed25519 from @noble/curves, verified strictly.

import {
  ClockSetBack, LicenceBadSignature, LicenceExpired, LicenceMalformed, LicenceMissing, LicenceNotYetValid,
  LicenceWrongDevice, LicenceWrongModel, UsageError,
} from "./errors.js";
import { concat, label, verifyStrict } from "./crypto.js";
import { parseSigner, signerString } from "./keys.js";
import { bytesEqual, decodeUtf8, encodeUtf8 } from "./wire.js";

/** First line of a version-1 licence. */
export const LICENCE_TAG = "onnx-protect-licence-v1";
const SIGNATURE_LABEL = "onnx-protect/licence/v1";
const MAX_LICENCE_LEN = 64 * 1024;
const MAX_ENTRIES = 64;
const MAX_VALUE_LEN = 1024;
const MAX_TIERS = 16;
/** Seconds the clock may be behind the recorded high-water mark (clock corrections of a
 * few minutes are not refused), as onnx-protect allows. */
export const SET_BACK_TOLERANCE = 600;

/** A model a licence names: a content digest (format.md §9) or a model id. */
export type ModelRef = { digest: Uint8Array } | { id: string };
/** Who may open the model: any recipient, or the stanza of this kind and label. */
export type RecipientRef = "any" | { kind: string; label: string };

export interface LicenceTerms {
  /** The publisher's Ed25519 public key. */
  authority: Uint8Array;
  licensee?: string;
  models: ModelRef[];
  recipients: RecipientRef[];
  /** The highest access tier granted. */
  tiers: number;
  /** Seconds since the epoch, UTC, both inclusive. */
  notBefore: number;
  notAfter: number;
}

/** A parsed licence: its terms, the bytes signed and the signature, not yet verified. */
export interface Licence {
  terms: LicenceTerms;
  signed: Uint8Array;
  signature: Uint8Array;
}

/** Where the latest time a licence check saw is kept, to refuse a clock set back below it.
 * `read` gives the recorded high-water mark (seconds since the epoch, UTC; `null` when none
 * is recorded), `write` records a new one. `onnx-protect/node` has `clockFile` (the state
 * file onnx-protect itself keeps); `storageClock` keeps it in a Web Storage. */
export interface LicenceClock {
  read(): number | null | Promise<number | null>;
  write(highWater: number): void | Promise<void>;
}

/** What a caller gives for a model that needs a licence. */
export interface LicenceOptions {
  /** The licence text (or its bytes). */
  licence?: string | Uint8Array;
  /** The clock, in milliseconds since the epoch (default `Date.now`). */
  now?: () => number;
  /** The high-water-mark store; without one only the clock is consulted. */
  licenceClock?: LicenceClock;
}

/** What the model's header says about licences (authenticated by its MACs). */
export interface ModelFacts {
  /** `Header.licence_authority`: empty when the model needs no licence. */
  authority: Uint8Array;
  contentDigest: Uint8Array;
  /** `Header.model_id` ("" when none). */
  modelId: string;
}

// ---------------------------------------------------------------- time

const UTC = /^([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})Z$/;

/** `YYYY-MM-DDTHH:MM:SSZ` (years 1970 to 9999, a real date, no leap second) as seconds
 * since the epoch; `null` for anything else. */
export function parseUtc(text: string): number | null {
  const m = UTC.exec(text);
  if (!m) return null;
  const [y, mo, d, h, mi, s] = m.slice(1).map(Number);
  if (y < 1970 || mo < 1 || mo > 12 || d < 1 || h > 23 || mi > 59 || s > 59) return null;
  const days = new Date(Date.UTC(y, mo, 0)).getUTCDate();
  if (d > days) return null;
  return Date.UTC(y, mo - 1, d, h, mi, s) / 1000;
}

/** Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`. */
export function formatUtc(secs: number): string {
  const d = new Date(secs * 1000);
  return Number.isNaN(d.getTime()) ? `${secs} s since the epoch` : `${d.toISOString().slice(0, 19)}Z`;
}

// ---------------------------------------------------------------- parsing

function bad(line: number, reason: string): LicenceMalformed {
  return new LicenceMalformed(line, reason);
}

function shorten(s: string): string {
  const chars = [...s];
  return chars.length > 48 ? `${chars.slice(0, 48).join("")}…` : s;
}

const B64_64 = /^[A-Za-z0-9+/]{85}[AQgw]==$/;

function parseSignature(n: number, line: string): Uint8Array {
  const v = line.startsWith("signature: ") ? line.slice("signature: ".length) : "";
  // 64 bytes are 88 characters of standard padded Base64; the last character before
  // the padding carries 2 bits and 4 zero bits (canonical, as the Rust reader requires).
  if (!B64_64.test(v)) throw bad(n, "signature: not the standard padded Base64 of 64 bytes");
  const bin = atob(v);
  return Uint8Array.from(bin, (c) => c.charCodeAt(0));
}

/** The lines of the body after its first as [number, name, value]. */
function fields(body: string): Array<[number, string, string]> {
  const lines = body.slice(0, -1).split("\n");
  if (lines[0] !== LICENCE_TAG) {
    if (lines[0].startsWith("onnx-protect-licence-")) throw bad(1, `unknown version '${lines[0]}' (this reader reads ${LICENCE_TAG})`);
    throw bad(1, `not a licence (the first line must be '${LICENCE_TAG}')`);
  }
  const out: Array<[number, string, string]> = [];
  lines.slice(1).forEach((line, i) => {
    const n = i + 2;
    if (line.includes("\r")) throw bad(n, "a carriage return (lines end in \\n only)");
    const at = line.indexOf(": ");
    if (at < 0) throw bad(n, `'${shorten(line)}' is not 'NAME: VALUE'`);
    const name = line.slice(0, at), value = line.slice(at + 2);
    const len = encodeUtf8(value).length;
    if (len === 0 || len > MAX_VALUE_LEN) throw bad(n, `${name}: the value has ${len} bytes (1 to ${MAX_VALUE_LEN})`);
    // eslint-disable-next-line no-control-regex
    if (value.startsWith(" ") || value.endsWith(" ") || /[\u0000-\u001f\u007f-\u009f]/.test(value)) {
      throw bad(n, `${name}: surrounding spaces or control characters in the value`);
    }
    out.push([n, name, value]);
  });
  return out;
}

function parseAuthority(n: number, v: string): Uint8Array {
  try {
    return parseSigner(v);
  } catch (e) {
    throw bad(n, `authority: ${(e as Error).message}`);
  }
}

function parseModel(n: number, v: string): ModelRef {
  if (v.startsWith("digest:")) {
    const h = v.slice(7);
    if (!/^[0-9a-f]{64}$/.test(h)) throw bad(n, "model: a digest is 64 lowercase hex digits");
    return { digest: Uint8Array.from({ length: 32 }, (_, i) => parseInt(h.slice(2 * i, 2 * i + 2), 16)) };
  }
  if (v.startsWith("id:")) {
    if (v.length === 3) throw bad(n, "model: an empty id");
    return { id: v.slice(3) };
  }
  throw bad(n, `model: '${shorten(v)}' is neither 'digest:HEX' nor 'id:TEXT'`);
}

function parseRecipient(n: number, v: string): RecipientRef {
  if (v === "any") return "any";
  const sp = v.indexOf(" ");
  const [kind, lab] = sp < 0 ? [v, ""] : [v.slice(0, sp), v.slice(sp + 1)];
  if (!/^[a-z0-9-]+$/.test(kind) || lab.startsWith(" ")) throw bad(n, `recipient: '${shorten(v)}' is not 'any' or 'KIND LABEL'`);
  return { kind, label: lab };
}

function parseTime(n: number, name: string, v: string): number {
  const t = parseUtc(v);
  if (t === null) throw bad(n, `${name}: '${v}' is not YYYY-MM-DDTHH:MM:SSZ`);
  return t;
}

function parseBody(body: string): LicenceTerms {
  const all = fields(body);
  let at = 0;
  const take = (name: string, optional: boolean): [number, string] | null => {
    const next = all[at];
    if (next && next[1] === name) {
      at++;
      return [next[0], next[2]];
    }
    if (!optional) throw next ? bad(next[0], `'${next[1]}:' where '${name}:' was expected`) : bad(0, `no '${name}:' line`);
    return null;
  };
  const [an, av] = take("authority", false)!;
  const authority = parseAuthority(an, av);
  const licensee = take("licensee", true)?.[1];
  const models: ModelRef[] = [];
  for (let f; (f = take("model", models.length > 0));) models.push(parseModel(f[0], f[1]));
  const recipients: RecipientRef[] = [];
  for (let f; (f = take("recipient", recipients.length > 0));) recipients.push(parseRecipient(f[0], f[1]));
  const [tn, tv] = take("tiers", false)!;
  if (!/^[1-9][0-9]?$/.test(tv) || Number(tv) > MAX_TIERS) throw bad(tn, `tiers: '${tv}' is not a number from 1 to ${MAX_TIERS}`);
  const [bn, bv] = take("not-before", false)!;
  const notBefore = parseTime(bn, "not-before", bv);
  const [en, ev] = take("not-after", false)!;
  const notAfter = parseTime(en, "not-after", ev);
  if (notAfter < notBefore) throw bad(en, "not-after is before not-before");
  if (at < all.length) throw bad(all[at][0], `'${all[at][1]}:' is out of place or unknown`);
  if (models.length > MAX_ENTRIES || recipients.length > MAX_ENTRIES) throw bad(0, `more than ${MAX_ENTRIES} model: or recipient: lines`);
  return { authority, licensee, models, recipients, tiers: Number(tv), notBefore, notAfter };
}

/** Parses a licence text (Appendix C). Every malformed field is a `LicenceMalformed` naming
 * its line (0: the text as a whole). The signature is checked by [`evaluateLicence`]. */
export function parseLicence(input: string | Uint8Array): Licence {
  const bytes = typeof input === "string" ? encodeUtf8(input) : input;
  if (bytes.length > MAX_LICENCE_LEN) throw bad(0, `${bytes.length} bytes (${MAX_LICENCE_LEN} at most)`);
  const text = decodeUtf8(bytes);
  if (text === null) throw bad(0, "not UTF-8");
  const i = text.indexOf("\nsignature: ");
  if (i < 0) throw bad(0, "no 'signature:' line");
  const body = text.slice(0, i + 1);
  const sigLine = text.slice(i + 1);
  const sigNo = body.split("\n").length;
  const sigText = sigLine.endsWith("\n") ? sigLine.slice(0, -1) : sigLine;
  if (sigText.includes("\n")) throw bad(sigNo + 1, "text after the 'signature:' line");
  const signature = parseSignature(sigNo, sigText);
  const terms = parseBody(body);
  return { terms, signed: bytes.subarray(0, encodeUtf8(body).length), signature };
}

// ---------------------------------------------------------------- evaluation

const hex = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");

function describeModel(m: ModelRef): string {
  return "digest" in m ? `digest:${hex(m.digest)}` : `id:${m.id}`;
}

function describeRecipient(r: RecipientRef): string {
  return r === "any" ? "any" : `${r.kind} ${r.label}`.trimEnd();
}

/** Checks, in this order, the signature (by the model's authority), the model, the
 * recipient (the stanza that opened), then the validity window at `now` (seconds since
 * the epoch). Returns the highest tier granted. */
export function evaluateLicence(l: Licence, model: ModelFacts, opener: { kind: string; label: string }, now: number): number {
  const t = l.terms;
  if (!bytesEqual(t.authority, model.authority)) {
    throw new LicenceBadSignature(`the licence is from ${signerString(t.authority)}, the model needs one from ${signerString(model.authority)}`);
  }
  if (!verifyStrict(model.authority, l.signature, concat([label(SIGNATURE_LABEL), l.signed]))) {
    throw new LicenceBadSignature("the signature does not verify");
  }
  const names = t.models.some((m) => ("digest" in m ? bytesEqual(m.digest, model.contentDigest) : model.modelId !== "" && m.id === model.modelId));
  if (!names) {
    const self = `digest:${hex(model.contentDigest)}${model.modelId ? `, id:${model.modelId}` : ""}`;
    throw new LicenceWrongModel(t.models.map(describeModel).join(", "), self);
  }
  if (!t.recipients.some((r) => r === "any" || (r.kind === opener.kind && r.label === opener.label))) {
    throw new LicenceWrongDevice(t.recipients.map(describeRecipient).join(", "), `${opener.kind} ${opener.label}`.trimEnd());
  }
  if (now < t.notBefore) throw new LicenceNotYetValid(formatUtc(t.notBefore), formatUtc(now));
  if (now > t.notAfter) throw new LicenceExpired(formatUtc(t.notAfter), formatUtc(now));
  return t.tiers;
}

/** The time to evaluate licences at: the clock, refused when it is more than
 * [`SET_BACK_TOLERANCE`] behind the recorded high-water mark, which then advances; the
 * later of the clock and the mark (a clock a little behind does not extend a licence). */
export async function checkClock(now: number, store?: LicenceClock): Promise<number> {
  if (!store) return now;
  let high: number | null;
  try {
    high = await store.read();
  } catch (e) {
    throw new ClockSetBack(`the clock store cannot be read: ${(e as Error).message}`);
  }
  if (high !== null && !(Number.isSafeInteger(high) && high >= 0)) throw new ClockSetBack(`the clock store holds ${high}, not a time`);
  if (high !== null && now + SET_BACK_TOLERANCE < high) {
    throw new ClockSetBack(`the clock (${formatUtc(now)}) is behind a time already reached here (${formatUtc(high)}, the recorded high-water mark): set the clock right`);
  }
  const trusted = Math.max(now, high ?? 0);
  try {
    await store.write(trusted);
  } catch (e) {
    throw new ClockSetBack(`the clock store cannot be written: ${(e as Error).message}`);
  }
  return trusted;
}

/** The highest tier the model opens to, `tier` being what the key reaches through
 * `opener`: `tier` for a model that needs no licence; otherwise what a valid licence
 * grants, at most `tier`. The signature and the names are checked before the clock store
 * is touched (a licence for another model or device does not move it). */
export async function grantedTier(model: ModelFacts, opts: LicenceOptions, opener: { kind: string; label: string }, tier: number): Promise<number> {
  if (!model.authority.length) return tier;
  if (opts.licence === undefined) throw new LicenceMissing(signerString(model.authority));
  const l = parseLicence(opts.licence);
  evaluateLicence(l, model, opener, l.terms.notBefore);
  const ms = (opts.now ?? Date.now)();
  if (!Number.isFinite(ms) || ms < 0) throw new UsageError(`now() gave ${ms}, not milliseconds since the epoch`);
  const trusted = await checkClock(Math.floor(ms / 1000), opts.licenceClock);
  return Math.min(tier, evaluateLicence(l, model, opener, trusted));
}

/** A high-water-mark store in a Web Storage (`localStorage` in a browser) under `key`.
 * Whoever runs the page can clear it (site data, private windows): it catches a clock set
 * back, not a user who also clears the store. */
export function storageClock(storage: { getItem(k: string): string | null; setItem(k: string, v: string): void }, key = "onnx-protect/licence-clock"): LicenceClock {
  return {
    read() {
      const v = storage.getItem(key);
      if (v === null) return null;
      const t = parseUtc(v);
      if (t === null) throw new Error(`'${key}' holds '${shorten(v)}', not a time`);
      return t;
    },
    write(highWater: number) {
      storage.setItem(key, formatUtc(highWater));
    },
  };
}
