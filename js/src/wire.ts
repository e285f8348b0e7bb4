// Protocol buffers wire format: varints, fields of a message, and the canonical codec
// of the manifest messages (docs/format.md §2).

import { InvalidModel, Modified } from "./errors.js";

export const WT_VARINT = 0;
export const WT_I64 = 1;
export const WT_LEN = 2;
export const WT_I32 = 5;

/** One field of a message: its number, wire type and where its bytes are. */
export interface Field {
  number: number;
  wire: number;
  /** Offset of the tag. */
  start: number;
  /** Offset of the value (after the length prefix of a length-delimited field). */
  vstart: number;
  /** End of the value, which is the end of the field. */
  vend: number;
  /** The value of a varint field (64 bits). */
  value: bigint;
}

/** Thrown by the wire readers; callers turn it into the error their context calls for. */
export class WireError extends Error {}

/** Reads a varint at `pos` (before `end`): [value, next position]. At most 10 bytes. */
export function readVarint(buf: Uint8Array, pos: number, end: number): [bigint, number] {
  let result = 0n;
  let shift = 0n;
  for (let i = 0; i < 10; i++) {
    if (pos >= end) throw new WireError("truncated varint");
    const b = buf[pos++];
    result |= BigInt(b & 0x7f) << shift;
    if ((b & 0x80) === 0) return [result & 0xffffffffffffffffn, pos];
    shift += 7n;
  }
  throw new WireError("varint longer than 10 bytes");
}

/** A varint that must fit in a JavaScript number (offsets, lengths, tags). */
export function readSmallVarint(buf: Uint8Array, pos: number, end: number): [number, number] {
  const [v, p] = readVarint(buf, pos, end);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new WireError("varint too large");
  return [Number(v), p];
}

/** The minimal varint of `v` (taken modulo 2^64; a negative int32/int64 in 10 bytes). */
export function encodeVarint(v: bigint | number): Uint8Array {
  let x = BigInt(v);
  if (x < 0n) x &= 0xffffffffffffffffn;
  const out: number[] = [];
  do {
    let b = Number(x & 0x7fn);
    x >>= 7n;
    if (x !== 0n) b |= 0x80;
    out.push(b);
  } while (x !== 0n);
  return Uint8Array.from(out);
}

/** Every field of the message in `buf[start, end)`, in file order. */
export function parseFields(buf: Uint8Array, start = 0, end = buf.length): Field[] {
  const out: Field[] = [];
  let pos = start;
  while (pos < end) {
    const tagPos = pos;
    const [key, p] = readVarint(buf, pos, end);
    pos = p;
    if (key >> 3n > 0x1fffffffn) throw new WireError(`field number too large at byte ${tagPos}`);
    const number = Number(key >> 3n);
    const wire = Number(key & 7n);
    if (number === 0) throw new WireError(`field number 0 at byte ${tagPos}`);
    let value = 0n;
    let vstart = pos;
    let vend: number;
    if (wire === WT_VARINT) {
      [value, vend] = readVarint(buf, pos, end);
    } else if (wire === WT_I64) {
      vend = pos + 8;
    } else if (wire === WT_I32) {
      vend = pos + 4;
    } else if (wire === WT_LEN) {
      const [len, q] = readSmallVarint(buf, pos, end);
      vstart = q;
      vend = q + len;
    } else {
      throw new WireError(`wire type ${wire} at byte ${tagPos}`);
    }
    if (vend > end) throw new WireError(`field ${number} at byte ${tagPos} runs past its message`);
    if (wire === WT_I64 || wire === WT_I32) {
      value = 0n;
      for (let i = vend - 1; i >= vstart; i--) value = (value << 8n) | BigInt(buf[i]);
    }
    out.push({ number, wire, start: tagPos, vstart, vend, value });
    pos = vend;
  }
  return out;
}

/** A plain `Uint8Array` over the same bytes (a Node `Buffer`'s `slice` shares memory, a
 * `Uint8Array`'s copies: every input is seen as the latter). */
export function plain(b: Uint8Array): Uint8Array {
  return Object.getPrototypeOf(b) === Uint8Array.prototype ? b : new Uint8Array(b.buffer, b.byteOffset, b.length);
}

/** A copy of `b[start, end)`. */
export function copyOf(b: Uint8Array, start = 0, end = b.length): Uint8Array {
  const out = new Uint8Array(end - start);
  out.set(b.subarray(start, end));
  return out;
}

