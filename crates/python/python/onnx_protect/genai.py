"""Protected onnxruntime-genai model folders, loaded from memory.

``Model(folder, key_file=...)`` returns an ``onnxruntime_genai.Model`` of a folder
protected with ``onnx-protect encrypt DIR -o OUT_DIR``: every model the folder's
``genai_config.json`` names is verified and decrypted into memory, its graph handed to
onnxruntime-genai with ``Config.add_model_data`` and its weights as external data files
given to onnxruntime from memory (read in place from onnxruntime 1.31 on); no plaintext
is written anywhere. ``Config(folder, ...)`` gives the ``onnxruntime_genai.Config`` for an
application that sets providers or options itself before ``Model(config)``.

onnxruntime-genai reads external data only from disk and takes no files in memory, but
it lets a model's ``session_options`` name a ``custom_ops_library``, which onnxruntime
opens and calls with the options of the session being created: this package's native
module is that library (see ``crates/python/src/genai.rs``). onnxruntime-genai opens it
only from the model folder, so the ``Config`` is made from a private folder holding
copies of the protected folder's other files (configuration, tokenizer) and of the
native module; it is removed when the model is collected. See docs/genai.md.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile
import functools
import weakref
from typing import TYPE_CHECKING, Any, Iterator, Sequence, Unpack

from . import (
    Key,
    OnnxProtectError,
    PathLike,
    UnsafeSessionOptions,
    _checked_keywords,
    _native,
    _opening_key,
    _OpenArgs,
)
from ._session import _PROVIDER_CACHES

if TYPE_CHECKING:  # pragma: no cover
    import onnxruntime_genai

__all__ = ["Config", "Model"]

#: The name of the native module's copy in the private folder.
_HOOK = "onnx_protect_genai_hook.so"

#: genai_config.json session options that make onnxruntime write the decrypted model,
#: or an EP context model holding its weights, to disk.
_DISK_WRITES = ("ep.context_enable", "ep.context_file_path", "session.optimized_model_filepath")


def _og() -> Any:
    try:
        import onnxruntime_genai as og
    except ImportError as e:  # pragma: no cover - the message is the test
        raise ImportError("onnx_protect.genai needs onnxruntime-genai: pip install onnxruntime-genai") from e
    return og


def _walk(node: Any, path: str) -> Iterator[tuple[str, str, Any]]:
    """Every ``(path, key, value)`` of a JSON tree, dictionaries' keys in order."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield path, k, v
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")


def _model_files(cfg: dict[str, Any]) -> list[str]:
    """The ONNX files the configuration names (``filename`` under ``model``), in order."""
    names: list[str] = []
    for _, k, v in _walk(cfg.get("model", {}), "model"):
        if k == "filename" and isinstance(v, str) and v not in names:
            names.append(v)
    return names


