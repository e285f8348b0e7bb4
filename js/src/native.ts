// The native engine in Node: crates/node, the Rust core built as a Node addon, verifies
// and decrypts a model file on every core and hands back `Buffer`s over the decrypted
// memory. `decryptFile` uses it when it is there and the options are ones it takes;
// otherwise the JavaScript engine (reader.ts, over the byte backend) does the work.

import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

import {
  AlreadyDecrypted, ClockSetBack, InvalidModel, KeyError, LicenceBadSignature, LicenceExpired, LicenceMalformed,
  LicenceMissing, LicenceNotYetValid, LicenceWrongDevice, LicenceWrongModel, Modified, NotProtected, NotSigned,
  OnnxProtectError, UnsupportedVersion, UsageError, WrongKey,
} from "./errors.js";
import type { Decrypted, ReadOptions } from "./reader.js";
import type { Filled } from "./session.js";

/** The addon's region (crates/node `Region`): `settle` verifies every chunk not read yet,
 * `trim` then drops the chunks read so far. */
interface Region {
  settle(): void;
  trim(): void;
}

interface Addon {
  decryptFile(
    path: string, key: Uint8Array | null, passphrase: Uint8Array | null, identity: string | null, tier: number, signers: string[],
    onDemand: boolean,
  ): Promise<{
    model: Uint8Array; externalNames: string[]; externalData: Uint8Array[]; tier: number; tiers: number; tensors: number; decryptedBytes: number; graph: boolean;
    region?: Region | null;
  }>;
  onDemandAvailable(): boolean;
  version(): string;
}

/** Which engine `decryptFile` uses: "auto" (the native one where it is loaded and takes
 * the options), "native" (an error where it cannot be used) or "js". */
export type Engine = "auto" | "native" | "js";

/** Where the addon is looked for: `$ONNX_PROTECT_NODE_ADDON`, else
 * `native/onnx_protect.<platform>-<arch>.node` in this package. */
export function nativeAddonPath(): string {
  const own = process.env.ONNX_PROTECT_NODE_ADDON;
  if (own) return path.resolve(own);
  const here = path.dirname(fileURLToPath(import.meta.url));
  return path.join(here, "..", "native", `onnx_protect.${process.platform}-${process.arch}.node`);
}

let loaded: { addon: Addon | null; path: string; why: string } | null = null;

function load(): { addon: Addon | null; path: string; why: string } {
  if (loaded) return loaded;
  const file = nativeAddonPath();
  try {
    const addon = createRequire(import.meta.url)(file) as Addon;
    if (typeof addon.decryptFile !== "function") throw new Error("it has no decryptFile");
    loaded = { addon, path: file, why: "" };
  } catch (e) {
    loaded = { addon: null, path: file, why: (e as Error).message.split("\n")[0] };
  }
  return loaded;
}

/** The native engine, if it is loaded: its file and the Rust core's version; `null`
 * (with the reason in `nativeEngineError()`) otherwise. */
export function nativeEngine(): { path: string; version: string } | null {
  const l = load();
  return l.addon ? { path: l.path, version: l.addon.version() } : null;
}

/** Why the native engine could not be loaded ("" when it is). */
export function nativeEngineError(): string {
  const l = load();
  return l.addon ? "" : `the native engine ${l.path} could not be loaded: ${l.why}`;
}

const BY_KIND: Record<string, new (detail: string) => OnnxProtectError> = {
  modified: Modified, wrong_key: WrongKey, unsupported_version: UnsupportedVersion, not_protected: NotProtected,
  invalid_model: InvalidModel, not_signed: NotSigned, already_decrypted: AlreadyDecrypted, key: KeyError, usage: UsageError,
};
const LICENCE: Record<string, new (a: never, b: never) => OnnxProtectError> = {
  licence_missing: LicenceMissing, licence_malformed: LicenceMalformed, licence_bad_signature: LicenceBadSignature,
  licence_wrong_model: LicenceWrongModel, licence_wrong_device: LicenceWrongDevice, licence_not_yet_valid: LicenceNotYetValid,
  licence_expired: LicenceExpired, licence_clock: ClockSetBack,
};

