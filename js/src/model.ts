// Walking an ONNX model (docs/format.md §4) and the element bytes of its tensors (§5).

import { InvalidModel } from "./errors.js";
import {
  concat, copyOf, decodeUtf8, encodeUtf8, encodeVarint, Field, lengthDelimited, modelFields, readVarint, WT_I32, WT_I64, WT_LEN,
  WT_VARINT,
} from "./wire.js";

/** Bits per element of every data type code (§5); STRING (8) has none. */
export const BITS: Record<number, number> = {
  1: 32, 2: 8, 3: 8, 4: 16, 5: 16, 6: 32, 7: 64, 8: 0, 9: 8, 10: 16, 11: 64, 12: 32, 13: 64, 14: 64, 15: 128,
  16: 16, 17: 8, 18: 8, 19: 8, 20: 8, 21: 4, 22: 4, 23: 4, 24: 8, 25: 2, 26: 2, 27: 6, 28: 6,
};
export const STRING = 8;
const FLOAT6 = new Set([27, 28]);
const SIGN_EXTENDED = new Set([3, 5, 6, 7]);

export const S_RAW = 1, S_FLOAT = 2, S_INT32 = 3, S_INT64 = 4, S_DOUBLE = 5, S_UINT64 = 6, S_EXTERNAL = 7;
export const VARINT_STORAGES = new Set([S_INT32, S_INT64, S_UINT64]);

// TensorProto fields.
const TP = { dims: 1, dataType: 2, float: 4, int32: 5, string: 6, int64: 7, name: 8, raw: 9, double: 10, uint64: 11, externalData: 13, dataLocation: 14 };
const TYPED: Record<number, number> = { 4: S_FLOAT, 5: S_INT32, 7: S_INT64, 10: S_DOUBLE, 11: S_UINT64 };
const FIELD_OF_STORAGE: Record<number, number> = { [S_FLOAT]: 4, [S_INT32]: 5, [S_INT64]: 7, [S_DOUBLE]: 10, [S_UINT64]: 11, [S_RAW]: 9 };

/** The most levels graphs may nest (§4). */
export const MAX_GRAPH_DEPTH = 64;

/** Format-preserving masks (§6), little-endian bytes of one element. */
export const FP_MASKS: Record<number, Uint8Array> = (() => {
  const m: Record<number, number[]> = {
    1: [0xff, 0xff, 0x7f, 0x80], 14: [0xff, 0xff, 0x7f, 0x80],
    11: [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x80], 15: [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x80],
    10: [0xff, 0x83], 16: [0x7f, 0x80], 17: [0x87], 18: [0x87], 19: [0x83], 20: [0x83], 23: [0x99], 9: [0x01],
  };
  for (const code of [2, 3, 21, 22, 25, 26]) m[code] = [0xff];
  for (const code of [4, 5]) m[code] = [0xff, 0xff];
  for (const code of [6, 12]) m[code] = [0xff, 0xff, 0xff, 0xff];
  for (const code of [7, 13]) m[code] = new Array(8).fill(0xff);
  const out: Record<number, Uint8Array> = {};
  for (const [k, v] of Object.entries(m)) out[Number(k)] = Uint8Array.from(v);
  return out;
})();

export function elementSize(dataType: number): number {
  return Math.ceil(BITS[dataType] / 8);
}

/** ONNX's typed field of a data type (§5), as a storage kind; null for STRING. */
function typedStorageOf(dataType: number): number | null {
  if (dataType === 1 || dataType === 14) return S_FLOAT;
  if (dataType === 11 || dataType === 15) return S_DOUBLE;
  if (dataType === 7) return S_INT64;
  if (dataType === 12 || dataType === 13) return S_UINT64;
  if (dataType === STRING) return null;
  return S_INT32;
}

/** `w` of §5: element bytes per varint-stored value; null for FLOAT6 and invalid pairs. */
export function varintWidth(dataType: number): number | null {
  if (FLOAT6.has(dataType)) return null;
  const bits = BITS[dataType];
  if (bits <= 8) return 1;
  if (bits === 16) return 2;
  if (dataType === 6 || dataType === 12) return 4;
  if (dataType === 7 || dataType === 13) return 8;
  return null;
}

