// ---------------------------------------------------------------- §9 digest

import { Modified } from "../errors.js";
import { digestOfLeaves } from "../backend.js";
import { backend } from "#backend";
import { checkLocation } from "../model.js";
import { decodeCanonical, plain } from "../wire.js";
import { b64decode, findEntry } from "./shapes.js";

/** §9: the leaves of each covered file. */
export function coveredLeaves(files: Uint8Array[], chunk: number): Promise<Uint8Array[]> {
  return Promise.all(files.map((f, i) => backend.leaves(i, f, chunk)));
}

/** §9: `D` of the covered files. */
export async function contentDigest(files: Uint8Array[], chunk: number): Promise<Uint8Array> {
  return digestOfLeaves(files.map((f) => f.length), await coveredLeaves(files, chunk));
}

/** The external data files a protected model's header lists (§3), each location checked
 * as §5 says; for a caller that must fetch them before [`open`]. */
export function externalFilesOf(model: Uint8Array): string[] {
  return externalFilesWithSizes(model).map((f) => f.location);
}

/** [`externalFilesOf`] with each file's length as the header records it (`external_sizes`,
 * §3; `null` in a header without them), for a reader that compares a file's length with it
 * before reading the file. */
export function externalFilesWithSizes(model: Uint8Array): Array<{ location: string; size: bigint | null }> {
  const [, value] = findEntry(plain(model));
  const env = decodeCanonical("Envelope", b64decode(value));
  const header = decodeCanonical("Header", env.header);
  const files = header.external_files as string[], sizes = header.external_sizes as bigint[];
  if (sizes.length !== 0 && sizes.length !== files.length) throw new Modified("external_sizes does not hold one length per external file");
  for (const loc of files) {
    try {
      checkLocation(loc);
    } catch (e) {
      throw new Modified(`external file '${loc}' of the header: ${(e as Error).message}`);
    }
  }
  return files.map((location, i) => ({ location, size: sizes.length ? sizes[i] : null }));
}

/** Refuses an external data file whose length is not the one the header records (§3), with
 * the words `open` uses for it. */
export function checkExternalSize(location: string, actual: number | bigint, recorded: bigint | null): void {
  if (recorded !== null && BigInt(actual) !== recorded) {
    throw new Modified(`external file '${location}' is ${actual} bytes, its header says ${recorded}`);
  }
}
