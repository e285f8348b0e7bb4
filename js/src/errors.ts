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
