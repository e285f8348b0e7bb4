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
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence, TypeVar, Union, cast

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

if TYPE_CHECKING:
    import onnxruntime

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

_OVERRIDES = ("coefficient", "mode", "subsequences", "selection")

#: The keyword arguments ``onnxruntime.InferenceSession`` reads from its ``**kwargs``
#: (onnxruntime 1.15 to 1.31); tests/python/test_package_keywords.py checks that the
#: installed onnxruntime reads no other.
_ORT_SESSION_KWARGS = ("enable_fallback", "read_config_from_model", "disabled_optimizers")

_F = TypeVar("_F", bound=Callable[..., Any])


def _checked_keywords(passthrough: Callable[[], Iterable[str] | None] = tuple) -> Callable[[_F], _F]:
    """Makes a function refuse, before it runs, a keyword argument that is neither one of
    its own parameters nor one of ``passthrough()``, the names it hands on to another
    function (``None``: that function takes any name): a :class:`TypeError` naming it, and
    the closest known name if one is close. A mistyped ``keyfile=`` would otherwise end as
    "a key is required", and a mistyped ``providrs=`` reach onnxruntime, which ignores
    names it does not read."""

    def decorate(f: _F) -> _F:
        code = f.__code__
        own = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]

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
            return f(*args, **kwargs)

        return cast(_F, checked)

    return decorate


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


def _key(
    key: Key | BytesLike | None = None,
    key_file: PathLike | None = None,
    key_env: str | None = None,
    passphrase: str | BytesLike | None = None,
    passphrase_env: str | None = None,
    identity_file: PathLike | None = None,
) -> Key | None:
    """The one key given, as a :class:`Key`; ``None`` if none was given."""
    given = {
        name: value
        for name, value in (
            ("key", key),
            ("key_file", key_file),
            ("key_env", key_env),
            ("passphrase", passphrase),
            ("passphrase_env", passphrase_env),
            ("identity_file", identity_file),
        )
        if value is not None
    }
    if len(given) > 1:
        raise ValueError(f"give only one of key, key_file, key_env, passphrase, passphrase_env, identity_file (got {', '.join(given)})")
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


def _required_key(**kw: Any) -> Key:
    k = _key(**kw)
    if k is None:
        raise ValueError("a key is required: give key, key_file, key_env, passphrase, passphrase_env or identity_file")
    return k


def _licensed(k: Key | None, licence: PathLike | None, licence_clock: PathLike | None) -> Key | None:
    """``k`` with the licence, if one was given."""
    if licence is None:
        if licence_clock is not None:
            raise ValueError("licence_clock goes with licence")
        return k
    if k is None:
        raise ValueError("a licence goes with a key")
    return k.with_licence(os.fspath(licence), clock=None if licence_clock is None else os.fspath(licence_clock))


def _opening_key(
    key: Key | BytesLike | None,
    key_file: PathLike | None,
    key_env: str | None,
    passphrase: str | BytesLike | None,
    passphrase_env: str | None,
    identity_file: PathLike | None,
    licence: PathLike | None,
    licence_clock: PathLike | None,
    required: bool = True,
) -> Key | None:
    """The one key given (an error if none was and it is ``required``), with the licence if
    one was given: the key arguments of the functions that open a model."""
    keys = dict(key=key, key_file=key_file, key_env=key_env, passphrase=passphrase,
                passphrase_env=passphrase_env, identity_file=identity_file)
    return _licensed(_required_key(**keys) if required else _key(**keys), licence, licence_clock)


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


