"""Protected ONNX models where they run: decrypt in memory, build onnxruntime
sessions, export PyTorch models straight into protected files.

Every function takes the key in one of these keyword arguments (exactly one):

* ``key``: a :class:`Key`, or bytes (32 raw bytes, 64 hex digits, or the text
  of a key file, as :func:`new_key` returns);
* ``key_file``: a key file written by ``keygen``;
* ``key_env``: the name of an environment variable holding a key;
* ``passphrase``: a passphrase (``str`` or bytes);
* ``passphrase_env``: the name of an environment variable holding one;
* ``identity_file``: an identity file: age X25519 identities (``AGE-SECRET-KEY-1...``),
  one age plugin's identities (``AGE-PLUGIN-NAME-1...``, run through the program
  ``age-plugin-NAME`` on ``PATH``; a plugin that asks for a PIN gets no answer), or a
  TPM key file of ``onnx-protect keygen --tpm`` (the TPM named by
  ``ONNX_PROTECT_TPM_TCTI``; needs a package built with the cargo feature ``tpm``).

A model encrypted with a licence authority also needs ``licence=`` (a licence file,
docs/shipping.md) in ``decrypt``, ``verify`` (with a key), ``load`` and
``InferenceSession``; ``licence_clock=`` names the file that records the latest time
seen (default ``$ONNX_PROTECT_LICENCE_CLOCK`` or ``~/.local/state/onnx-protect/licence-clock``).
Refusals are :class:`LicenceError` subclasses (``LicenceExpired``, ``LicenceWrongDevice``, ...).

Errors are :class:`OnnxProtectError` subclasses, one per kind (``WrongKey``,
``Modified``, ``NotProtected``, ``MalformedModel``, ...); ``err.kind`` is the
kind's stable name, as in the command line's JSON output. See docs/python.md.
"""

from __future__ import annotations

import difflib
import functools
import json
import os
import warnings
from collections.abc import Mapping
from typing import Any, Callable, Iterable, Sequence, TypedDict, TypeVar, Union, Unpack, cast

from . import _native
from ._native import (
    AlreadyDecrypted,
    AlreadyProtected,
    BadManifest,
    Buffer,
    ClockSetBack,
    DecryptedModel,
    ExternalTensor,
    FileError,
    InvalidKey,
    InvalidPolicy,
    Key,
    LicenceBadSignature,
    LicenceError,
    LicenceExpired,
    LicenceMalformed,
    LicenceMissing,
    LicenceNotYetValid,
    LicenceWrongDevice,
    LicenceWrongModel,
    MalformedModel,
    Modified,
    NotProtected,
    NotSigned,
    OnnxProtectError,
    OutputError,
    UnsupportedVersion,
    WrongKey,
)

__version__ = _native.__version__

__all__ = [
    "AlreadyDecrypted",
    "AlreadyProtected",
    "BadManifest",
    "Buffer",
    "ClockSetBack",
    "DecryptedModel",
    "ExternalTensor",
    "FileError",
    "InferenceSession",
    "InvalidKey",
    "InvalidPolicy",
    "Key",
    "LicenceBadSignature",
    "LicenceError",
    "LicenceExpired",
    "LicenceMalformed",
    "LicenceMissing",
    "LicenceNotYetValid",
    "LicenceWrongDevice",
    "LicenceWrongModel",
    "MalformedModel",
    "Modified",
    "NotProtected",
    "NotSigned",
    "OnnxProtectError",
    "OutputError",
    "UnsafeSessionOptions",
    "UnsupportedVersion",
    "WrongKey",
    "decrypt",
    "encrypt",
    "export",
    "fingerprint_secret",
    "inspect",
    "keygen",
    "load",
    "new_key",
    "verify",
]