export function concat(parts: Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

export function key(number: number, wire: number): Uint8Array {
  return encodeVarint((BigInt(number) << 3n) | BigInt(wire));
}

/** A length-delimited field. */
export function lengthDelimited(number: number, data: Uint8Array): Uint8Array {
  return concat([key(number, WT_LEN), encodeVarint(data.length), data]);
}

export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

// `ignoreBOM`: a leading U+FEFF is a character of the string, not dropped.
const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
const utf8enc = new TextEncoder();

export function decodeUtf8(b: Uint8Array): string | null {
  try {
    return utf8.decode(b);
  } catch {
    return null;
  }
}

export function encodeUtf8(s: string): Uint8Array {
  return utf8enc.encode(s);
}

// ---------------------------------------------------------------- manifest messages

type Kind = "u32" | "u64" | "i32" | "string" | "bytes" | "ru64" | "rbytes" | "rstring" | `msg:${string}` | `rmsg:${string}`;

const SCHEMAS: Record<string, Array<[number, string, Kind]>> = {
  Envelope: [
    [1, "header", "bytes"], [2, "recipients", "bytes"], [3, "content_digest", "bytes"], [4, "macs", "rbytes"],
    [5, "signatures", "rmsg:Signature"], [6, "restored_tiers", "u32"], [7, "stored_digest", "bytes"],
    [8, "checksum", "bytes"],
  ],
  Header: [
    [1, "format_version", "u32"], [2, "tiers", "u32"], [3, "key_checks", "rbytes"], [4, "tensors", "rmsg:TensorEntry"],
    [5, "chunk_size", "u64"], [6, "external_files", "rstring"], [7, "tool", "string"], [8, "policy_summary", "string"],
    [9, "positions", "u32"], [10, "external_sizes", "ru64"], [11, "label_lock", "msg:LabelLock"],
    [12, "licence_authority", "bytes"], [13, "model_id", "string"], [14, "original_external_files", "rstring"],
    [15, "external_leaves", "bytes"], [16, "folder", "msg:FolderBinding"],
  ],
  FolderBinding: [[1, "folder_id", "bytes"], [2, "path", "string"], [3, "models", "rstring"], [4, "files", "rmsg:FolderFile"]],
  FolderFile: [[1, "path", "string"], [2, "length", "u64"], [3, "hash", "bytes"]],
  TensorEntry: [
    [1, "stream_id", "u64"], [2, "locator", "string"], [3, "name", "string"], [4, "data_type", "i32"],
    [5, "storage", "i32"], [6, "nbytes", "u64"], [7, "mode", "i32"], [8, "spans", "ru64"], [9, "tier", "u32"],
    [10, "op_type", "string"], [11, "role", "string"], [12, "subsequences", "u64"], [13, "chosen", "u64"],
    [14, "sealed_spans", "bytes"],
  ],
  LabelLock: [
    [1, "classes", "u32"], [2, "sealed_seed", "bytes"], [3, "tensors", "rmsg:LockedTensor"], [4, "outputs", "rmsg:LockedOutput"],
    [5, "node", "string"],
  ],
  LockedTensor: [
    [1, "locator", "string"], [2, "name", "string"], [3, "data_type", "i32"], [4, "dims", "ru64"], [5, "axis", "u32"],
    [6, "part", "string"],
  ],
  LockedOutput: [[1, "name", "string"], [2, "kind", "i32"]],
  Recipients: [[1, "stanzas", "rmsg:Stanza"]],
  Stanza: [[1, "kind", "string"], [2, "tier", "u32"], [3, "label", "string"], [4, "salt", "bytes"], [5, "kdf", "msg:KdfParams"], [6, "body", "bytes"]],
  KdfParams: [[1, "algorithm", "string"], [2, "salt", "bytes"], [3, "m_cost_kib", "u32"], [4, "t_cost", "u32"], [5, "p_cost", "u32"]],
  Signature: [[1, "public_key", "bytes"], [2, "signature", "bytes"]],
};

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type Message = Record<string, any>;

function defaultOf(kind: Kind): unknown {
  if (kind.startsWith("r")) return [];
  if (kind.startsWith("msg:")) return null;
  switch (kind) {
    case "u32":
    case "i32":
      return 0;
    case "u64":
      return 0n;
    case "string":
      return "";
    default:
      return new Uint8Array(0);
  }
}

function scalar(kind: string, f: Field, buf: Uint8Array, what: string): unknown {
  if (kind === "u32" || kind === "u64" || kind === "i32") {
    if (f.wire !== WT_VARINT) throw new Modified(`${what}: expected a varint`);
    if (kind === "u32") return Number(f.value & 0xffffffffn);
    if (kind === "i32") return Number(BigInt.asIntN(32, f.value));
    return f.value;
  }
  if (f.wire !== WT_LEN) throw new Modified(`${what}: expected a length-delimited field`);
  const data = buf.subarray(f.vstart, f.vend);
  if (kind === "string") {
    const s = decodeUtf8(data);
    if (s === null) throw new Modified(`${what}: invalid UTF-8`);
    return s;
  }
  return data;
}

/** Decodes a message leniently (as protobuf does); [`decodeCanonical`] then insists on
 * the canonical bytes, which refuses unknown and repeated singular fields. */
export function decode(name: string, buf: Uint8Array): Message {
  const schema = new Map(SCHEMAS[name].map(([n, f, k]) => [n, [f, k] as [string, Kind]]));
  const msg: Message = {};
  for (const [, f, k] of SCHEMAS[name]) msg[f] = defaultOf(k);
  let fields: Field[];
  try {
    fields = parseFields(buf);
  } catch (e) {
    throw new Modified(`${name}: ${(e as Error).message}`);
  }
  for (const f of fields) {
    const s = schema.get(f.number);
    if (!s) continue;
    const [fname, kind] = s;
    const what = `${name}.${fname}`;
    if (kind === "ru64") {
      if (f.wire === WT_VARINT) msg[fname].push(f.value);
      else if (f.wire === WT_LEN) {
        let p = f.vstart;
        while (p < f.vend) {
          try {
            const [v, q] = readVarint(buf, p, f.vend);
            msg[fname].push(v);
            p = q;
          } catch (e) {
            throw new Modified(`${what}: ${(e as Error).message}`);
          }
        }
      } else throw new Modified(`${what}: bad wire type`);
    } else if (kind.startsWith("rmsg:") || kind.startsWith("msg:")) {
      if (f.wire !== WT_LEN) throw new Modified(`${what}: expected a message`);
      const sub = decode(kind.split(":")[1], buf.subarray(f.vstart, f.vend));
      if (kind.startsWith("r")) msg[fname].push(sub);
      else msg[fname] = sub;
    } else if (kind.startsWith("r")) {
      msg[fname].push(scalar(kind.slice(1), f, buf, what));
    } else {
      msg[fname] = scalar(kind, f, buf, what);
    }
  }
  return msg;
}

/** The canonical encoding (§2): ascending field numbers, defaults omitted, repeated
 * scalars packed, minimal varints. */
export function encode(name: string, msg: Message): Uint8Array {
  const parts: Uint8Array[] = [];
  for (const [num, fname, kind] of SCHEMAS[name]) {
    const v = msg[fname];
    if (kind === "u32" || kind === "i32" || kind === "u64") {
      if (BigInt(v) !== 0n) parts.push(key(num, WT_VARINT), encodeVarint(BigInt(v)));
    } else if (kind === "string") {
      if (v) parts.push(lengthDelimited(num, encodeUtf8(v)));
    } else if (kind === "bytes") {
      if (v.length) parts.push(lengthDelimited(num, v));
    } else if (kind === "ru64") {
      if (v.length) parts.push(lengthDelimited(num, concat(v.map((x: bigint) => encodeVarint(x)))));
    } else if (kind === "rbytes") {
      for (const x of v) parts.push(lengthDelimited(num, x));
    } else if (kind === "rstring") {
      for (const x of v) parts.push(lengthDelimited(num, encodeUtf8(x)));
    } else if (kind.startsWith("rmsg:")) {
      for (const x of v) parts.push(lengthDelimited(num, encode(kind.slice(5), x)));
    } else if (kind.startsWith("msg:")) {
      if (v !== null) parts.push(lengthDelimited(num, encode(kind.slice(4), v)));
    }
  }
  return concat(parts);
}

export function decodeCanonical(name: string, buf: Uint8Array): Message {
  const msg = decode(name, buf);
  if (!bytesEqual(encode(name, msg), buf)) throw new Modified(`${name} is not canonically encoded`);
  return msg;
}

/** Turns a wire error met while walking the model into an invalid-model error. */
export function modelFields(buf: Uint8Array, start: number, end: number, what: string): Field[] {
  try {
    return parseFields(buf, start, end);
  } catch (e) {
    throw new InvalidModel(`${what}: ${(e as Error).message}`);
  }
}
