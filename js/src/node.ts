// Node: a protected model and its external data files read from disk into memory, the
// side files confined to the model's directory (docs/format.md §5), or decrypted as they are
// read; the licence clock state file shared with onnx-protect. Nothing else is written.

import { randomBytes } from "node:crypto";
import { FileHandle, mkdir, open, realpath, rename, rm, stat, writeFile } from "node:fs/promises";
import path from "node:path";

import { leavesOf } from "./blake3-node.js";
import { hashOnWorker, PARALLEL_FROM, startWorkers, workerCount } from "./backend-node.js";
import { InvalidModel, UsageError } from "./errors.js";
import { formatUtc, LicenceClock, parseUtc } from "./licence.js";
import { Engine, nativeDecryptFile, nativeEngine, nativeEngineError, nativeOpenForSession, nativeTakes } from "./native.js";
import { checkExternalSize, Decrypted, decryptWith, externalFilesWithSizes, ReadOptions } from "./reader.js";
import { checkSessionOptions, OrtLike, SessionResult, sessionOf } from "./session.js";
import { concat } from "./wire.js";

export interface ModelFiles {
  model: Uint8Array;
  externalData: Map<string, Uint8Array>;
}

/** A file's bytes in a `SharedArrayBuffer`, which the worker threads of `decrypt` and
 * `verify` read without a copy. */
async function readShared(file: string): Promise<Uint8Array> {
  const fh = await open(file, "r");
  try {
    const size = (await fh.stat()).size;
    startWorkers(size);
    const out = new Uint8Array(new SharedArrayBuffer(size));
    await readInto(fh, out, 0, size, file);
    return out;
  } finally {
    await fh.close();
  }
}

async function readInto(fh: FileHandle, out: Uint8Array, from: number, to: number, file: string): Promise<void> {
  for (let at = from; at < to;) {
    const { bytesRead } = await fh.read(out, at, to - at, at);
    if (bytesRead === 0) throw new UsageError(`${file} became shorter while it was read`);
    at += bytesRead;
  }
}

/** The chunk size onnx-protect writes (format.md §9); a header with another is hashed again. */
const READ_CHUNK = 4 << 20;

/** A file read into ordinary memory, the leaves of its `READ_CHUNK`-byte chunks (as covered
 * file `index`) hashed while it is read: each chunk, once read, is copied into a shared slot
 * that a worker hashes while the next is read (small files are hashed here). */
async function readHashing(file: string, index: number): Promise<{ bytes: Uint8Array; leaves: Promise<Uint8Array> }> {
  const fh = await open(file, "r");
  try {
    const size = (await fh.stat()).size;
    startWorkers(size);
    const bytes = new Uint8Array(size);
    if (size < PARALLEL_FROM) {
      await readInto(fh, bytes, 0, size, file);
      const leaves = await leavesOf(bytes, index, READ_CHUNK);
      return { bytes, leaves: Promise.resolve(leaves) };
    }
    const free: Uint8Array[] = Array.from({ length: 2 * workerCount() + 2 }, () => new Uint8Array(new SharedArrayBuffer(READ_CHUNK)));
    const waiting: Array<(slot: Uint8Array) => void> = [];
    const release = (slot: Uint8Array) => (waiting.length ? waiting.shift()!(slot) : free.push(slot));
    const parts: Array<Promise<Uint8Array>> = [];
    for (let j = 0; j * READ_CHUNK < size; j++) {
      const a = j * READ_CHUNK, b = Math.min(a + READ_CHUNK, size);
      await readInto(fh, bytes, a, b, file);
      const slot = free.pop() ?? (await new Promise<Uint8Array>((r) => waiting.push(r)));
      slot.set(bytes.subarray(a, b));
      const part = hashOnWorker(slot.subarray(0, b - a), index, READ_CHUNK, j);
      parts.push(part);
      part.then(() => release(slot), () => release(slot));
    }
    return { bytes, leaves: Promise.all(parts).then(concat) };
  } finally {
    await fh.close();
  }
}