PathLike = Union[str, "os.PathLike[str]"]
BytesLike = Union[bytes, bytearray, memoryview]
#: An override value: ``"OP=VALUE"``, a value for every operator (``0.5``, ``"fp"``),
#: a mapping operator -> value, or a sequence of ``"OP=VALUE"`` strings.
Override = Union[str, float, int, Mapping[str, Any], Sequence[str]]


# The keyword arguments several functions take, each group written once as a TypedDict:
# a function takes one as ``**kw: Unpack[...]`` under _checked_keywords(takes=...), which
# hands each to it (its default when not given) and shows them in its signature.


class _Keys(TypedDict, total=False):
    """The key arguments (give one; the module's docstring)."""

    key: Key | BytesLike | None
    key_file: PathLike | None
    key_env: str | None
    passphrase: str | BytesLike | None
    passphrase_env: str | None


class _EncryptArgs(_Keys, total=False):
    """The keyword arguments :func:`encrypt` and :func:`export` share."""

    recipients: Sequence[str | tuple[str, int]]
    policy: PathLike | None
    seed: int | None
    tiers: int | None
    tier_shares: Sequence[float] | None
    tier_classes: Sequence[Sequence[int]] | None


class _Opening(_Keys, total=False):
    """The key arguments of the functions that open a model, with a licence."""

    identity_file: PathLike | None
    licence: PathLike | None
    licence_clock: PathLike | None


class _VerifyArgs(_Opening, total=False):
    """:func:`verify`'s keyword arguments."""

    signers: Sequence[str]


class _OpenArgs(_Opening, total=False):
    """The keyword arguments of the functions that decrypt a model: :func:`decrypt`,
    :func:`load`, ``InferenceSession`` and ``genai.Config``."""

    tier: int | None
    signers: Sequence[str]


#: The defaults of the keyword arguments above that are not ``None``.
_DEFAULTS: dict[str, Any] = {"recipients": (), "signers": ()}

#: The names of the key arguments, in the order :func:`_key` reads them.
_KEY_NAMES = (*_Keys.__annotations__, "identity_file")


class _Overrides(TypedDict, total=False):
    """:func:`encrypt`'s policy overrides, as the command line's options."""

    coefficient: Override
    mode: Override
    subsequences: Override
    selection: Override


_OVERRIDES = tuple(_Overrides.__annotations__)


class _EncryptKeywords(_EncryptArgs, _Overrides, total=False):
    """:func:`encrypt`'s ``**kw``."""


class _OrtSessionArgs(TypedDict, total=False):
    """The keyword arguments ``onnxruntime.InferenceSession`` reads from its ``**kwargs``
    (onnxruntime 1.15 to 1.31); tests/python/test_package_keywords.py checks that the
    installed onnxruntime reads no other."""

    enable_fallback: int
    read_config_from_model: int
    disabled_optimizers: Iterable[str]


_ORT_SESSION_KWARGS = tuple(_OrtSessionArgs.__annotations__)

_F = TypeVar("_F", bound=Callable[..., Any])


