// The label lock (docs/format.md §15): a classifier's output layer stored with its classes in
// a keyed order. Its header field is checked against the model without a key; a full
// decryption, once the content matches its digest (§12 step 6), opens the seed with the
// tier-1 key, derives the class order and puts every
// locked tensor's class slices back, so the result is the original model byte for byte.

import { concat, hkdfExpand, hkdfExtract, keyedSwaps, Keystream, label, sha256, u32be, unwrapChaCha } from "./crypto.js";
import { Modified } from "./errors.js";
import { BITS, STRING, Tensor, VARINT_STORAGES, varintWidth } from "./model.js";
import { Message } from "./wire.js";

const MIN_CLASSES = 3;
const MAX_CLASSES = 1 << 24;
const MAX_LOCKED_TENSORS = 16;
const SEALED_SEED_LEN = 48;
const MAX_DRAWS = 256;
const LOCK_LABEL = "onnx-protect/v2/label-lock";
const PERMUTATION_LABEL = "onnx-protect/v2/label-lock/permutation";
const LOCATOR = /^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(\/(0|[1-9][0-9]*)\.(0|[1-9][0-9]*))*$/;

/** A header's lock matched to the model. */
export interface HeaderLock {
  classes: number;
  sealedSeed: Uint8Array;
  /** Each locked tensor and its class axis. */
  tensors: Array<{ tensor: Tensor; axis: number }>;
}

/** §15 rules, checked at §12 step 3 without a key ("modified" on any failure): the lock of
 * `header` against the model's tensors (by locator) and its main graph's outputs; `null`
 * when the header has no lock. */
export function readLock(header: Message, byLocator: Map<string, Tensor>, graphOutputs: string[]): HeaderLock | null {
  const lock = header.label_lock as Message | null;
  if (!lock) return null;
  const bad = (m: string) => new Modified(`label lock: ${m}`);
  const classes = lock.classes as number;
  if (classes < MIN_CLASSES || classes > MAX_CLASSES) throw bad(`${classes} classes (${MIN_CLASSES} to ${MAX_CLASSES} allowed)`);
  if (lock.sealed_seed.length !== SEALED_SEED_LEN) throw bad(`the sealed seed is ${lock.sealed_seed.length} bytes, not ${SEALED_SEED_LEN}`);
  if (!lock.tensors.length || lock.tensors.length > MAX_LOCKED_TENSORS || !lock.outputs.length) {
    throw bad(`${lock.tensors.length} tensors and ${lock.outputs.length} outputs (1 to ${MAX_LOCKED_TENSORS} tensors and at least one output needed)`);
  }
  const seen = new Set<Tensor>();
  const tensors: HeaderLock["tensors"] = [];
  for (const e of lock.tensors as Message[]) {
    if (!LOCATOR.test(e.locator)) throw bad(`tensor '${e.name}': locator '${e.locator}' is not written as §4 says`);
    const t = byLocator.get(e.locator);
    if (!t) throw bad(`locked tensor '${e.name}' at ${e.locator} is not in the model`);
    const dims = e.dims as bigint[];
    if (t.name !== e.name || t.dataType !== e.data_type || t.dims.length !== dims.length || t.dims.some((d, i) => d !== dims[i])) {
      throw bad(`locked tensor '${e.name}' at ${e.locator} is not the one the header records`);
    }
    if (dims[e.axis] !== BigInt(classes)) throw bad(`tensor '${e.name}' has no axis ${e.axis} of ${classes} classes`);
    if (seen.has(t)) throw bad(`tensor '${e.name}' is named twice`);
    const refusal = storageRefusal(t);
    if (refusal) throw bad(`tensor '${e.name}' at ${e.locator} cannot be locked: ${refusal}`);
    seen.add(t);
    tensors.push({ tensor: t, axis: e.axis });
  }
  const outputs = new Set(graphOutputs);
  for (const o of lock.outputs as Message[]) {
    if (o.kind !== 1 && o.kind !== 2) throw bad(`output '${o.name}' has unknown kind ${o.kind}`);
    if (!outputs.has(o.name)) throw bad(`'${o.name}' is not an output of the graph`);
  }
  return { classes, sealedSeed: lock.sealed_seed, tensors };
}

