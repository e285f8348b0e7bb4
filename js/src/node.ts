// Node: a protected model and its external data files read from disk into memory, the
// side files confined to the model's directory (docs/format.md §5). Nothing is written.

import { readFile, realpath, stat } from "node:fs/promises";
import path from "node:path";

import { InvalidModel, UsageError } from "./errors.js";
import { externalFilesOf } from "./reader.js";

export interface ModelFiles {
  model: Uint8Array;
  externalData: Map<string, Uint8Array>;
}

/** Reads the protected model at `file` and every external data file its header lists
 * (each under the model's directory, through no symbolic link that leaves it). */
export async function readModelFiles(file: string): Promise<ModelFiles> {
  const model = new Uint8Array(await readFile(file));
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
    externalData.set(location, new Uint8Array(await readFile(real)));
  }
  return { model, externalData };
}
