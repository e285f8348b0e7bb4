// onnxruntime sessions from protected models, for onnxruntime-node and onnxruntime-web:
// the model is decrypted in memory and handed to `InferenceSession.create` as bytes, with
// its external data as `externalData`; session options that would make onnxruntime write
// the decrypted model (or an EP context holding it) to disk are refused.

import { KeyError, UsageError } from "./errors.js";
import { inlineNested } from "./model.js";
import { decrypt, Decrypted, keepsLabelLock, ReadOptions } from "./reader.js";

/** External data filled on demand (the native engine's region, native.ts `Region`). */
export interface Filled {
  settle(): void;
  trim(): void;
}

/** The part of onnxruntime's API this module uses (onnxruntime-node or onnxruntime-web). */
export interface OrtLike<S> {
  InferenceSession: { create(model: Uint8Array, options?: Record<string, unknown>): Promise<S> };
}

/** Config entries that write the model or an EP context to a file. */
const WRITING_CONFIG_KEYS = [
  "session.optimized_model_external_initializers_file_name",
  "ep.context_file_path",
];

/** Execution providers' options that make the provider write a compiled copy of the model
 * (with its weights) to disk, as docs/runtime.md lists them: by provider, its names (the
 * onnxruntime JavaScript name, the provider's class name, lower case) and the options. */
const PROVIDER_CACHES: Array<{ provider: string; names: string[]; options: string[] }> = [
  { provider: "TensorRT", names: ["tensorrt", "tensorrtexecutionprovider"], options: ["trt_engine_cache_enable", "trt_dump_ep_context_model", "trt_timing_cache_enable"] },
  { provider: "NvTensorRTRTX", names: ["nvtensorrtrtx", "nvtensorrtrtxexecutionprovider"], options: ["nv_dump_ep_context_model", "ep.context_enable"] },
  { provider: "OpenVINO", names: ["openvino", "openvinoexecutionprovider"], options: ["cache_dir"] },
  { provider: "CoreML", names: ["coreml", "coremlexecutionprovider"], options: ["ModelCacheDirectory"] },
  { provider: "QNN", names: ["qnn", "qnnexecutionprovider"], options: ["qnn_context_cache_enable"] },
  { provider: "MIGraphX", names: ["migraphx", "migraphxexecutionprovider"], options: ["migraphx_save_compiled_model"] },
];

/** An option's name as compared: lower case, without `_` and `.` (`trt_engine_cache_enable` and
 * `trtEngineCacheEnable` are one option). */
const fold = (name: string) => name.toLowerCase().replace(/[_.]/g, "");

/** The provider option `option` (folded) of the provider named `name`, if it is one that
 * writes to disk. */
function writingOption(name: string, option: string): { provider: string; option: string } | null {
  const p = PROVIDER_CACHES.find((c) => c.names.includes(name.toLowerCase()));
  const o = p?.options.find((k) => fold(k) === fold(option));
  return p && o ? { provider: p.provider, option: o } : null;
}

/** Off, as onnxruntime reads a provider option: unset, empty, 0 or false. */
const off = (v: unknown) => v === undefined || v === null || v === "" || v === 0 || v === false || v === "0" || /^false$/i.test(String(v));

/** Refuses session options that would write the decrypted model to disk:
 * `optimizedModelFilePath`, the optimized model's external initializers file, EP context
 * dumps (`ep.context_enable`, `ep.context_file_path`), and execution providers' compiled
 * caches (TensorRT engine, context and timing caches, NvTensorRTRTX context dumps, OpenVINO
 * `cache_dir`, CoreML `ModelCacheDirectory`, QNN context caches, MIGraphX saved models),
 * whether given in an `executionProviders` entry or as a config entry `ep.<provider>.<option>`
 * in `extra`. Profiling is allowed. */
export function checkSessionOptions(options: Record<string, unknown> | undefined): void {
  if (!options) return;
  if (options.optimizedModelFilePath) {
    throw new UsageError("optimizedModelFilePath would make onnxruntime write the decrypted model to disk; it is refused for protected models");
  }
  const providers = Array.isArray(options.executionProviders) ? options.executionProviders : [];
  for (const [i, ep] of providers.entries()) {
    if (!ep || typeof ep !== "object" || typeof (ep as { name?: unknown }).name !== "string") continue;
    const name = (ep as { name: string }).name;
    for (const [k, v] of Object.entries(ep)) {
      const w = writingOption(name, k);
      if (w && !off(v)) {
        throw new UsageError(`executionProviders[${i}] (${name}) option ${k}=${JSON.stringify(v)} would make the ${w.provider} execution provider write a compiled copy of the decrypted model to disk; it is refused for protected models`);
      }
    }
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
  // Provider options given as config entries: `ep.<provider name, lower case>.<option>`.
  for (const [k, v] of Object.entries(flat)) {
    const m = /^ep\.([^.]+)\.(.+)$/.exec(k);
    const w = m && writingOption(m[1], m[2]);
    if (w && !off(v)) {
      throw new UsageError(`session config '${k}' = ${JSON.stringify(v)} would make the ${w.provider} execution provider write a compiled copy of the decrypted model to disk; it is refused for protected models`);
    }
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
 * taken them (whether or not it succeeded). With `filled`, the external data is memory
 * filled on demand: it is settled once the session is built (a chunk that did not match its
 * hash throws, after the session is released) and then trimmed instead of zeroed (the
 * region wipes what it holds when it is collected). */
export async function sessionOf<S>(
  ort: OrtLike<S>, d: Decrypted, sessionOptions?: Record<string, unknown>, filled?: Filled, lockChecked = false,
): Promise<SessionResult<S>> {
  let settled = false;
  let model = d.model;
  try {
    // §15: below the top tier a label-locked model's scores come out in locked order;
    // refused rather than served as if they were true ones (`lockChecked`: the native
    // engine refused it already, and `d.model` is the graph it built, not the model).
    if (!lockChecked && keepsLabelLock(d)) {
      throw new KeyError(`this key opens tier ${d.tier} of ${d.tiers}; running a model whose outputs are label-locked needs the top-tier key (below it they come in locked order)`);
    }
    const externalData = [...d.externalData].map(([path, data]) => ({ path, data }));
    const options = externalData.length ? { ...sessionOptions, externalData } : { ...sessionOptions };
    // The native engine's graph (`lockChecked`) holds those tensors already.
    if (!lockChecked) model = inlineNested(d.model, d.externalData);
    const session = await ort.InferenceSession.create(model, options);
    if (filled) {
      try {
        filled.settle();
      } catch (e) {
        await (session as { release?: () => Promise<void> }).release?.();
        throw e;
      }
      settled = true;
    }
    return { session, decrypted: { tier: d.tier, tiers: d.tiers, tensors: d.tensors, decryptedBytes: d.decryptedBytes } };
  } finally {
    d.model.fill(0);
    model.fill(0);
    if (!filled) {
      for (const b of d.externalData.values()) b.fill(0);
    } else if (settled) {
      filled.trim();
    }
  }
}