/** Reads the model at `file` with `read`, then every external data file its header lists
 * (each named under the model's directory; a symbolic link there is followed wherever it
 * leads, as onnxruntime follows it), as covered files 1, 2, … */
async function readAll<T extends { bytes: Uint8Array }>(file: string, read: (f: string, index: number) => Promise<T>): Promise<{ model: T; external: Map<string, T> }> {
  const model = await read(file, 0);
  const dir = await realpath(path.dirname(file));
  const self = await realpath(file);
  const external = new Map<string, T>();
  // Each file's length is compared with the header's before any file is read.
  const found: Array<{ location: string; real: string }> = [];
  for (const { location, size } of externalFilesWithSizes(model.bytes)) {
    const joined = path.join(dir, ...location.split(/[/\\]/));
    let real: string;
    try {
      real = await realpath(joined);
    } catch {
      throw new UsageError(`the external data file '${location}' of ${file} is missing`);
    }
    if (real === self) throw new InvalidModel(`external data location '${location}' names the model file itself`);
    const st = await stat(real);
    if (!st.isFile()) throw new InvalidModel(`external data location '${location}' is not a file`);
    checkExternalSize(location, st.size, size);
    found.push({ location, real });
  }
  for (const [i, { location, real }] of found.entries()) external.set(location, await read(real, i + 1));
  return { model, external };
}

/** Reads the protected model at `file` and every external data file its header lists
 * (each named under the model's directory; a symbolic link there is followed), into
 * shared memory. */
export async function readModelFiles(file: string): Promise<ModelFiles> {
  const { model, external } = await readAll(file, async (f) => ({ bytes: await readShared(f) }));
  return { model: model.bytes, externalData: new Map([...external].map(([l, e]) => [l, e.bytes])) };
}

export { nativeAddonPath, nativeEngine, nativeEngineError } from "./native.js";
export type { Engine } from "./native.js";

/** Options of `decryptFile`: those of `decrypt`, and the engine. */
export type FileOptions = Omit<ReadOptions, "externalData"> & { engine?: Engine };

/** `decrypt` of the protected model at `file` and its external data files. By the native
 * engine where it is loaded (`nativeEngine()`) and the options are ones it takes (no
 * licence): the Rust core maps, verifies and decrypts the files on every core, and the
 * result's buffers are the decrypted memory itself. Otherwise by the JavaScript engine,
 * with less work than `readModelFiles` + `decrypt`: each file is read once into the
 * memory the result is made in, hashed by the worker threads while it is read, and
 * decrypted in place. Either way the bytes as read are seen by no one before every check
 * has passed. `engine`: "auto" (default), "native" (refused where the native engine cannot
 * be used) or "js". */
export async function decryptFile(file: string, opts: FileOptions = {}): Promise<Decrypted> {
  if ((opts as ReadOptions).externalData) throw new UsageError("decryptFile reads the external data files itself");
  const { engine = "auto", ...read } = opts;
  if (engine !== "auto" && engine !== "native" && engine !== "js") throw new UsageError(`engine '${engine}' is not auto, native or js`);
  if (engine !== "js") {
    const refused = nativeTakes(read) || (nativeEngine() ? "" : nativeEngineError());
    if (!refused) return nativeDecryptFile(file, read);
    if (engine === "native") throw new UsageError(`the native engine cannot be used: ${refused}`);
  }
  const { model, external } = await readAll(file, readHashing);
  const externalData = new Map([...external].map(([l, e]) => [l, e.bytes]));
  return decryptWith(model.bytes, { ...read, externalData }, { chunk: READ_CHUNK, leaves: [model.leaves, ...[...external.values()].map((e) => e.leaves)] });
}

/** `createSession` from the protected model at `file` (read as `decryptFile` reads it). By
 * the native engine onnxruntime gets a graph without weight bytes and the tensors as external
 * data in memory; where the system allows it the external data is memory filled on demand as
 * onnxruntime reads it (every chunk checked against its hash first), and so are the model
 * file's own weights when tensors of 16 MiB or more hold most of them; every chunk is
 * verified before the session is returned. */