def _checked_keywords(
    passthrough: Callable[[], Iterable[str] | None] = tuple,
    takes: Any = None,
    rest: tuple[str, str] | None = None,
) -> Callable[[_F], _F]:
    """Makes a function refuse, before it runs, a keyword argument that is neither one of
    its own parameters, nor one of ``takes``, nor one of ``passthrough()``, the names it
    hands on to another function (``None``: that function takes any name): a
    :class:`TypeError` naming it, and the closest known name if one is close. A mistyped
    ``keyfile=`` would otherwise end as "a key is required", and a mistyped ``providrs=``
    reach onnxruntime, which ignores names it does not read.

    ``takes`` (a TypedDict above) names the keyword arguments the function's ``**kw``
    takes: each reaches it, its default (``_DEFAULTS``, else ``None``) when not given, and
    the function's signature (``help``, ``inspect.signature``) shows them before its own
    keyword-only parameters, and its ``**kw`` as ``rest`` (name, annotation), or not at all
    if it hands no names on."""

    def decorate(f: _F) -> _F:
        code = f.__code__
        group = {} if takes is None else {name: _DEFAULTS.get(name) for name in takes.__annotations__}
        own = (*code.co_varnames[: code.co_argcount + code.co_kwonlyargcount], *group)

        @functools.wraps(f)
        def checked(*args: Any, **kwargs: Any) -> Any:
            unknown = [name for name in kwargs if name not in own]
            if unknown:
                handed_on = passthrough()
                known = None if handed_on is None else [*own, *handed_on]
                for name in unknown:
                    if known is not None and name not in known:
                        close = difflib.get_close_matches(name, known, n=1)
                        hint = f"; did you mean {close[0]!r}?" if close else ""
                        raise TypeError(f"{f.__name__}() got an unexpected keyword argument {name!r}{hint}")
            return f(*args, **{**group, **kwargs})

        if takes is not None:
            checked.__signature__ = _signature_with(f, takes, rest)  # type: ignore[attr-defined]
        return cast(_F, checked)

    return decorate


def _signature_with(f: Callable[..., Any], takes: Any, rest: tuple[str, str] | None) -> Any:
    """``f``'s signature with the keyword arguments of ``takes`` (a TypedDict) before its
    own keyword-only ones, and its ``**kw`` as ``rest`` (name, annotation) or dropped."""
    from inspect import Parameter, signature

    sig = signature(f)
    params = [p for p in sig.parameters.values() if p.kind is not Parameter.VAR_KEYWORD]
    at = next((i for i, p in enumerate(params) if p.kind is Parameter.KEYWORD_ONLY), len(params))
    taken = [
        # Under `from __future__ import annotations` each type is a ForwardRef of its text.
        Parameter(name, Parameter.KEYWORD_ONLY, default=_DEFAULTS.get(name), annotation=getattr(t, "__forward_arg__", t))
        for name, t in takes.__annotations__.items()
    ]
    tail = [] if rest is None else [Parameter(rest[0], Parameter.VAR_KEYWORD, annotation=rest[1])]
    return sig.replace(parameters=[*params[:at], *taken, *params[at:], *tail])


def _torch_export_keywords() -> list[str] | None:
    """The keyword arguments ``torch.onnx.export`` takes (``None``: any, or no torch to ask:
    :func:`export` then fails importing it)."""
    import inspect

    try:
        import torch.onnx
    except ImportError:
        return None
    params = inspect.signature(torch.onnx.export).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params]


def _key(**kw: Any) -> Key | None:
    """The one key given among the key arguments in ``kw`` (other names are not read), as
    a :class:`Key`; ``None`` if none was given."""
    given = {name: kw[name] for name in _KEY_NAMES if kw.get(name) is not None}
    if len(given) > 1:
        raise ValueError(f"give only one of {', '.join(_KEY_NAMES)} (got {', '.join(given)})")
    key, key_file, key_env, passphrase, passphrase_env, identity_file = (given.get(name) for name in _KEY_NAMES)
    if key is not None:
        if isinstance(key, Key):
            return key
        if isinstance(key, (bytes, bytearray, memoryview)):
            return Key.from_bytes(bytes(key))
        raise TypeError(f"key must be an onnx_protect.Key or bytes, not {type(key).__name__} (a path goes in key_file=)")
    if key_file is not None:
        return Key.from_file(os.fspath(key_file))
    if key_env is not None:
        return Key.from_env(key_env)
    if passphrase is not None:
        if isinstance(passphrase, str):
            return Key.from_passphrase(passphrase.encode())
        return Key.from_passphrase(bytes(passphrase))
    if passphrase_env is not None:
        return Key.from_passphrase_env(passphrase_env)
    if identity_file is not None:
        return Key.from_identity_file(os.fspath(identity_file))
    return None