/** The typed exception of an addon's rejection (`KIND` U+001F message). */
function typed(e: unknown): unknown {
  const m = e instanceof Error ? e.message : "";
  const at = m.indexOf("\u001f");
  if (at < 0) return e;
  const kind = m.slice(0, at), message = m.slice(at + 1);
  const C = BY_KIND[kind] ?? LICENCE[kind];
  const err = C ? new (C as new (...a: string[]) => OnnxProtectError)("", "") : new OnnxProtectError(kind, message);
  err.message = message;
  return err;
}

/** The options the native engine takes: key material, `tier`, a non-empty `signers`; a
 * licence and its clock are for the JavaScript engine. */
export function nativeTakes(opts: Omit<ReadOptions, "externalData">): string {
  if (opts.licence !== undefined || opts.now !== undefined || opts.licenceClock !== undefined) return "a licence is checked by the JavaScript engine";
  if (opts.signers !== undefined && opts.signers.length === 0) return "an empty signers list is checked by the JavaScript engine";
  return "";
}

/** `decryptFile` by the native engine (which must be loaded, and take `opts`). */
export async function nativeDecryptFile(file: string, opts: Omit<ReadOptions, "externalData">): Promise<Decrypted> {
  return (await nativeOpen(file, opts, false)).decrypted;
}

/** For a session: as `nativeDecryptFile`, the external data filled on demand where the
 * system allows it (then `region` is set, and must be settled once the session is built,
 * before anything is run: its `settle` throws the package's typed exception). With `graph`,
 * `decrypted.model` is a graph built for the session (its large tensors in
 * `decrypted.externalData`) and a label lock was checked. */
export async function nativeOpenForSession(file: string, opts: Omit<ReadOptions, "externalData">): Promise<{ decrypted: Decrypted; region: Filled | null; graph: boolean }> {
  const { decrypted, region, graph } = await nativeOpen(file, opts, true);
  if (!region) return { decrypted, region: null, graph };
  const settle = () => {
    try {
      region.settle();
    } catch (e) {
      throw typed(e);
    }
  };
  return { decrypted, region: { settle, trim: () => region.trim() }, graph };
}

/** Whether the native engine is loaded and can fill external data on demand here. */
export function nativeOnDemand(): boolean {
  return load().addon?.onDemandAvailable() ?? false;
}

async function nativeOpen(file: string, opts: Omit<ReadOptions, "externalData">, onDemand: boolean): Promise<{ decrypted: Decrypted; region: Region | null; graph: boolean }> {
  const { addon } = load();
  if (!addon) throw new UsageError(nativeEngineError());
  const given = [opts.key, opts.passphrase, opts.identity].filter((k) => k !== undefined).length;
  if (given !== 1) throw new UsageError("give exactly one of key, passphrase and identity");
  if (opts.tier !== undefined && (!Number.isInteger(opts.tier) || opts.tier < 1)) {
    throw new UsageError(`tier ${opts.tier} is not a tier (1, 2, …)`);
  }
  const bytes = (v: string | Uint8Array | undefined) => (v === undefined ? null : typeof v === "string" ? Buffer.from(v, "utf8") : v);
  let d;
  try {
    d = await addon.decryptFile(file, bytes(opts.key), bytes(opts.passphrase), opts.identity ?? null, opts.tier ?? 0, opts.signers ?? [], onDemand);
  } catch (e) {
    throw typed(e);
  }
  const externalData = new Map(d.externalNames.map((n, i) => [n, d.externalData[i]]));
  const decrypted = { model: d.model, externalData, tier: d.tier, tiers: d.tiers, tensors: d.tensors, decryptedBytes: d.decryptedBytes };
  return { decrypted, region: d.region ?? null, graph: d.graph === true };
}
