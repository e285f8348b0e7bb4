// Key material (docs/format.md Appendix A): key files and key strings, passphrases,
// age identities and signer keys.

import { ed25519 } from "@noble/curves/ed25519.js";
import { bech32 } from "@scure/base";

import { KeyError } from "./errors.js";
import { decodeUtf8, encodeUtf8 } from "./wire.js";

/** A key as a caller gives it: 32 raw bytes, 64 hex digits, or the text of a key file. */
export type KeyInput = Uint8Array | string;

export interface ParsedKey {
  key: Uint8Array;
  /** "master" (with its number of tiers), "tier" (with its tier), or "raw" (the older form). */
  kind: "master" | "tier" | "raw";
  tiers?: number;
  tier?: number;
}

const HEX64 = /^[0-9a-fA-F]{64}$/;
const SMALL = /^(?:[1-9]|1[0-6])$/;

function hexBytes(h: string): Uint8Array {
  const out = new Uint8Array(h.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(h.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** Parses a key (Appendix A): a key file's text, 64 hex digits, or 32 raw bytes. */
export function parseKey(input: KeyInput): ParsedKey {
  let text: string;
  if (typeof input === "string") text = input;
  else {
    // Exactly 32 bytes are a raw key (a key file's text is longer, 64 hex digits too).
    if (input.length === 32) return { key: Uint8Array.from(input), kind: "raw" };
    const t = decodeUtf8(input);
    if (t === null) throw new KeyError("a key is 32 raw bytes, 64 hex digits or the text of a key file");
    text = t;
  }
  if (encodeUtf8(text).length > 4096) throw new KeyError("a key file is at most 4096 bytes");
  let found: ParsedKey | null = null;
  for (const raw of text.split("\n")) {
    const line = raw.replace(/\r$/, "").replace(/^[ \t]+|[ \t]+$/g, "");
    if (!line || line.startsWith("#")) continue;
    const fields = line.split(/[ \t]+/);
    if (!fields[0].startsWith("onnx-protect-key-")) {
      if (found === null && HEX64.test(line) && text.trim() === line) return { key: hexBytes(line), kind: "raw" };
      throw new KeyError("a key file line is neither a comment nor a key line");
    }
    if (fields[0] !== "onnx-protect-key-v1") throw new KeyError(`unknown key file version '${fields[0]}'`);
    if (found) throw new KeyError("a key file holds one key line");
    if (fields.length === 4 && fields[1] === "master" && fields[2].startsWith("tiers=") && HEX64.test(fields[3])) {
      const n = fields[2].slice(6);
      if (!SMALL.test(n)) throw new KeyError(`tiers=${n}: 1 to 16, no leading zeros`);
      found = { key: hexBytes(fields[3]), kind: "master", tiers: Number(n) };
    } else if (fields.length === 3 && fields[1].startsWith("tier=") && HEX64.test(fields[2])) {
      const n = fields[1].slice(5);
      if (!SMALL.test(n)) throw new KeyError(`tier=${n}: 1 to 16, no leading zeros`);
      found = { key: hexBytes(fields[2]), kind: "tier", tier: Number(n) };
    } else {
      throw new KeyError("a key line is 'onnx-protect-key-v1 master tiers=N HEX' or 'onnx-protect-key-v1 tier=T HEX'");
    }
  }
  if (!found) throw new KeyError("no key in the key file");
  return found;
}

/** A passphrase as its raw bytes (Appendix A). */
export function passphraseBytes(p: string | Uint8Array): Uint8Array {
  return typeof p === "string" ? encodeUtf8(p) : Uint8Array.from(p);
}

/** The `AGE-SECRET-KEY-1…` lines of an identity file (comments and blank lines skipped). */
export function parseIdentities(text: string): string[] {
  const ids: string[] = [];
  text.split("\n").forEach((raw, i) => {
    const l = raw.trim();
    if (!l || l.startsWith("#")) return;
    if (!/^AGE-SECRET-KEY-1[0-9A-Za-z]+$/.test(l)) throw new KeyError(`identity file line ${i + 1} is not an AGE-SECRET-KEY-1 identity`);
    ids.push(l);
  });
  if (!ids.length) throw new KeyError("no AGE-SECRET-KEY-1 identity in the identity file");
  return ids;
}

const SIGNER_HRP = "onnx-protect-signer";

/** The 32 bytes of a signer key string `onnx-protect-signer1…` (Appendix A), read in any
 * case (as onnx-protect lower-cases it); an error unless it is a valid Ed25519 point. */
export function parseSigner(s: string): Uint8Array {
  const t = s.trim();
  try {
    const d = bech32.decode(t.toLowerCase() as `${string}1${string}`, 1023);
    if (d.prefix !== SIGNER_HRP) throw new Error("prefix");
    const bytes = Uint8Array.from(bech32.fromWords(d.words));
    if (bytes.length !== 32) throw new Error("length");
    ed25519.Point.fromBytes(bytes);
    return bytes;
  } catch {
    throw new KeyError(`'${t}' is not an ${SIGNER_HRP}1... public key`);
  }
}

export function signerString(publicKey: Uint8Array): string {
  return bech32.encode(SIGNER_HRP, bech32.toWords(publicKey), 1023);
}
