// onnx-protect for JavaScript: reads models protected by onnx-protect (format 2,
// docs/format.md) in Node and in browsers, and loads them into onnxruntime from memory.

export { decrypt, verify, open, externalFilesOf, ENTRY_KEY } from "./reader.js";
export type { Decrypted, KeyMaterial, ReadOptions, VerifyReport } from "./reader.js";
export { createSession, checkSessionOptions } from "./session.js";
export type { OrtLike, SessionResult } from "./session.js";
export { parseKey, parseSigner, signerString } from "./keys.js";
export { evaluateLicence, formatUtc, parseLicence, parseUtc, storageClock, LICENCE_TAG, SET_BACK_TOLERANCE } from "./licence.js";
export type { Licence, LicenceClock, LicenceOptions, LicenceTerms, ModelFacts, ModelRef, RecipientRef } from "./licence.js";
export {
  AlreadyDecrypted, ClockSetBack, InvalidModel, KeyError, LicenceBadSignature, LicenceError, LicenceExpired, LicenceMalformed,
  LicenceMissing, LicenceNotYetValid, LicenceWrongDevice, LicenceWrongModel, Modified, NotProtected, NotSigned,
  OnnxProtectError, UnsupportedVersion, UsageError, WrongKey,
} from "./errors.js";