export interface Tensor {
  locator: string;
  /** The length-delimited fields from the top-level message down to the TensorProto. */
  chain: Field[];
  name: string;
  dataType: number;
  dims: bigint[];
  /** Storage kind (§5), null when it holds no element bytes. */
  storage: number | null;
  nbytes: number;
  /** raw_data, float_data, double_data: (offset in the model, length) of each piece. */
  segments: Array<[number, number]>;
  varintValues: bigint[] | null;
  external: { location: string; offset: number } | null;
}

/** The external data files of a model, by `location`. */
export type ExternalFiles = Map<string, Uint8Array>;

/** Refuses a `location` that is not a plain relative path inside the model's directory (§5). */
export function checkLocation(location: string): void {
  if (!location) throw new InvalidModel("external data location is empty");
  if (location.includes("\0")) throw new InvalidModel(`external data location '${location.replace(/\0/g, "\\0")}' contains a NUL character`);
  if (/^[/\\]/.test(location) || /^[A-Za-z]:/.test(location)) throw new InvalidModel(`external data location '${location}' is absolute`);
  const parts = location.split(/[/\\]/);
  if (parts.includes("..")) throw new InvalidModel(`external data location '${location}' has a '..' component`);
  // Empty and "." components name nothing (format.md §5: "d//w.bin" is "d/w.bin"); a
  // location made only of them names no file.
  if (!parts.some((p) => p !== "" && p !== ".")) throw new InvalidModel(`external data location '${location}' names no file`);
}