def _licensed(k: Key | None, licence: PathLike | None, licence_clock: PathLike | None) -> Key | None:
    """``k`` with the licence, if one was given."""
    if licence is None:
        if licence_clock is not None:
            raise ValueError("licence_clock goes with licence")
        return k
    if k is None:
        raise ValueError("a licence goes with a key")
    return k.with_licence(os.fspath(licence), clock=None if licence_clock is None else os.fspath(licence_clock))


def _opening_key(kw: Mapping[str, Any], required: bool = True) -> Key | None:
    """The one key given in ``kw`` (an error if none was and it is ``required``), with the
    licence if one was given: ``kw`` holds the keyword arguments of :class:`_Opening`."""
    k = _key(**kw)
    if k is None and required:
        raise ValueError("a key is required: give key, key_file, key_env, passphrase, passphrase_env or identity_file")
    return _licensed(k, kw["licence"], kw["licence_clock"])


def _override_specs(what: str, value: Override) -> list[tuple[str, str]]:
    """``(what, "OP=VALUE")`` pairs for one override argument."""
    if isinstance(value, str):
        return [(what, value if "=" in value else f"*={value}")]
    if isinstance(value, bool):
        raise TypeError(f"{what}: expected a number, a string, a mapping or a list, not a bool")
    if isinstance(value, (int, float)):
        return [(what, f"*={value!r}")]
    if isinstance(value, Mapping):
        return [(what, f"{op}={v}") for op, v in value.items()]
    if isinstance(value, Iterable):
        out: list[tuple[str, str]] = []
        for item in value:
            if not isinstance(item, str) or "=" not in item:
                raise TypeError(f"{what}: a list must hold 'OP=VALUE' strings, got {item!r}")
            out.append((what, item))
        return out
    raise TypeError(f"{what}: unsupported value {value!r}")


@_checked_keywords(lambda: _OVERRIDES, takes=_EncryptArgs, rest=("overrides", "Override"))
def encrypt(
    src: PathLike,
    dst: PathLike,
    *,
    allow_empty: bool = False,
    fingerprint: str | None = None,
    fingerprint_secret: PathLike | None = None,
    ledger: PathLike | None = None,
    fingerprint_strength: float = 0.002,
    allow_short_passphrase: bool = False,
    licence_authority: str | None = None,
    model_id: str | None = None,
    **kw: Unpack[_EncryptKeywords],
) -> dict[str, Any]:
    """Encrypts the model ``src`` into ``dst`` (external data files next to it).

    ``licence_authority`` (``onnx-protect-signer1...``, with an optional ``model_id``)
    records that opening the model needs a licence signed by that publisher key.

    ``policy`` is a TOML policy file (docs/policy.md); the built-in default
    otherwise. ``overrides`` are ``coefficient``, ``mode``, ``subsequences``
    and ``selection``, as the command line's options (``mode="fp"``,
    ``coefficient={"Conv": 0.5}``, ``selection="*=l1"``). ``recipients`` are
    age X25519 recipients (``age1...``), age plugin recipients (``age1NAME1...``),
    TPM recipients (``onnx-protect-tpm1...``, wrapped for with no TPM at hand) or
    PKCS#11 key URIs (``pkcs11:...``), each optionally with its tier.
    ``fingerprint="ID"`` (with ``fingerprint_secret`` and ``ledger``) makes recipient
    ID's copy, as ``encrypt --fingerprint`` does (docs/tracing.md): a keyed mark of
    strength ``fingerprint_strength`` in the weights, recorded in the ledger; the
    report gains ``"fingerprint"``. (``--fingerprint-check`` is command-line only.)
    A passphrase shorter than 12 characters is refused (as by the command line) unless
    ``allow_short_passphrase``. Returns the encryption report.
    """
    if model_id is not None and licence_authority is None:
        raise TypeError("model_id goes with licence_authority")
    k = _key(**kw)
    given: dict[str, Any] = dict(kw)
    specs: list[tuple[str, str]] = []
    for what in _OVERRIDES:
        if what in given:
            specs += _override_specs(what, given[what])
    recips = [(r, 0) if isinstance(r, str) else (str(r[0]), int(r[1])) for r in kw["recipients"]]
    mark = None
    if fingerprint is not None or fingerprint_secret is not None or ledger is not None:
        if fingerprint is None or fingerprint_secret is None or ledger is None:
            raise TypeError("fingerprint, fingerprint_secret and ledger go together")
        mark = (str(fingerprint), os.fspath(fingerprint_secret), os.fspath(ledger), float(fingerprint_strength))
    report = _native.encrypt(
        os.fspath(src),
        os.fspath(dst),
        key=k,
        recipients=recips,
        policy_file=None if (policy := kw["policy"]) is None else os.fspath(policy),
        overrides=specs,
        seed=kw["seed"],
        tiers=kw["tiers"],
        tier_shares=None if (shares := kw["tier_shares"]) is None else [float(s) for s in shares],
        tier_classes=None if (groups := kw["tier_classes"]) is None else [[int(c) for c in g] for g in groups],
        allow_empty=allow_empty,
        fingerprint=mark,
        allow_short_passphrase=allow_short_passphrase,
        licence=None if licence_authority is None else (licence_authority, model_id),
    )
    report = json.loads(report)
    for w in report.get("warnings", ()):
        warnings.warn(w, UserWarning, stacklevel=2)
    return report