export async function createSessionFromFile<S>(
  ort: OrtLike<S>, file: string, opts: FileOptions = {}, sessionOptions?: Record<string, unknown>,
): Promise<SessionResult<S>> {
  checkSessionOptions(sessionOptions);
  const { engine = "auto", ...read } = opts;
  if (engine !== "js" && !(read as ReadOptions).externalData && !nativeTakes(read) && nativeEngine()) {
    const { decrypted, region, graph } = await nativeOpenForSession(file, read);
    return sessionOf(ort, decrypted, sessionOptions, region ?? undefined, graph);
  }
  return sessionOf(ort, await decryptFile(file, opts), sessionOptions);
}

/** The state file onnx-protect keeps the latest time a licence check saw in:
 * `$ONNX_PROTECT_LICENCE_CLOCK`, else `$XDG_STATE_HOME/onnx-protect/licence-clock`, else
 * `$HOME/.local/state/onnx-protect/licence-clock`; `null` without any of them. */
export function defaultClockPath(): string | null {
  const v = (n: string) => process.env[n] || null;
  const own = v("ONNX_PROTECT_LICENCE_CLOCK");
  if (own) return own;
  const state = v("XDG_STATE_HOME") ?? (v("HOME") ? path.join(v("HOME")!, ".local/state") : null);
  return state ? path.join(state, "onnx-protect", "licence-clock") : null;
}

const CLOCK_TAG = "onnx-protect-clock-v1";

/** The high-water-mark store in onnx-protect's clock state file (`onnx-protect-clock-v1`,
 * a `high-water:` line and up to 64 `tpm:` anchors, one per TPM key, which are kept as they
 * were: format.md, appendix C), shared with
 * the command line, Python and C: a missing file is a fresh state, a malformed one an error
 * (never silently reset). Written to a temporary file in the same directory (created mode
 * 0700) and renamed into place. Node has no file lock: two checks at the same moment may
 * record the earlier of their two times, never a time not seen. */
export function clockFile(file: string | null = defaultClockPath()): LicenceClock {
  if (!file) throw new UsageError("no licence clock state file: set ONNX_PROTECT_LICENCE_CLOCK or HOME, or name a file");
  let anchors: string[] = [];
  return {
    async read() {
      let text: string;
      try {
        const fh = await open(file, "r");
        try {
          const buf = Buffer.alloc(4097);
          const { bytesRead } = await fh.read(buf, 0, buf.length, 0);
          text = buf.subarray(0, bytesRead).toString("utf8");
        } finally {
          await fh.close();
        }
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === "ENOENT") return null;
        throw e;
      }
      const lines = text.split("\n");
      if (lines[lines.length - 1] === "") lines.pop();
      const high = lines[0] === CLOCK_TAG && lines[1]?.startsWith("high-water: ") ? parseUtc(lines[1].slice(12)) : null;
      // `tpm: WALL CLOCK_MS SOURCE` (SOURCE: 32 hex digits), one per TPM key, or the older
      // single `tpm: WALL CLOCK_MS`.
      const tpm = lines.slice(2);
      const anchorOk = (l: string) =>
        /^tpm: \S+ [0-9]+( [0-9a-f]{32})?$/.test(l) && parseUtc(l.split(" ")[1]) !== null;
      if (high === null || tpm.length > 64 || !tpm.every(anchorOk)) throw new Error(`${file}: not a clock state file (malformed)`);
      anchors = tpm;
      return high;
    },
    async write(highWater: number) {
      const dir = path.dirname(file);
      await mkdir(dir, { recursive: true, mode: 0o700 });
      const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.${randomBytes(6).toString("hex")}.tmp`);
      try {
        await writeFile(tmp, `${CLOCK_TAG}\nhigh-water: ${formatUtc(highWater)}\n${anchors.map((a) => `${a}\n`).join("")}`, { mode: 0o600, flag: "wx" });
        await rename(tmp, file);
      } catch (e) {
        await rm(tmp, { force: true });
        throw e;
      }
    },
  };
}