const CHILDREN: Record<string, Record<number, string>> = {
  model: { 7: "graph", 25: "function", 20: "training" },
  graph: { 1: "node", 5: "tensor", 15: "sparse" },
  node: { 5: "attr" },
  attr: { 5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse" },
  sparse: { 1: "tensor", 2: "tensor" },
  function: { 7: "node" },
  training: { 1: "graph", 2: "graph" },
};
const SINGULAR = new Set(["model/7", "attr/5", "attr/6", "attr/22", "sparse/1", "sparse/2", "training/1", "training/2"]);

function str(buf: Uint8Array, f: Field, what: string): string {
  if (f.wire !== WT_LEN) throw new InvalidModel(`${what}: expected a string`);
  const s = decodeUtf8(buf.subarray(f.vstart, f.vend));
  if (s === null) throw new InvalidModel(`${what}: invalid UTF-8`);
  return s;
}

function uint(f: Field, what: string): bigint {
  if (f.wire !== WT_VARINT) throw new InvalidModel(`${what}: expected a varint`);
  return f.value;
}

function packed(buf: Uint8Array, fields: Field[], what: string): bigint[] {
  const out: bigint[] = [];
  for (const f of fields) {
    if (f.wire === WT_VARINT) out.push(f.value);
    else if (f.wire === WT_LEN) {
      let p = f.vstart;
      while (p < f.vend) {
        try {
          const [v, q] = readVarint(buf, p, f.vend);
          out.push(v);
          p = q;
        } catch (e) {
          throw new InvalidModel(`${what}: ${(e as Error).message}`);
        }
      }
    } else throw new InvalidModel(`${what}: bad wire type`);
  }
  return out;
}

function numel(dims: bigint[]): bigint {
  return dims.reduce((a, d) => a * d, 1n);
}

function nbytesOf(dims: bigint[], dataType: number): number {
  const n = (numel(dims) * BigInt(BITS[dataType]) + 7n) / 8n;
  if (n > BigInt(Number.MAX_SAFE_INTEGER)) throw new InvalidModel("a tensor's size overflows");
  return Number(n);
}

/** Parses and checks the TensorProto at the end of `chain` (§4, §5). */
function readTensor(buf: Uint8Array, chain: Field[], locator: string, external: ExternalFiles | null): Tensor {
  const self = chain[chain.length - 1];
  const by = new Map<number, Field[]>();
  for (const f of modelFields(buf, self.vstart, self.vend, locator)) {
    if (!by.has(f.number)) by.set(f.number, []);
    by.get(f.number)!.push(f);
  }
  const last = (n: number) => by.get(n)![by.get(n)!.length - 1];
  const name = by.has(TP.name) ? str(buf, last(TP.name), `${locator} name`) : "";
  const dataType = by.has(TP.dataType) ? Number(BigInt.asIntN(64, uint(last(TP.dataType), `${locator} data_type`))) : 0;
  const at = `${locator} ('${name}')`;
  if (!(dataType in BITS)) throw new InvalidModel(`${at}: data_type ${dataType} is unknown`);
  const dims = packed(buf, by.get(TP.dims) ?? [], `${locator} dims`).map((d) => BigInt.asIntN(64, d));
  if (dims.some((d) => d < 0n)) throw new InvalidModel(`${at}: negative dimension`);
  const isExternal = by.has(TP.dataLocation) && uint(last(TP.dataLocation), `${locator} data_location`) === 1n;
  // A typed field that occurs with an empty payload stores nothing (as in ONNX).
  const present = [TP.raw, TP.float, TP.int32, TP.string, TP.int64, TP.double, TP.uint64].filter((n) => {
    const fs = by.get(n);
    if (!fs) return false;
    if (n === TP.raw) return true;
    return fs.some((f) => f.wire !== WT_LEN || f.vend > f.vstart);
  });
  if (present.length + (isExternal ? 1 : 0) > 1) throw new InvalidModel(`${at}: data stored in more than one way`);
  const t: Tensor = { locator, chain, name, dataType, dims, storage: null, nbytes: 0, segments: [], varintValues: null, external: null };
  if (dataType === STRING) {
    if ((present.length && present[0] !== TP.string) || isExternal) throw new InvalidModel(`${at}: STRING tensor stores non-string data`);
    return t;
  }
  t.nbytes = nbytesOf(dims, dataType);
  if (present.length === 1 && present[0] === TP.string) throw new InvalidModel(`${at}: string_data in a non-STRING tensor`);
  if (isExternal) return readExternal(buf, by, t, at, external);
  if (!present.length) {
    if (numel(dims) !== 0n) throw new InvalidModel(`${at}: ${numel(dims)} elements but no data`);
    return t;
  }
  const fno = present[0];
  let stored: number;
  if (fno === TP.raw) {
    const f = last(TP.raw);
    if (f.wire !== WT_LEN) throw new InvalidModel(`${at}: raw_data is not length-delimited`);
    t.storage = S_RAW;
    t.segments = [[f.vstart, f.vend - f.vstart]];
    stored = f.vend - f.vstart;
  } else {
    t.storage = TYPED[fno];
    if (typedStorageOf(dataType) !== t.storage) throw new InvalidModel(`${at}: its typed field does not belong to data_type ${dataType}`);
    if (t.storage === S_FLOAT || t.storage === S_DOUBLE) {
      const width = t.storage === S_FLOAT ? 4 : 8;
      const unpacked = width === 4 ? WT_I32 : WT_I64;
      for (const f of by.get(fno)!) {
        if (f.wire === WT_LEN) {
          if ((f.vend - f.vstart) % width) throw new InvalidModel(`${at}: packed payload not a multiple of ${width}`);
          if (f.vend > f.vstart) t.segments.push([f.vstart, f.vend - f.vstart]);
        } else if (f.wire === unpacked) t.segments.push([f.vstart, width]);
        else throw new InvalidModel(`${at}: typed field with a wrong wire type`);
      }
      stored = t.segments.reduce((a, [, n]) => a + n, 0);
    } else {
      t.varintValues = packed(buf, by.get(fno)!, locator);
      const w = varintWidth(dataType);
      if (w === null) {
        if (BigInt(t.varintValues.length) !== numel(dims)) throw new InvalidModel(`${at}: ${t.varintValues.length} values for ${numel(dims)} elements`);
        return t;
      }
      stored = t.varintValues.length * w;
    }
  }
  if (stored !== t.nbytes) throw new InvalidModel(`${at}: stored data is ${stored} bytes, dims and data_type give ${t.nbytes}`);
  return t;
}

function readExternal(buf: Uint8Array, by: Map<number, Field[]>, t: Tensor, at: string, external: ExternalFiles | null): Tensor {
  t.storage = S_EXTERNAL;
  const kv = new Map<string, string>();
  for (const f of by.get(TP.externalData) ?? []) {
    if (f.wire !== WT_LEN) throw new InvalidModel(`${at}: external_data is not a message`);
    let k = "", v = "";
    for (const g of modelFields(buf, f.vstart, f.vend, `${at} external_data`)) {
      if (g.number === 1) k = str(buf, g, `${at} external_data key`);
      else if (g.number === 2) v = str(buf, g, `${at} external_data value`);
    }
    kv.set(k, v);
  }
  const location = kv.get("location");
  if (location === undefined) throw new InvalidModel(`${at}: external data without a location`);
  checkLocation(location);
  for (const k of ["offset", "length"]) {
    const v = kv.get(k);
    if (v !== undefined && !/^[0-9]+$/.test(v)) throw new InvalidModel(`${at}: external ${k} '${v}' is not decimal digits`);
  }
  const data = external?.get(location);
  if (!data) throw new InvalidModel(`${at}: external data file '${location}' is missing`);
  const offset = Number(kv.get("offset") ?? "0");
  const length = kv.has("length") ? Number(kv.get("length")) : data.length - offset;
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset > data.length || offset + length > data.length) {
    throw new InvalidModel(`${at}: external range past the end of '${location}'`);
  }
  if (length !== t.nbytes) throw new InvalidModel(`${at}: external length ${length} but dims give ${t.nbytes} bytes`);
  t.external = { location, offset };
  return t;
}

