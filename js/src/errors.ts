// The outcomes of docs/format.md §12 as exception classes. Every error of this package
// is an `OnnxProtectError` whose `kind` is a stable name (the command line's JSON kinds
// where they exist).

export class OnnxProtectError extends Error {
  readonly kind: string;
  constructor(kind: string, message: string) {
    super(message);
    this.kind = kind;
    this.name = new.target.name;
  }
}

/** Bytes of the model, its manifest or its external data changed (or were forged). */
export class Modified extends OnnxProtectError {
  constructor(detail: string) {
    super("modified", `modified: ${detail}`);
  }
}

/** No recipient stanza opens with the key material given. */
export class WrongKey extends OnnxProtectError {
  constructor(detail = "no recipient of this model matches the key given") {
    super("wrong_key", `wrong key: ${detail}`);
  }
}

/** The manifest is of a format version this reader does not read. */
export class UnsupportedVersion extends OnnxProtectError {
  constructor(detail: string) {
    super("unsupported_version", `unsupported version: ${detail}`);
  }
}

/** The model carries no onnx-protect manifest. */
export class NotProtected extends OnnxProtectError {
  constructor(detail = "no 'onnx-protect/v2' metadata entry") {
    super("not_protected", `not protected: ${detail}`);
  }
}

/** An unprotected or version-1 model that does not parse or is unsafe (§12). */
export class InvalidModel extends OnnxProtectError {
  constructor(detail: string) {
    super("invalid_model", `invalid model: ${detail}`);
  }
}

/** Signers were required and none of them signed the model. */
export class NotSigned extends OnnxProtectError {
  constructor(detail = "no signature of a trusted signer is on the model") {
    super("not_signed", `not signed by a trusted signer: ${detail}`);
  }
}

/** The key's tier is already decrypted in this file (§11). */
export class AlreadyDecrypted extends OnnxProtectError {
  constructor(detail: string) {
    super("already_decrypted", `already decrypted for this key's tier: ${detail}`);
  }
}

/** Key material that cannot be used (a malformed key file, a short key, a tier that
 * cannot be reached). */
export class KeyError extends OnnxProtectError {
  constructor(detail: string) {
    super("key", detail);
  }
}

/** A call this package refuses: missing external data, session options that would write
 * the decrypted model to disk, a tier out of range. */
export class UsageError extends OnnxProtectError {
  constructor(detail: string) {
    super("usage", detail);
  }
}

/** The model needs a licence of its publisher (format.md Appendix C) and the one given,
 * if any, does not let it open. The subclasses say why; `kind` is the command line's
 * JSON kind (`licence_expired`, …). */
export class LicenceError extends OnnxProtectError {}

/** The model needs a licence and none was given. */
export class LicenceMissing extends LicenceError {
  constructor(authority: string) {
    super("licence_missing", `licence required: this model opens only with a licence signed by ${authority}, and none was given`);
  }
}

/** The licence text is malformed (`line` 0: the text as a whole). */
export class LicenceMalformed extends LicenceError {
  constructor(line: number, reason: string) {
    super("licence_malformed", `licence line ${line}: ${reason}`);
  }
}

/** The licence's signature does not verify, or it is by another authority than the model's. */
export class LicenceBadSignature extends LicenceError {
  constructor(reason: string) {
    super("licence_bad_signature", `licence: bad signature: ${reason}`);
  }
}

/** The licence names other models. */
export class LicenceWrongModel extends LicenceError {
  constructor(named: string, model: string) {
    super("licence_wrong_model", `licence: wrong model: it names ${named}, this model is ${model}`);
  }
}

/** The licence is for other recipients or devices than the stanza that opened the model. */
export class LicenceWrongDevice extends LicenceError {
  constructor(named: string, opener: string) {
    super("licence_wrong_device", `licence: wrong device: it is for ${named}, the model was opened by ${opener}`);
  }
}

/** The licence's validity window has not started. */
export class LicenceNotYetValid extends LicenceError {
  constructor(notBefore: string, now: string) {
    super("licence_not_yet_valid", `licence: not yet valid: valid from ${notBefore}, the time is ${now}`);
  }
}

/** The licence's validity window has ended. */
export class LicenceExpired extends LicenceError {
  constructor(notAfter: string, now: string) {
    super("licence_expired", `licence: expired at ${notAfter}, the time is ${now}`);
  }
}

/** The clock is behind a time a licence check already recorded in the caller's store, or
 * the store could not be read or written. */
export class ClockSetBack extends LicenceError {
  constructor(detail: string) {
    super("licence_clock", `licence: ${detail}`);
  }
}
