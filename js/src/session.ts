// onnxruntime sessions from protected models, for onnxruntime-node and onnxruntime-web:
// the model is decrypted in memory and handed to `InferenceSession.create` as bytes, with
// its external data as `externalData`; session options that would make onnxruntime write
// the decrypted model (or an EP context holding it) to disk are refused.

import { UsageError } from "./errors.js";
import { decrypt, Decrypted, ReadOptions } from "./reader.js";

/** The part of onnxruntime's API this module uses (onnxruntime-node or onnxruntime-web). */
export interface OrtLike<S> {
  InferenceSession: { create(model: Uint8Array, options?: Record<string, unknown>): Promise<S> };
}

/** Config entries that write the model or an EP context to a file. */
const WRITING_CONFIG_KEYS = [
  "session.optimized_model_external_initializers_file_name",
  "ep.context_file_path",
];

/** Refuses session options that would write the decrypted model to disk:
 * `optimizedModelFilePath`, the optimized model's external initializers file, and EP
 * context dumps (`ep.context_enable`, `ep.context_file_path`). Profiling is allowed. */
export function checkSessionOptions(options: Record<string, unknown> | undefined): void {
  if (!options) return;
  if (options.optimizedModelFilePath) {
    throw new UsageError("optimizedModelFilePath would make onnxruntime write the decrypted model to disk; it is refused for protected models");
  }
  const entries = (options.extra as Record<string, unknown> | undefined) ?? {};
  const flat: Record<string, unknown> = {};
  const walk = (o: Record<string, unknown>, prefix: string) => {
    for (const [k, v] of Object.entries(o)) {
      const key = prefix ? `${prefix}.${k}` : k;
      if (v && typeof v === "object" && !(v instanceof Uint8Array)) walk(v as Record<string, unknown>, key);
      else flat[key] = v;
    }
  };
  walk(entries, "");
  for (const k of WRITING_CONFIG_KEYS) {
    if (flat[k]) throw new UsageError(`session config '${k}' would make onnxruntime write the decrypted model to disk; it is refused for protected models`);
  }
  const ctx = flat["ep.context_enable"];
  if (ctx !== undefined && String(ctx) !== "0") {
    throw new UsageError("session config 'ep.context_enable' would make onnxruntime write an EP context holding the decrypted model; it is refused for protected models");
  }
}

export interface SessionResult<S> {
  session: S;
  /** What the model was decrypted to (tier, bytes, tensors). */
  decrypted: Omit<Decrypted, "model" | "externalData">;
}

/** Decrypts `model` (verifying every byte first) and creates an onnxruntime session from
 * memory. `ort` is the onnxruntime module (`import * as ort from "onnxruntime-node"` or
 * `"onnxruntime-web"`); `sessionOptions` go to `InferenceSession.create`. The plaintext
 * buffers are handed to onnxruntime, which copies them into the session; this package
 * then zeroes its own copies. */
export async function createSession<S>(
  ort: OrtLike<S>, model: Uint8Array, opts: ReadOptions, sessionOptions?: Record<string, unknown>,
): Promise<SessionResult<S>> {
  checkSessionOptions(sessionOptions);
  return sessionOf(ort, await decrypt(model, opts), sessionOptions);
}

/** The session of a decrypted model; the decrypted buffers are zeroed once onnxruntime has
 * taken them (whether or not it succeeded). */
export async function sessionOf<S>(ort: OrtLike<S>, d: Decrypted, sessionOptions?: Record<string, unknown>): Promise<SessionResult<S>> {
  try {
    const externalData = [...d.externalData].map(([path, data]) => ({ path, data }));
    const options = externalData.length ? { ...sessionOptions, externalData } : { ...sessionOptions };
    const session = await ort.InferenceSession.create(d.model, options);
    return { session, decrypted: { tier: d.tier, tiers: d.tiers, tensors: d.tensors, decryptedBytes: d.decryptedBytes } };
  } finally {
    d.model.fill(0);
    for (const b of d.externalData.values()) b.fill(0);
  }
}