def fingerprint_secret(path: PathLike) -> dict[str, Any]:
    """Writes a new fingerprint secret file (mode 0600; never over an existing file), as
    ``onnx-protect keygen --fingerprint-secret`` does: the publisher's secret for
    ``encrypt(..., fingerprint=...)`` and ``onnx-protect trace``. Never give it to a
    recipient. Returns the file's path and key ID."""
    return json.loads(_native.fingerprint_secret(os.fspath(path)))


@_checked_keywords(takes=_OpenArgs)
def decrypt(src: PathLike, dst: PathLike, **kw: Unpack[_OpenArgs]) -> dict[str, Any]:
    """Verifies and decrypts ``src`` into the file ``dst`` (for a tiered model, up to
    ``tier``; default: the key's own tier). ``signers`` are trusted publishers
    (``onnx-protect-signer1...``): when given, a model without a valid signature of
    one of them is refused. Returns the decryption report."""
    k = _opening_key(kw)
    return json.loads(_native.decrypt(os.fspath(src), os.fspath(dst), key=k, tier=kw["tier"], signers=list(kw["signers"])))


@_checked_keywords(takes=_VerifyArgs)
def verify(path: PathLike, **kw: Unpack[_VerifyArgs]) -> dict[str, Any]:
    """Verifies a protected model: with a key, every MAC the key allows; without,
    the keyless content digest. Raises on failure; returns the report."""
    k = _opening_key(kw, required=False)
    return json.loads(_native.verify(os.fspath(path), key=k, signers=list(kw["signers"])))


def inspect(path: PathLike) -> dict[str, Any]:
    """The report of ``onnx-protect inspect --json`` (docs/inspect-json.md)."""
    return json.loads(_native.inspect(os.fspath(path)))


def keygen(path: PathLike, *, tiers: int = 1) -> dict[str, Any]:
    """Writes a new key file (mode 0600; never over an existing file). With
    ``tiers > 1`` also the keys of the lower tiers, ``PATH.tier1`` ... Returns
    the key file's path, fingerprint and tier key files."""
    return json.loads(_native.keygen(os.fspath(path), tiers=tiers))


def new_key(*, tiers: int = 1) -> bytes:
    """A new random master key, as the text of a key file (usable as ``key=``)."""
    return _native.new_key(tiers=tiers)