/** Every tensor of the model in `buf` (§4 places), checked, in file order. */
export function walk(buf: Uint8Array, external: ExternalFiles | null): Tensor[] {
  const out: Tensor[] = [];
  type Item = { kind: string; chain: Field[]; start: number; end: number; prefix: string; depth: number };
  const stack: Item[] = [{ kind: "model", chain: [], start: 0, end: buf.length, prefix: "", depth: 0 }];
  while (stack.length) {
    const it = stack.pop()!;
    if (it.kind === "tensor") {
      out.push(readTensor(buf, it.chain, it.prefix, external));
      continue;
    }
    const depth = it.kind === "graph" ? it.depth + 1 : it.depth;
    if (depth > MAX_GRAPH_DEPTH) throw new InvalidModel(`graphs nest deeper than ${MAX_GRAPH_DEPTH} levels at ${it.prefix}`);
    const children = CHILDREN[it.kind];
    const counts = new Map<number, number>();
    const todo: Item[] = [];
    for (const f of modelFields(buf, it.start, it.end, it.prefix || "model")) {
      const n = counts.get(f.number) ?? 0;
      counts.set(f.number, n + 1);
      const kind = children[f.number];
      if (!kind) continue;
      if (f.wire !== WT_LEN) throw new InvalidModel(`${it.prefix || "model"}: field ${f.number} is not a message`);
      if (SINGULAR.has(`${it.kind}/${f.number}`) && n) throw new InvalidModel(`${it.prefix || "model"}: field ${f.number} occurs more than once`);
      const prefix = it.prefix ? `${it.prefix}/${f.number}.${n}` : `${f.number}.${n}`;
      todo.push({ kind, chain: [...it.chain, f], start: f.vstart, end: f.vend, prefix, depth });
    }
    for (let i = todo.length - 1; i >= 0; i--) stack.push(todo[i]);
  }
  return out;
}