def _session_option_sections(cfg: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(path, session_options)`` of every model section of the configuration."""
    return [
        (f"{p}.{k}", v) for p, k, v in _walk(cfg.get("model", {}), "model") if k == "session_options" and isinstance(v, dict)
    ]


def _truthy(v: Any) -> bool:
    return v not in (None, "", 0, False, "0", "false", "False")


def _refuse_disk_writes(cfg: dict[str, Any]) -> None:
    """Raises :class:`UnsafeSessionOptions` for configuration entries that would make
    onnxruntime write the decrypted model to disk, and for a ``custom_ops_library`` (the
    loader's own entry point takes that place)."""
    why = []
    for where, so in _session_option_sections(cfg):
        for k in _DISK_WRITES:
            if k in so and (_truthy(so[k]) if k == "ep.context_enable" else bool(so[k])):
                why.append(f"{where}.{k} = {so[k]!r}")
        if "custom_ops_library" in so:
            why.append(f"{where}.custom_ops_library = {so['custom_ops_library']!r} (not supported with a protected folder)")
        cache_options = {o for opts in _PROVIDER_CACHES.values() for o in opts}
        for i, prov in enumerate(so.get("provider_options", []) or []):
            for name, opts in (prov.items() if isinstance(prov, dict) else ()):
                for k, v in (opts.items() if isinstance(opts, dict) else ()):
                    if k in cache_options and _truthy(v):
                        why.append(f"{where}.provider_options[{i}].{name}.{k} = {v!r}")
    if why:
        raise UnsafeSessionOptions(
            "refused: genai_config.json asks onnxruntime to write the decrypted model to disk or to load "
            "another library: " + "; ".join(why)
        )


def _overlay(cfg: dict[str, Any], value: str) -> str:
    """The configuration overlay that names the entry point and the staged files in every
    model section's ``session_options``."""
    entries = {"custom_ops_library": _HOOK, "onnx_protect.genai": value}

    def patch(node: Any) -> Any:
        if isinstance(node, dict):
            out: dict[str, Any] = {}
            for k, v in node.items():
                if isinstance(v, (dict, list)):
                    sub = patch(v)
                    if sub:
                        out[k] = sub
            if "filename" in node:
                out["session_options"] = {**out.get("session_options", {}), **entries}
            return out
        if isinstance(node, list):
            return [patch(v) for v in node]
        return None

    return json.dumps({"model": patch(cfg.get("model", {}))})


class _Loaded:
    """What a protected folder's models keep alive: the decrypted files and the private
    folder. Removes the folder when collected."""

    def __init__(self, private: pathlib.Path, files: list[Any], token: str) -> None:
        self.private = private
        self.files = files
        self.token = token
        self.graphs: list[bytes] = []
        self._done = weakref.finalize(self, _cleanup, str(private), token)


def _cleanup(private: str, token: str) -> None:
    _native.genai_unstage(token)
    shutil.rmtree(private, ignore_errors=True)


_PRIVATE = "onnx-protect-genai-"


def _remove_stale() -> None:
    """Removes the private folders of this user's processes that ended without removing
    theirs (killed): `onnx-protect-genai-PID-*` whose process is gone."""
    tmp = pathlib.Path(tempfile.gettempdir())
    try:
        entries = list(tmp.iterdir())
    except OSError:
        return
    for d in entries:
        parts = d.name[len(_PRIVATE):].split("-", 1)
        if not d.name.startswith(_PRIVATE) or len(parts) != 2 or not parts[0].isdigit():
            continue
        try:
            if d.is_symlink() or not d.is_dir() or d.stat().st_uid != os.getuid():
                continue
            os.kill(int(parts[0]), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except (OSError, OverflowError):
            continue  # alive under another user, or unreadable: not ours to remove


def _load(folder: PathLike, k: Key, tier: int | None, signers: Sequence[str], on_demand: bool) -> Any:
    folder = pathlib.Path(os.fspath(folder))
    _remove_stale()
    private = pathlib.Path(tempfile.mkdtemp(prefix=f"{_PRIVATE}{os.getpid()}-"))
    token = None
    try:
        # The folder's bindings agree (nothing missing, changed, extra or swapped) and its
        # other files are copied into the private folder, each copy checked against its hash.
        models = dict(_native.genai_folder(str(folder), str(private)))
        cfg_path = private / "genai_config.json"
        if not cfg_path.is_file():
            raise OnnxProtectError(f"{folder}: no genai_config.json (not an onnxruntime-genai model folder)")
        try:
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise OnnxProtectError(f"{folder / 'genai_config.json'}: not JSON: {e}") from None
        if not isinstance(cfg, dict):
            raise OnnxProtectError(f"{folder / 'genai_config.json'}: not a JSON object")
        _refuse_disk_writes(cfg)
        names = _model_files(cfg)
        if not names:
            raise OnnxProtectError(f"{folder / 'genai_config.json'}: names no model file")
        loaded = []
        for name in names:
            if name not in models:
                raise OnnxProtectError(f"{folder / name}: genai_config.json names a model the protected folder does not hold")
            sf = _native.session_files(str(models[name]), key=k, tier=tier, signers=list(signers), on_demand=on_demand)
            loaded.append((name, sf))
        token = _native.genai_stage([sf for _, sf in loaded])
        shutil.copyfile(_native.__file__, private / _HOOK)
    except BaseException:
        if token is not None:
            _native.genai_unstage(token)
        shutil.rmtree(private, ignore_errors=True)
        raise
    keep = _Loaded(private, [sf for _, sf in loaded], token)
    config = _classes()[0](str(private))
    config._onnx_protect = keep
    for name, sf in loaded:
        # onnxruntime-genai keeps a pointer to the bytes, not a copy: they live with `keep`.
        graph = sf.graph()
        keep.graphs.append(graph)
        config.add_model_data(name, graph)
    config.overlay(_overlay(cfg, f"{token}\t{_native.__file__}"))
    return config


@functools.cache
def _classes() -> tuple[type, type]:
    """Subclasses of ``onnxruntime_genai.Config`` and ``Model`` that keep the decrypted
    memory and the private folder alive (``isinstance`` of the originals)."""
    og = _og()

    class ProtectedConfig(og.Config):  # type: ignore[misc, name-defined]
        """An ``onnxruntime_genai.Config`` of a protected folder."""

        _onnx_protect: _Loaded

    class ProtectedModel(og.Model):  # type: ignore[misc, name-defined]
        """An ``onnxruntime_genai.Model`` that keeps its decrypted weights alive."""

        _onnx_protect: _Loaded

    return ProtectedConfig, ProtectedModel


@_checked_keywords(takes=_OpenArgs)
def Config(  # noqa: N802 (named as the onnxruntime_genai class it returns)
    folder: PathLike, *, on_demand: bool = True, **kw: Unpack[_OpenArgs],
) -> onnxruntime_genai.Config:
    """An ``onnxruntime_genai.Config`` of the protected folder ``folder``, its models
    verified, decrypted into memory and registered: set providers or options on it, then
    ``onnx_protect.genai.Model(config)``. Keys as for ``onnx_protect.InferenceSession``."""
    return _load(folder, _opening_key(kw), kw["tier"], kw["signers"], on_demand)


def Model(  # noqa: N802 (named as the onnxruntime_genai class it returns)
    folder_or_config: PathLike | onnxruntime_genai.Config, **keys: Any,
) -> onnxruntime_genai.Model:
    """An ``onnxruntime_genai.Model`` of the protected folder, with the keyword arguments
    of :func:`Config`, or of a config from :func:`Config`, then without any. The
    decrypted weights are read in place by onnxruntime: they live as long as the returned
    model object, so keep it while its generators and tokenizers are in use."""
    og = _og()
    if isinstance(folder_or_config, og.Config):
        if keys:
            raise TypeError("a config from onnx_protect.genai.Config carries its models: no key is taken")
        config = folder_or_config
    else:
        config = Config(folder_or_config, **keys)
    keep = getattr(config, "_onnx_protect", None)
    if keep is None:
        raise OnnxProtectError("this onnxruntime_genai.Config was not made by onnx_protect.genai.Config")
    model = _classes()[1](config)
    for sf in keep.files:
        sf.release()
        # onnxruntime packed its own copy of what it read (MatMulNBits, MatMul weights):
        # what stays filled of the decrypted files goes, and is filled again if read.
        sf.trim()
    model._onnx_protect = keep
    return model
