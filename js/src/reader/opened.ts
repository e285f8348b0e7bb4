import { u64be } from "../crypto.js";
import { KeyInput } from "../keys.js";
import { LicenceOptions } from "../licence.js";
import { HeaderLock } from "../lock.js";
import { ExternalFiles, Tensor } from "../model.js";
import { concat, Message } from "../wire.js";

export const ENTRY_KEY = "onnx-protect/v2";
export const MODE_CTR = 1, MODE_FP = 2, MODE_DP = 3;
export const MAX_ENTRIES = 1 << 20;
export const MAX_STANZAS = 1024;
export const MAX_RECIPIENTS = 1 << 20;
export const MAX_SIGNATURES = 64;
/** Stanza kinds whose opening costs seconds: at most this many of each (§8). */
export const COSTLY = new Set(["passphrase", "pkcs11", "command", "age-plugin", "tpm"]);
export const MAX_COSTLY = 8;
export const MAX_AGE_BODY = 1024;
export const MAX_MODEL_ID_LEN = 1024;

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

export interface Entry {
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