/** The element bytes of a tensor (§5), a copy. */
export function elementBytes(buf: Uint8Array, t: Tensor, external: ExternalFiles): Uint8Array {
  if (t.storage === S_EXTERNAL) {
    const d = external.get(t.external!.location)!;
    return copyOf(d, t.external!.offset, t.external!.offset + t.nbytes);
  }
  if (t.storage !== null && VARINT_STORAGES.has(t.storage)) {
    const w = varintWidth(t.dataType)!;
    const out = new Uint8Array(t.varintValues!.length * w);
    t.varintValues!.forEach((v, i) => {
      for (let b = 0; b < w; b++) out[i * w + b] = Number((v >> BigInt(8 * b)) & 0xffn);
    });
    return out;
  }
  return concat(t.segments.map(([o, n]) => buf.subarray(o, o + n)));
}

/** The views of the element bytes `[a, b)` in their stores (model or external file), in
 * order, for in-place changes of raw, float, double and external tensors. */
export function elementViews(buf: Uint8Array, t: Tensor, external: ExternalFiles, a: number, b: number): Uint8Array[] {
  if (t.storage === S_EXTERNAL) {
    const d = external.get(t.external!.location)!;
    return [d.subarray(t.external!.offset + a, t.external!.offset + b)];
  }
  const out: Uint8Array[] = [];
  let pos = 0;
  for (const [o, n] of t.segments) {
    const lo = Math.max(a, pos), hi = Math.min(b, pos + n);
    if (lo < hi) out.push(buf.subarray(o + lo - pos, o + hi - pos));
    pos += n;
  }
  return out;
}

/** A change of the bytes `[start, end)` of the message at the end of `chain` (the whole
 * model for an empty chain) to `bytes`; [`applyEdits`] re-encodes the length prefixes of
 * `chain`. */
export interface Edit {
  chain: Field[];
  start: number;
  end: number;
  bytes: Uint8Array;
}

/** §5: a varint-stored tensor's values replaced by `data`: one packed field at the first
 * occurrence's place, the other occurrences removed. */
export function varintEdits(buf: Uint8Array, t: Tensor, data: Uint8Array): Edit[] {
  const w = varintWidth(t.dataType)!;
  const values: Uint8Array[] = [];
  for (let i = 0; i < data.length; i += w) {
    let v = 0n;
    for (let b = w - 1; b >= 0; b--) v = (v << 8n) | BigInt(data[i + b]);
    if (SIGN_EXTENDED.has(t.dataType) && v >> BigInt(8 * w - 1)) v -= 1n << BigInt(8 * w);
    values.push(encodeVarint(v));
  }
  const fno = FIELD_OF_STORAGE[t.storage!];
  const self = t.chain[t.chain.length - 1];
  const edits: Edit[] = [];
  for (const f of modelFields(buf, self.vstart, self.vend, t.locator)) {
    if (f.number !== fno) continue;
    const bytes = edits.length ? new Uint8Array(0) : lengthDelimited(fno, concat(values));
    edits.push({ chain: t.chain, start: f.start, end: f.vend, bytes });
  }
  return edits;
}

/** §12 step 7: an external tensor's `location` value written as `name`: the last `value`
 * field of its last `external_data` entry keyed `location` becomes `0x12`, the minimal
 * varint of the name's length, the name. */
export function locationEdit(buf: Uint8Array, t: Tensor, name: string): Edit {
  const self = t.chain[t.chain.length - 1];
  let entry: Field | null = null;
  for (const f of modelFields(buf, self.vstart, self.vend, t.locator)) {
    if (f.number !== TP.externalData || f.wire !== WT_LEN) continue;
    const keys = modelFields(buf, f.vstart, f.vend, t.locator).filter((g) => g.number === 1);
    if (keys.length && decodeUtf8(buf.subarray(keys[keys.length - 1].vstart, keys[keys.length - 1].vend)) === "location") entry = f;
  }
  const values = entry ? modelFields(buf, entry.vstart, entry.vend, t.locator).filter((g) => g.number === 2) : [];
  if (!entry || !values.length) throw new InvalidModel(`${t.locator}: external data without a location`);
  const value = values[values.length - 1];
  return { chain: [...t.chain, entry], start: value.start, end: value.vend, bytes: lengthDelimited(2, encodeUtf8(name)) };
}

