// ---------------------------------------------------------------- keys (§7, §8)

import { Decrypter } from "age-encryption";

import { AlreadyDecrypted, Modified, NotSigned, UsageError, WrongKey } from "../errors.js";
import {
  argon2id, constantTimeEqual, hkdf, hkdfExpand, hkdfExtract, hmacSha256, label, sha256, u32be, u64be, unwrapChaCha, verifyStrict,
} from "../crypto.js";
import { parseIdentities, parseKey, passphraseBytes, parseSigner, signerString } from "../keys.js";
import { grantedTier } from "../licence.js";
import { digestOfLeaves } from "../backend.js";
import { Tensor } from "../model.js";
import { bytesEqual, concat, Message } from "../wire.js";
import { KeyMaterial, MAX_COSTLY, Opened, ReadOptions } from "./opened.js";
import { checkListedLeaves, checkSpans } from "./shapes.js";
import { coveredLeaves } from "./digest.js";
import { transformed } from "./transform.js";

export class TierKeys {
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

export function keyCount(k: KeyMaterial): number {
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

export interface Unlocked {
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
export async function unlock(op: Opened, opts: ReadOptions): Promise<Unlocked> {
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