@_checked_keywords(takes=_OpenArgs)
def load(path: PathLike, **kw: Unpack[_OpenArgs]) -> DecryptedModel:
    """Decrypts the protected model at ``path`` into memory; nothing is written.

    Returns a :class:`DecryptedModel`: ``.model`` is the original model file as
    ``bytes``; ``.external`` maps each external data ``location`` to a read-only
    :class:`Buffer`; ``.close()`` (or ``with``) zeroes the buffers. The GIL is
    released while the model is verified and decrypted.
    """
    return _native.load(os.fspath(path), key=_opening_key(kw), tier=kw["tier"], signers=list(kw["signers"]))


# The onnxruntime sessions (_session.py) use the key arguments and load above.
from ._session import InferenceSession, UnsafeSessionOptions  # noqa: E402


def _memfd(name: str) -> int:
    """An anonymous in-memory file (no directory entry anywhere)."""
    if not hasattr(os, "memfd_create"):
        raise OnnxProtectError("export needs os.memfd_create (Linux) to keep the plaintext model off the disk")
    return os.memfd_create(name, getattr(os, "MFD_CLOEXEC", 0))


@_checked_keywords(_torch_export_keywords, takes=_EncryptArgs, rest=("torch_onnx_export_kwargs", "Any"))
def export(
    model: Any,
    args: Any,
    path: PathLike,
    *,
    overrides: Mapping[str, Override] | None = None,
    allow_short_passphrase: bool = False,
    # _EncryptArgs and any keyword argument of torch.onnx.export: typed Any, as a TypedDict
    # open to other names (PEP 728's extra_items) is not read by every type checker.
    **kw: Any,
) -> dict[str, Any]:
    """Exports the PyTorch ``model`` with ``torch.onnx.export`` and writes it
    protected to ``path``; no plaintext model is ever written to a file system.

    The exporter writes into an anonymous in-memory file (``memfd_create``), which
    is encrypted into ``path`` and then zeroed and closed. The whole model is kept
    in that one file (``external_data=False`` is passed unless you pass it), so
    models over 2 GiB cannot be exported this way. Policy arguments are those of
    :func:`encrypt` (``overrides`` maps ``coefficient``/``mode``/... to values).
    torch is imported here only. Returns the encryption report.
    """
    torch_kw: dict[str, Any] = dict(kw)
    encrypt_args = {name: torch_kw.pop(name) for name in _EncryptArgs.__annotations__}
    if torch_kw.get("external_data"):
        raise ValueError("export keeps the model in memory: external_data=True is not supported")
    torch_kw["external_data"] = False
    if "f" in torch_kw:
        raise TypeError("export writes to path; do not pass f")
    import torch

    k = _key(**encrypt_args)
    policy_args = {name: value for name, value in encrypt_args.items() if name not in _Keys.__annotations__}
    if k is not None:
        # Checks the key (and the passphrase's length) before torch runs.
        _native.check_encrypt_key(key=k, allow_short_passphrase=allow_short_passphrase)
    fd = _memfd("onnx-protect-export")
    plain = f"/proc/self/fd/{fd}"
    try:
        program = torch.onnx.export(model, args, plain, **torch_kw)
        del program
        try:
            return encrypt(
                plain, path, key=k, allow_short_passphrase=allow_short_passphrase,
                **policy_args, **dict(overrides or {}),
            )
        except OnnxProtectError as e:
            # The exported model has no name of its own: never show the memfd's.
            err = type(e)(str(e).replace(plain, "the model exported by torch"))
            err.kind = getattr(e, "kind", None)
            raise err.with_traceback(e.__traceback__) from None
    finally:
        _wipe_fd(fd)


def _wipe_fd(fd: int) -> None:
    """Overwrites the in-memory file with zeros, frees it and closes it."""
    try:
        size = os.fstat(fd).st_size
        zeros = bytes(min(size, 1 << 20))
        done = 0
        while done < size:
            n = os.pwrite(fd, zeros[: min(len(zeros), size - done)], done)
            if n <= 0:
                break
            done += n
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)
