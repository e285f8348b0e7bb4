"""onnxruntime sessions of protected models, built from memory: :func:`InferenceSession`
(``onnx_protect.InferenceSession``) and the ways it hands the decrypted weights over."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Sequence, Unpack

from . import (
    _ORT_SESSION_KWARGS,
    PathLike,
    _checked_keywords,
    _native,
    _opening_key,
    _OpenArgs,
    _OrtSessionArgs,
    load,
)
from ._native import Key, MalformedModel, OnnxProtectError

if TYPE_CHECKING:
    import onnxruntime


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
    __module__ = "onnx_protect"  # the name it is raised and caught under


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


class _SessionKeywords(_OpenArgs, _OrtSessionArgs, total=False):
    """:func:`InferenceSession`'s ``**kw``: the key arguments and onnxruntime's own."""


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


@_checked_keywords(lambda: _ORT_SESSION_KWARGS, takes=_OpenArgs, rest=("onnxruntime_kwargs", "Any"))
def InferenceSession(  # noqa: N802 (named as the onnxruntime class it returns)
    path_or_bytes: PathLike | bytes,
    sess_options: onnxruntime.SessionOptions | None = None,
    providers: Sequence[Any] | None = None,
    provider_options: Sequence[dict[Any, Any]] | None = None,
    *,
    in_place: bool | None = None,
    on_demand: bool = True,
    verify_on_read: bool = False,
    **kw: Unpack[_SessionKeywords],
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
    ``on_demand`` (default ``True``): external data files of a model read from a path,
    and with onnxruntime >= 1.31 the weights stored in a model file of 16 MiB or more,
    are filled on demand where the system can (Linux ``userfaultfd``): each chunk
    checked against its hash and decrypted when onnxruntime first reads it, or a little
    before, so the session's time and peak memory stay near those of the plain file;
    ``False`` decrypts them whole first (about 1.7 times the memory). With prepacking off
    (``session.disable_prepacking`` set to ``"1"`` on ``sess_options``), when onnxruntime
    reads few weights while it builds, only what it reads (and what it reads in order,
    ahead) is filled, and a few blocks of it stay until the session exists. A chunk that does
    not match raises :class:`OnnxProtectError` (``kind`` ``"modified"``) and no session
    is returned. ``verify_on_read`` (default ``False``): a chunk of the external data
    files filled on demand is verified when onnxruntime first reads it, and only the
    chunks filled while the session is built (read, or filled ahead) are verified before
    it is returned: with
    prepacking off (``session.disable_prepacking``), when onnxruntime reads few weights
    while it builds, the session then takes less time (docs/performance.md); a chunk
    that does not match and is first read later (in a run) ends the process with one line
    on standard error, as a chunk changed on disk after the session was built always
    does. Options that would write the decrypted model to disk raise
    :class:`UnsafeSessionOptions`; EP context models are switched off
    (``ep.context_enable`` set to ``"0"`` on ``sess_options``). See docs/python.md.
    """
    import numpy as np
    import onnxruntime as ort

    k = _opening_key(kw)
    tier, signers = kw["tier"], kw["signers"]
    onnxruntime_kwargs = {name: kw[name] for name in _ORT_SESSION_KWARGS if name in kw}  # type: ignore[literal-required]
    so = sess_options if sess_options is not None else ort.SessionOptions()
    _refuse_disk_writes(so, providers, provider_options)
    if isinstance(path_or_bytes, (bytearray, memoryview)):
        path_or_bytes = bytes(path_or_bytes)
    source = path_or_bytes if isinstance(path_or_bytes, bytes) else os.fspath(path_or_bytes)
    # By default tensors under 64 KiB stay in the graph (onnxruntime copies them faster
    # than it takes them in place); in_place=True shares every eligible tensor.
    min_shared = 1024 if in_place is True else 64 << 10
    if in_place is not False and _ort_reads_files_in_place(ort):
        return _session_from_files(ort, np, source, k, tier, signers, so, providers, provider_options,
                                   (bool(on_demand), bool(verify_on_read), _reads_few(so)), onnxruntime_kwargs)
    if in_place is None:
        in_place = set(_provider_names(ort, providers)) <= _IN_PLACE_PROVIDERS
    try:
        sm = _native.session_model(
            source, key=k, tier=tier, signers=list(signers), share=bool(in_place), on_demand=bool(on_demand),
            min_shared=min_shared, verify_on_read=bool(verify_on_read), reads_few=_reads_few(so),
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


def _reads_few(so: Any) -> bool:
    """Whether onnxruntime reads few weights while it builds a session with the options
    ``so``: prepacking off (``session.disable_prepacking`` = ``"1"``), when it keeps views
    of most weights and reads them in its first run."""
    return _config_entry(so, "session.disable_prepacking") == "1"


# The onnxruntime session option under which it reads external data files given from
# memory in place instead of copying them (onnx_protect_session::files::DIRECT).
_DIRECT_FILES = "session.use_external_initializer_file_buffers_directly"


def _session_from_files(
    ort: Any, np: Any, source: Any, k: Key, tier: int | None, signers: Sequence[str], so: Any,
    providers: Any, provider_options: Any, filling: tuple[bool, bool, bool], kwargs: dict[str, Any],
) -> Any:
    """onnxruntime >= 1.31: every large tensor reaches onnxruntime as external data in a
    file given from memory (the decrypted buffers, read in place), the graph holds none
    of their bytes, and every graph optimisation reads the real bytes. ``filling``:
    ``(on_demand, verify_on_read, reads_few)``."""
    on_demand, verify_on_read, reads_few = filling
    sf = _native.session_files(source, key=k, tier=tier, signers=list(signers), on_demand=on_demand,
                               verify_on_read=verify_on_read, reads_few=reads_few)
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