/** Why the element bytes of `t` could not be stored back once its class slices moved
 * (§15): it holds strings, it has no stored data, or it is a 6-bit float in `int32_data`
 * (whose values map to no whole bytes); `null` when they can. */
export function storageRefusal(t: Tensor): string | null {
  if (t.dataType === STRING) return "it holds strings";
  if (t.storage === null) return "it has no stored data";
  if (VARINT_STORAGES.has(t.storage) && varintWidth(t.dataType) === null) return `data_type ${t.dataType} in int32_data is not supported`;
  return null;
}

/** The class order `p` (locked position `q` holds true class `p[q]`): the seed opened with
 * tier 1's `PRK`, then the first derangement among the keyed shuffles of §15. */
export async function classOrder(lock: HeaderLock, prk1: Uint8Array): Promise<Uint32Array> {
  const kLock = hkdfExpand(sha256, prk1, label(LOCK_LABEL), 32);
  const seed = unwrapChaCha(kLock, lock.sealedSeed, new Uint8Array(12), label(LOCK_LABEL));
  if (!seed || seed.length !== 32) throw new Modified("the sealed seed of the label lock does not open");
  const prk = hkdfExtract(sha256, seed, label(LOCK_LABEL));
  seed.fill(0);
  const c = lock.classes;
  for (let a = 0; a < MAX_DRAWS; a++) {
    const ks = await Keystream.of(hkdfExpand(sha256, prk, concat([label(PERMUTATION_LABEL), u32be(c), u32be(a)]), 32));
    const p = Uint32Array.from({ length: c }, (_, i) => i);
    for (const [i, j] of await keyedSwaps(ks, 0n, c, false)) [p[i], p[j]] = [p[j], p[i]];
    if (p.every((v, q) => v !== q)) return p;
  }
  throw new Modified(`label lock: no derangement among ${MAX_DRAWS} draws`);
}

/** The element bytes `bytes` (raw_data layout) of a locked tensor with its class slices
 * back in true order: seen as `[outer, C, inner]` around `axis`, the stored slice `q` goes
 * to position `p[q]`. Elements move whole (sub-byte types bit by bit, padding kept). */
export function unlockElements(bytes: Uint8Array, t: Tensor, axis: number, p: Uint32Array): Uint8Array {
  const bits = BITS[t.dataType];
  const refusal = storageRefusal(t);
  if (refusal) throw new Modified(`label lock: tensor '${t.name}' cannot be locked: ${refusal}`);
  const dims = t.dims.map(Number);
  const c = p.length;
  const outer = dims.slice(0, axis).reduce((x, y) => x * y, 1);
  const inner = dims.slice(axis + 1).reduce((x, y) => x * y, 1);
  const out = Uint8Array.from(bytes);
  if (bits % 8 === 0) {
    const block = inner * (bits / 8);
    for (let o = 0; o < outer; o++) {
      for (let q = 0; q < c; q++) out.set(bytes.subarray((o * c + q) * block, (o * c + q + 1) * block), (o * c + p[q]) * block);
    }
    return out;
  }
  for (let o = 0; o < outer; o++) {
    for (let q = 0; q < c; q++) {
      for (let i = 0; i < inner; i++) {
        const from = ((o * c + q) * inner + i) * bits, to = ((o * c + p[q]) * inner + i) * bits;
        for (let k = 0; k < bits; k++) {
          const bit = (bytes[(from + k) >> 3] >> ((from + k) & 7)) & 1;
          const at = (to + k) >> 3, sh = (to + k) & 7;
          out[at] = (out[at] & ~(1 << sh)) | (bit << sh);
        }
      }
    }
  }
  return out;
}