/** Whether a tensor (by its chain of fields from the model down) belongs to a subgraph (a
 * graph-valued attribute: `If` branches, `Loop`/`Scan` bodies), a function body or a
 * training graph rather than the main graph. */
function nested(chain: Field[]): boolean {
  return chain[0].number !== 7 || (chain.length > 3 && (chain[3].number === 6 || chain[3].number === 11));
}

/** The model with the external data of every tensor outside the main graph written into
 * it as `raw_data` (its `external_data` and `data_location` fields removed): onnxruntime
 * looks for those tensors' files on disk, never among the files handed to it in memory.
 * `buf` itself when there is none (else a new buffer, holding those tensors' bytes). */
export function inlineNested(buf: Uint8Array, external: ExternalFiles): Uint8Array {
  const edits: Edit[] = [];
  for (const t of walk(buf, external)) {
    if (t.storage !== S_EXTERNAL || !nested(t.chain)) continue;
    const self = t.chain[t.chain.length - 1];
    let data: Uint8Array | null = elementBytes(buf, t, external);
    for (const f of modelFields(buf, self.vstart, self.vend, t.locator)) {
      if (f.number !== TP.externalData && f.number !== TP.dataLocation) continue;
      edits.push({ chain: t.chain, start: f.start, end: f.vend, bytes: data ? lengthDelimited(TP.raw, data) : new Uint8Array(0) });
      data = null;
    }
  }
  return applyEdits(buf, edits);
}

/** The model with every edit made (edits never overlap), each length prefix enclosing an
 * edit re-encoded as a minimal varint, every other byte as it was. One pass. */
export function applyEdits(buf: Uint8Array, edits: Edit[]): Uint8Array {
  return edits.length ? concat(emit(buf, 0, buf.length, 0, edits)) : buf;
}

function emit(buf: Uint8Array, s: number, e: number, depth: number, edits: Edit[]): Uint8Array[] {
  // Each edit as seen at this level: its own range (depth reached), else the field holding it.
  const items = edits.map((ed) => (depth < ed.chain.length
    ? { start: ed.chain[depth].start, end: ed.chain[depth].vend, field: ed.chain[depth], ed }
    : { start: ed.start, end: ed.end, field: null, ed }));
  items.sort((a, b) => a.start - b.start || a.end - b.end);
  const parts: Uint8Array[] = [];
  let pos = s;
  for (let i = 0; i < items.length;) {
    const it = items[i];
    if (it.start < pos) throw new Error("overlapping model edits");
    parts.push(buf.subarray(pos, it.start));
    if (it.field === null) {
      parts.push(it.ed.bytes);
      i++;
    } else {
      const f = it.field;
      const group: Edit[] = [];
      for (; i < items.length && items[i].field !== null && items[i].start === f.start; i++) group.push(items[i].ed);
      const body = concat(emit(buf, f.vstart, f.vend, depth + 1, group));
      const [, afterKey] = readVarint(buf, f.start, f.vstart);
      parts.push(buf.subarray(f.start, afterKey), encodeVarint(body.length), body);
    }
    pos = it.end;
  }
  parts.push(buf.subarray(pos, e));
  return parts;
}

/** The output names of the main graph (`ModelProto.graph` → `GraphProto.output` →
 * `ValueInfoProto.name`). */
export function graphOutputs(buf: Uint8Array): string[] {
  const out: string[] = [];
  for (const g of modelFields(buf, 0, buf.length, "model")) {
    if (g.number !== 7 || g.wire !== WT_LEN) continue;
    for (const o of modelFields(buf, g.vstart, g.vend, "graph")) {
      if (o.number !== 12 || o.wire !== WT_LEN) continue;
      let name = "";
      for (const f of modelFields(buf, o.vstart, o.vend, "graph output")) if (f.number === 1) name = str(buf, f, "graph output name");
      out.push(name);
    }
  }
  return out;
}
