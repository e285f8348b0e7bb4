// ---------------------------------------------------------------- §6 transforms

import { Modified } from "../errors.js";
import { blake3, constantTimeEqual, keyedSwaps, Keystream, label, u32be, u64be } from "../crypto.js";
import { classOrder, HeaderLock, unlockElements } from "../lock.js";
import { digestOfLeaves, Piece } from "../backend.js";
import { backend } from "#backend";
import {
  applyEdits, Edit, elementBytes, elementSize, elementViews, FP_MASKS, locationEdit, Tensor, VARINT_STORAGES, varintEdits,
} from "../model.js";
import { concat, Message } from "../wire.js";
import { MODE_CTR, MODE_FP, MODE_DP, Opened } from "./opened.js";
import { checkListedLeaves } from "./shapes.js";
import type { TierKeys } from "./unlock.js";

/** What [`transformed`] does besides the spans: with `rename` (location → original name,
 * §12 step 7) every external tensor's location is rewritten, with `unlockClasses` every
 * locked tensor's classes go back in true order (§15), and with `stored` the digest of the
 * files as given must be it (§12 step 6; on a mismatch the copies are zeroed, nothing is
 * returned). */
export interface Transform {
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
export async function transformed(
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