@_checked_keywords(lambda: _OVERRIDES)
def encrypt(
    src: PathLike,
    dst: PathLike,
    *,
    key: Key | BytesLike | None = None,
    key_file: PathLike | None = None,
    key_env: str | None = None,
    passphrase: str | BytesLike | None = None,
    passphrase_env: str | None = None,
    recipients: Sequence[str | tuple[str, int]] = (),
    policy: PathLike | None = None,
    seed: int | None = None,
    tiers: int | None = None,
    tier_shares: Sequence[float] | None = None,
    allow_empty: bool = False,
    fingerprint: str | None = None,
    fingerprint_secret: PathLike | None = None,
    ledger: PathLike | None = None,
    fingerprint_strength: float = 0.002,
    allow_short_passphrase: bool = False,
    licence_authority: str | None = None,
    model_id: str | None = None,
    **overrides: Override,
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
    k = _key(key=key, key_file=key_file, key_env=key_env, passphrase=passphrase, passphrase_env=passphrase_env)
    specs: list[tuple[str, str]] = []
    for what in _OVERRIDES:
        if what in overrides:
            specs += _override_specs(what, overrides[what])
    recips = [(r, 0) if isinstance(r, str) else (str(r[0]), int(r[1])) for r in recipients]
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
        policy_file=None if policy is None else os.fspath(policy),
        overrides=specs,
        seed=seed,
        tiers=tiers,
        tier_shares=None if tier_shares is None else [float(s) for s in tier_shares],
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


@_checked_keywords()
def decrypt(
    src: PathLike,
    dst: PathLike,
    *,
    key: Key | BytesLike | None = None,
    key_file: PathLike | None = None,
    key_env: str | None = None,
    passphrase: str | BytesLike | None = None,
    passphrase_env: str | None = None,
    identity_file: PathLike | None = None,
    licence: PathLike | None = None,
    licence_clock: PathLike | None = None,
    tier: int | None = None,
    signers: Sequence[str] = (),
) -> dict[str, Any]:
    """Verifies and decrypts ``src`` into the file ``dst`` (for a tiered model, up to
    ``tier``; default: the key's own tier). ``signers`` are trusted publishers
    (``onnx-protect-signer1...``): when given, a model without a valid signature of
    one of them is refused. Returns the decryption report."""
    k = _opening_key(key, key_file, key_env, passphrase, passphrase_env, identity_file, licence, licence_clock)
    return json.loads(_native.decrypt(os.fspath(src), os.fspath(dst), key=k, tier=tier, signers=list(signers)))


@_checked_keywords()
def verify(
    path: PathLike,
    *,
    key: Key | BytesLike | None = None,
    key_file: PathLike | None = None,
    key_env: str | None = None,
    passphrase: str | BytesLike | None = None,
    passphrase_env: str | None = None,
    identity_file: PathLike | None = None,
    licence: PathLike | None = None,
    licence_clock: PathLike | None = None,
    signers: Sequence[str] = (),
) -> dict[str, Any]:
    """Verifies a protected model: with a key, every MAC the key allows; without,
    the keyless content digest. Raises on failure; returns the report."""
    k = _opening_key(key, key_file, key_env, passphrase, passphrase_env, identity_file, licence, licence_clock,
                     required=False)
    return json.loads(_native.verify(os.fspath(path), key=k, signers=list(signers)))


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


@_checked_keywords()
def load(
    path: PathLike,
    *,
    key: Key | BytesLike | None = None,
    key_file: PathLike | None = None,
    key_env: str | None = None,
    passphrase: str | BytesLike | None = None,
    passphrase_env: str | None = None,
    identity_file: PathLike | None = None,
    licence: PathLike | None = None,
    licence_clock: PathLike | None = None,
    tier: int | None = None,
    signers: Sequence[str] = (),
) -> DecryptedModel:
    """Decrypts the protected model at ``path`` into memory; nothing is written.

    Returns a :class:`DecryptedModel`: ``.model`` is the original model file as
    ``bytes``; ``.external`` maps each external data ``location`` to a read-only
    :class:`Buffer`; ``.close()`` (or ``with``) zeroes the buffers. The GIL is
    released while the model is verified and decrypted.
    """
    k = _opening_key(key, key_file, key_env, passphrase, passphrase_env, identity_file, licence, licence_clock)
    return _native.load(os.fspath(path), key=k, tier=tier, signers=list(signers))


# numpy dtype names of the ONNX element types that numpy has.
_NUMPY_DTYPES = {
    "FLOAT": "float32",
    "UINT8": "uint8",
    "INT8": "int8",
    "UINT16": "uint16",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
    "FLOAT16": "float16",
    "DOUBLE": "float64",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "COMPLEX64": "complex64",
    "COMPLEX128": "complex128",
}

#: Providers on which shared initializers are used in place (the CPU's memory).
_IN_PLACE_PROVIDERS = {"CPUExecutionProvider", "AzureExecutionProvider"}


class UnsafeSessionOptions(OnnxProtectError, ValueError):
    """Session options that would make onnxruntime write the decrypted model, its
    weights or an execution provider's compiled copy of them to a file."""

    kind = "unsafe_session_options"


def _config_entry(so: Any, key: str) -> str:
    try:
        return str(so.get_session_config_entry(key))
    except RuntimeError:  # onnxruntime raises for a key that was never set
        return ""


#: Provider options that make an execution provider write a compiled copy of the model
#: (with its weights) to disk, by provider.
_PROVIDER_CACHES = {
    "TensorrtExecutionProvider": ("trt_engine_cache_enable", "trt_dump_ep_context_model", "trt_timing_cache_enable"),
    "NvTensorRTRTXExecutionProvider": ("nv_dump_ep_context_model", "ep.context_enable"),
    "OpenVINOExecutionProvider": ("cache_dir",),
    "CoreMLExecutionProvider": ("ModelCacheDirectory",),
    "QNNExecutionProvider": ("qnn_context_cache_enable",),
    "MIGraphXExecutionProvider": ("migraphx_save_compiled_model",),
}


def _refuse_disk_writes(so: Any, providers: Any, provider_options: Any) -> None:
    """Raises :class:`UnsafeSessionOptions` for options that write the decrypted model or
    its initializers to disk: ``optimized_model_filepath`` (named in the refusal with
    ``session.optimized_model_external_initializers_file_name`` if given) and providers'
    compiled-model caches. Then switches EP context models off on ``so``
    (``ep.context_enable`` set to ``"0"``; onnxruntime logs a warning when it was on), as
    the Rust loader does: reading the entry first would cost the process's first C++
    exception (onnxruntime raises for an entry never set). Profiling is allowed."""
    why = []
    if so.optimized_model_filepath:
        name = _config_entry(so, "session.optimized_model_external_initializers_file_name")
        why.append(f"optimized_model_filepath ({so.optimized_model_filepath!r}) saves the optimized model with its weights"
                   + (f" (session.optimized_model_external_initializers_file_name: {name!r})" if name else ""))
    pairs = []
    for i, p in enumerate(providers or ()):
        if isinstance(p, (tuple, list)) and len(p) == 2:
            pairs.append((p[0], dict(p[1])))
        elif provider_options and i < len(provider_options):
            pairs.append((p, dict(provider_options[i])))
    for prov, opts in pairs:
        for k in _PROVIDER_CACHES.get(prov, ()):
            v = opts.get(k)
            if v not in (None, "", 0, False, "0", "false", "False"):
                why.append(f"{prov} option {k}={v!r} writes a compiled copy of the model to disk")
    if why:
        raise UnsafeSessionOptions(
            "refused: these options would make onnxruntime write the decrypted model to disk: "
            + "; ".join(why) + " (clear them; profiling is allowed)"
        )
    so.add_session_config_entry("ep.context_enable", "0")


def _ort_supports_files_in_memory(ort: Any) -> bool:
    return hasattr(ort.SessionOptions, "add_external_initializers_from_files_in_memory")


def _ort_reads_files_in_place(ort: Any) -> bool:
    """Whether onnxruntime reads external data files given from memory in place (the
    session option ``session.use_external_initializer_file_buffers_directly``, from 1.31;
    earlier releases copy them)."""
    try:
        version = tuple(int(p) for p in ort.__version__.split("+")[0].split(".")[:2])
    except ValueError:
        return False
    return version >= (1, 31) and _ort_supports_files_in_memory(ort)


_session_classes: dict[int, type] = {}


def _session_class(ort: Any) -> type:
    """The ``onnxruntime.InferenceSession`` subclass that :func:`InferenceSession` returns
    (made when onnxruntime is first imported here)."""
    cls = _session_classes.get(id(ort))
    if cls is None:

        class ProtectedInferenceSession(ort.InferenceSession):  # type: ignore[misc, name-defined]
            """An ``onnxruntime.InferenceSession`` of a protected model, built from memory
            by ``onnx_protect.InferenceSession``.

            ``onnx_protect_weights`` says how the decrypted weights reached onnxruntime:
            ``"in_place"`` (the shared tensors through ``add_initializer``, the rest in the
            graph), ``"graph"`` (every tensor in the graph: ``in_place=False``, nothing to
            share, or onnxruntime refused the shared graph), ``"files_in_memory"`` or
            ``"initializers"`` (the fallbacks for unshared data over 2 GiB)."""

            onnx_protect_weights = "graph"
            _onnx_protect_released = False

            def set_providers(self, providers: Any = None, provider_options: Any = None) -> None:
                # onnxruntime re-creates the session from the options, which still point
                # at the external data files given from memory: released, once copied.
                if self._onnx_protect_released:
                    raise OnnxProtectError(
                        "the decrypted external data of this session was zeroed and released once "
                        "onnxruntime had copied it, so the session cannot be re-created; call "
                        "onnx_protect.InferenceSession(..., providers=...) again instead"
                    )
                _refuse_disk_writes(self._sess_options, providers, provider_options)
                super().set_providers(providers, provider_options)

        cls = _session_classes[id(ort)] = ProtectedInferenceSession
    return cls


# What this package added to each SessionOptions with add_initializer: name ->
# (array, OrtValue). onnxruntime keeps a pointer to each OrtValue in the options (it has
# no call to remove one), so they live as long as the options do.
_added: Any = None


def _added_to(so: Any) -> dict[str, tuple[Any, Any]]:
    global _added
    if _added is None:
        import weakref

        _added = weakref.WeakKeyDictionary()
    return _added.setdefault(so, {})


def _provider_names(ort: Any, providers: Any) -> list[str]:
    if not providers:
        return list(ort.get_available_providers())
    return [p[0] if isinstance(p, (tuple, list)) else str(p) for p in providers]


def _add_shared(ort: Any, np: Any, so: Any, sm: Any) -> list[Any]:
    """Adds the shared tensors of ``sm`` to ``so`` in place (``add_initializer`` over
    views of the decrypted memory). A name this package already added to ``so`` for
    byte-identical data is reused (the sessions share it); for other data, refused."""
    added = _added_to(so)
    keep = []
    for name, dtype, dims, view in sm.shared:
        a = np.frombuffer(view, dtype=dtype).reshape(tuple(dims))
        if name in added:
            old = added[name][0]
            if old.dtype == a.dtype and old.shape == a.shape and np.array_equal(old.view(np.uint8), a.view(np.uint8)):
                continue
            raise OnnxProtectError(
                f"this SessionOptions already supplies initializer {name!r} with other data (added for another "
                "model) and onnxruntime cannot remove it; use a new onnxruntime.SessionOptions() for this model"
            )
        v = ort.OrtValue.ortvalue_from_numpy(a)
        so.add_initializer(name, v)
        added[name] = (a, v)
        keep.append((a, v))
    return keep


def _check_reuse(so: Any, names: Sequence[str]) -> None:
    """Refuses options that already supply (for another model) an initializer this
    model has but does not share: onnxruntime would use the stale one."""
    added = _added.get(so, {}) if _added is not None else {}
    stale = sorted(n for n in names if n in added)
    if stale:
        raise OnnxProtectError(
            f"this SessionOptions already supplies initializer(s) {', '.join(map(repr, stale[:5]))} added for "
            "another model, which onnxruntime would use instead of this model's (it cannot remove them); "
            "use a new onnxruntime.SessionOptions() for this model"
        )


@_checked_keywords(lambda: _ORT_SESSION_KWARGS)
def InferenceSession(  # noqa: N802 (named as the onnxruntime class it returns)
    path_or_bytes: PathLike | bytes,
    sess_options: onnxruntime.SessionOptions | None = None,
    providers: Sequence[Any] | None = None,
    provider_options: Sequence[dict[Any, Any]] | None = None,
    *,
    key: Key | BytesLike | None = None,
    key_file: PathLike | None = None,
    key_env: str | None = None,
    passphrase: str | BytesLike | None = None,
    passphrase_env: str | None = None,
    identity_file: PathLike | None = None,
    licence: PathLike | None = None,
    licence_clock: PathLike | None = None,
    tier: int | None = None,
    signers: Sequence[str] = (),
    in_place: bool | None = None,
    on_demand: bool = True,
    **onnxruntime_kwargs: Any,
) -> onnxruntime.InferenceSession:
    """An ``onnxruntime.InferenceSession`` of the protected model ``path_or_bytes`` (a
    path, or the protected model's bytes: external data is then looked up in the
    current directory, as onnxruntime does), built from memory: no plaintext file is
    written. The positional arguments are onnxruntime's; the key is one keyword
    argument as elsewhere in this package. Other keyword arguments are handed on to
    onnxruntime when they are ones it reads (``enable_fallback``,
    ``read_config_from_model``, ``disabled_optimizers``); any other name raises
    :class:`TypeError` naming it.

    Float ``MatMul``/``Gemm`` weights, recurrent weights and embedding tables of at least
    64 KiB reach onnxruntime in place (``SessionOptions.add_initializer`` over views of
    the decrypted memory, kept alive with the session and the options); every other
    tensor is in the graph handed over as bytes, which onnxruntime copies. ``in_place``:
    ``None`` (default) shares such tensors when every provider is the CPU's, ``True``
    always tries and shares them from 1 KiB, ``False`` never. If onnxruntime refuses
    the shared graph, the session is created again with every tensor in the graph.
    ``on_demand`` (default ``True``): external data files of a model read from a path
    are filled on demand where the system can (Linux ``userfaultfd``): each chunk
    checked against its hash and decrypted when onnxruntime first reads it, or a little
    before, so the session's time and peak memory stay near those of the plain file;
    ``False`` decrypts them whole first (about 1.7 times the memory). A chunk that does
    not match raises :class:`OnnxProtectError` (``kind`` ``"modified"``) and no session
    is returned. Options that would write the decrypted model to disk raise
    :class:`UnsafeSessionOptions`; EP context models are switched off
    (``ep.context_enable`` set to ``"0"`` on ``sess_options``). See docs/python.md.
    """
    import numpy as np
    import onnxruntime as ort

    k = _opening_key(key, key_file, key_env, passphrase, passphrase_env, identity_file, licence, licence_clock)
    so = sess_options if sess_options is not None else ort.SessionOptions()
    _refuse_disk_writes(so, providers, provider_options)
    if isinstance(path_or_bytes, (bytearray, memoryview)):
        path_or_bytes = bytes(path_or_bytes)
    source = path_or_bytes if isinstance(path_or_bytes, bytes) else os.fspath(path_or_bytes)
    # By default tensors under 64 KiB stay in the graph (onnxruntime copies them faster
    # than it takes them in place); in_place=True shares every eligible tensor.
    min_shared = 1024 if in_place is True else 64 << 10
    if in_place is not False and _ort_reads_files_in_place(ort):
        return _session_from_files(ort, np, source, k, tier, signers, so, providers, provider_options, on_demand,
                                   onnxruntime_kwargs)
    if in_place is None:
        in_place = set(_provider_names(ort, providers)) <= _IN_PLACE_PROVIDERS
    try:
        sm = _native.session_model(
            source, key=k, tier=tier, signers=list(signers), share=bool(in_place), on_demand=bool(on_demand),
            min_shared=min_shared,
        )
    except MalformedModel as e:
        if "more than a graph can hold" not in str(e):
            raise
        return _session_with_external_files(ort, np, source, k, tier, signers, so, providers, provider_options, onnxruntime_kwargs)
    if _added is not None and so in _added:
        _check_reuse(so, sm.unshared_initializers)
    cls = _session_class(ort)
    keep = _add_shared(ort, np, so, sm) if sm.shared else []
    weights = "in_place" if sm.shared else "graph"
    try:
        session = cls(sm.graph(share=bool(sm.shared)), so, providers, provider_options, **onnxruntime_kwargs)
    except Exception:
        if not sm.shared:
            raise
        # onnxruntime read a shared tensor from the graph (an optimisation this package
        # did not foresee, or a provider that copies initializers): the reads fail
        # (external data at "."), so build the graph with every tensor in it. The
        # options keep the shared values, which equal the graph's.
        session = cls(sm.graph(share=False), so, providers, provider_options, **onnxruntime_kwargs)
        weights = "graph"
    session.onnx_protect_weights = weights
    sm.release()
    session._onnx_protect_buffers = (sm, keep)  # type: ignore[attr-defined]
    return session


# The onnxruntime session option under which it reads external data files given from
# memory in place instead of copying them (onnx_protect_session::files::DIRECT).
_DIRECT_FILES = "session.use_external_initializer_file_buffers_directly"


def _session_from_files(
    ort: Any, np: Any, source: Any, k: Key, tier: int | None, signers: Sequence[str], so: Any,
    providers: Any, provider_options: Any, on_demand: bool, kwargs: dict[str, Any],
) -> Any:
    """onnxruntime >= 1.31: every large tensor reaches onnxruntime as external data in a
    file given from memory (the decrypted buffers, read in place), the graph holds none
    of their bytes, and every graph optimisation reads the real bytes."""
    sf = _native.session_files(source, key=k, tier=tier, signers=list(signers), on_demand=bool(on_demand))
    files = sf.files
    arrays = [np.frombuffer(view, dtype=np.uint8) for _, view in files]
    if files:
        so.add_session_config_entry(_DIRECT_FILES, "1")
        so.add_external_initializers_from_files_in_memory([n for n, _ in files], arrays, [a.size for a in arrays])
    session = _session_class(ort)(sf.graph(), so, providers, provider_options, **kwargs)
    sf.release()
    # onnxruntime reads the buffers for the session's life (and again if set_providers
    # makes it anew): they live as long as the session.
    session._onnx_protect_buffers = (sf, arrays)  # type: ignore[attr-defined]
    session.onnx_protect_weights = "files_in_place" if files else "graph"
    return session


def _session_with_external_files(
    ort: Any, np: Any, source: Any, k: Key, tier: int | None, signers: Sequence[str], so: Any,
    providers: Any, provider_options: Any, kwargs: dict[str, Any],
) -> Any:
    """A model whose external data not shared in place is over 2 GiB: the external files
    are handed to onnxruntime from memory (copied while it creates the session)."""
    if isinstance(source, bytes):
        raise OnnxProtectError("a model with over 2 GiB of external data is loaded from its path, not from bytes")
    m = load(source, key=k, tier=tier, signers=signers)
    external = m.external
    _check_reuse(so, [t.name for t in m.external_tensors])
    if _ort_supports_files_in_memory(ort):
        names = list(external)
        arrays = [np.frombuffer(external[n], dtype=np.uint8) for n in names]
        so.add_external_initializers_from_files_in_memory(names, arrays, [len(external[n]) for n in names])
        try:
            session = _session_class(ort)(m.model, so, providers, provider_options, **kwargs)
        finally:
            del arrays
            m.close()  # onnxruntime copied the files while it created the session
        session._onnx_protect_released = True
        session.onnx_protect_weights = "files_in_memory"
        return session
    names, values = [], []
    for t in m.external_tensors:
        dtype = _NUMPY_DTYPES.get(t.data_type)
        if dtype is None:
            raise OnnxProtectError(
                f"external initializer {t.name!r} is {t.data_type}, which numpy cannot hold; onnxruntime >= 1.24.1 "
                "takes whole external files from memory"
            )
        buf = external.get(t.location)
        if buf is None:
            raise OnnxProtectError(f"external initializer {t.name!r}: no decrypted data file {t.location!r}")
        count = t.length // np.dtype(dtype).itemsize
        a = np.frombuffer(buf, dtype=dtype, count=count, offset=t.offset).reshape(tuple(t.dims))
        names.append(t.name)
        values.append(ort.OrtValue.ortvalue_from_numpy(a))
    so.add_external_initializers(names, values)
    session = _session_class(ort)(m.model, so, providers, provider_options, **kwargs)
    session._onnx_protect_buffers = (m, values)  # type: ignore[attr-defined]
    session.onnx_protect_weights = "initializers"
    return session


def _memfd(name: str) -> int:
    """An anonymous in-memory file (no directory entry anywhere)."""
    if not hasattr(os, "memfd_create"):
        raise OnnxProtectError("export needs os.memfd_create (Linux) to keep the plaintext model off the disk")
    return os.memfd_create(name, getattr(os, "MFD_CLOEXEC", 0))


@_checked_keywords(_torch_export_keywords)
def export(
    model: Any,
    args: Any,
    path: PathLike,
    *,
    key: Key | BytesLike | None = None,
    key_file: PathLike | None = None,
    key_env: str | None = None,
    passphrase: str | BytesLike | None = None,
    passphrase_env: str | None = None,
    recipients: Sequence[str | tuple[str, int]] = (),
    policy: PathLike | None = None,
    seed: int | None = None,
    tiers: int | None = None,
    tier_shares: Sequence[float] | None = None,
    overrides: Mapping[str, Override] | None = None,
    allow_short_passphrase: bool = False,
    **torch_onnx_export_kwargs: Any,
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
    kw = dict(torch_onnx_export_kwargs)
    if kw.get("external_data"):
        raise ValueError("export keeps the model in memory: external_data=True is not supported")
    kw["external_data"] = False
    if "f" in kw:
        raise TypeError("export writes to path; do not pass f")
    import torch

    k = _key(key=key, key_file=key_file, key_env=key_env, passphrase=passphrase, passphrase_env=passphrase_env)
    policy_args = dict(policy=policy, seed=seed, tiers=tiers, tier_shares=tier_shares)
    if k is not None:
        # Checks the key (and the passphrase's length) before torch runs.
        _native.check_encrypt_key(key=k, allow_short_passphrase=allow_short_passphrase)
    fd = _memfd("onnx-protect-export")
    plain = f"/proc/self/fd/{fd}"
    try:
        program = torch.onnx.export(model, args, plain, **kw)
        del program
        try:
            return encrypt(
                plain, path, key=k, recipients=recipients, allow_short_passphrase=allow_short_passphrase,
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
