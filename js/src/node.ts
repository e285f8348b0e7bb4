// Node: a protected model and its external data files read from disk into memory, the
// side files confined to the model's directory (docs/format.md §5); the licence clock state
// file shared with onnx-protect. Nothing else is written.

import { randomBytes } from "node:crypto";
import { mkdir, open, realpath, rename, rm, stat, writeFile } from "node:fs/promises";
import path from "node:path";

import { startWorkers } from "./engine-node.js";
import { InvalidModel, UsageError } from "./errors.js";
import { formatUtc, LicenceClock, parseUtc } from "./licence.js";
import { externalFilesOf } from "./reader.js";

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
    for (let at = 0; at < size;) {
      const { bytesRead } = await fh.read(out, at, Math.min(size - at, 1 << 30), at);
      if (bytesRead === 0) throw new UsageError(`${file} became shorter while it was read`);
      at += bytesRead;
    }
    return out;
  } finally {
    await fh.close();
  }
}

/** Reads the protected model at `file` and every external data file its header lists
 * (each under the model's directory, through no symbolic link that leaves it), into
 * shared memory. */
export async function readModelFiles(file: string): Promise<ModelFiles> {
  const model = await readShared(file);
  const dir = await realpath(path.dirname(file));
  const self = await realpath(file);
  const externalData = new Map<string, Uint8Array>();
  for (const location of externalFilesOf(model)) {
    const joined = path.join(dir, ...location.split(/[/\\]/));
    let real: string;
    try {
      real = await realpath(joined);
    } catch {
      throw new UsageError(`the external data file '${location}' of ${file} is missing`);
    }
    if (!real.startsWith(dir + path.sep)) throw new InvalidModel(`external data location '${location}' leaves the model's directory`);
    if (real === self) throw new InvalidModel(`external data location '${location}' names the model file itself`);
    if (!(await stat(real)).isFile()) throw new InvalidModel(`external data location '${location}' is not a file`);
    externalData.set(location, await readShared(real));
  }
  return { model, externalData };
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
 * a `high-water:` line and an optional `tpm:` anchor, which is kept as it was), shared with
 * the command line, Python and C: a missing file is a fresh state, a malformed one an error
 * (never silently reset). Written to a temporary file in the same directory (created mode
 * 0700) and renamed into place. Node has no file lock: two checks at the same moment may
 * record the earlier of their two times, never a time not seen. */
export function clockFile(file: string | null = defaultClockPath()): LicenceClock {
  if (!file) throw new UsageError("no licence clock state file: set ONNX_PROTECT_LICENCE_CLOCK or HOME, or name a file");
  let anchor: string | null = null;
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
      const tpm = lines[2];
      const tpmOk = tpm === undefined || /^tpm: \S+ [0-9]+$/.test(tpm) && parseUtc(tpm.split(" ")[1]) !== null;
      if (high === null || !tpmOk || lines.length > 3) throw new Error(`${file}: not a clock state file (malformed)`);
      anchor = tpm ?? null;
      return high;
    },
    async write(highWater: number) {
      const dir = path.dirname(file);
      await mkdir(dir, { recursive: true, mode: 0o700 });
      const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.${randomBytes(6).toString("hex")}.tmp`);
      try {
        await writeFile(tmp, `${CLOCK_TAG}\nhigh-water: ${formatUtc(highWater)}\n${anchor ? `${anchor}\n` : ""}`, { mode: 0o600, flag: "wx" });
        await rename(tmp, file);
      } catch (e) {
        await rm(tmp, { force: true });
        throw e;
      }
    },
  };
}
