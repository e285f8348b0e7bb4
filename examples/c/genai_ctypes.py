"""A protected onnxruntime-genai folder through the C ABIs of onnx-protect and onnxruntime-genai.

    python3 examples/c/genai_ctypes.py LIBONNX_PROTECT.so PROTECTED_DIR KEY_FILE [PROMPT]

Every call is a C call through ctypes, in the order a C or C++ program makes them
(docs/genai.md, "C and C++"): `onnx_protect_folder_open` checks the folder (bindings, every
file's hash, the key opens every model) and copies its other files into a private folder, checked;
each model of the folder is decrypted with `onnx_protect_file_decrypt_for_session`; a copy of the
library goes into the private folder; `OgaCreateConfig` on it, `OgaConfigAddModelData` with each graph,
`onnx_protect_genai_stage` for the files, `OgaConfigOverlay` with the library and the
staging, `OgaCreateModelFromConfig`, `onnx_protect_model_settle`, `onnx_protect_genai_unstage`;
then greedy generation (`max_length` 24). Prints the token ids, one line `tokens: 1 2 3`.
onnxruntime-genai's library comes from its Python package (imported first, so that it finds
onnxruntime's, as a C program does through its library path).
"""

import ctypes
import json
import os
import pathlib
import shutil
import sys
import tempfile

import onnxruntime_genai

OK = 0
p, size = ctypes.c_void_p, ctypes.c_size_t


def bind(lib, sig, prefix=""):
    out = {}
    for name, (res, args) in sig.items():
        f = getattr(lib, prefix + name)
        f.restype, f.argtypes = res, args
        out[name] = f
    return type("Lib", (), out)


def protect_lib(path):
    u8p = ctypes.POINTER(ctypes.c_uint8)
    lib = ctypes.CDLL(path)
    return bind(lib, {
        "last_error": (ctypes.c_char_p, []),
        "key_from_file": (ctypes.c_int, [ctypes.c_char_p, ctypes.POINTER(p)]),
        "open": (ctypes.c_int, [ctypes.c_char_p, ctypes.POINTER(p)]),
        "file_decrypt_for_session": (ctypes.c_int, [p, p, ctypes.c_uint32, ctypes.POINTER(p)]),
        "model_data": (u8p, [p, ctypes.POINTER(size)]),
        "model_settle": (ctypes.c_int, [p]),
        "genai_stage": (ctypes.c_int, [ctypes.POINTER(p), size, ctypes.c_char_p, size]),
        "genai_unstage": (ctypes.c_int, [ctypes.c_char_p]),
        "model_free": (None, [p]),
        "file_free": (None, [p]),
        "key_free": (None, [p]),
        "folder_open": (ctypes.c_int, [ctypes.c_char_p, p, ctypes.c_char_p, ctypes.POINTER(p)]),
        "folder_model_count": (size, [p]),
        "folder_model": (ctypes.c_int, [p, size, ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_char_p)]),
        "folder_free": (None, [p]),
    }, "onnx_protect_")


def genai_lib():
    path = pathlib.Path(onnxruntime_genai.__file__).parent / "libonnxruntime-genai.so"
    lib = ctypes.CDLL(str(path))
    return bind(lib, {
        "OgaResultGetError": (ctypes.c_char_p, [p]),
        "OgaCreateConfig": (p, [ctypes.c_char_p, ctypes.POINTER(p)]),
        "OgaConfigAddModelData": (p, [p, ctypes.c_char_p, p, size]),
        "OgaConfigOverlay": (p, [p, ctypes.c_char_p]),
        "OgaCreateModelFromConfig": (p, [p, ctypes.POINTER(p)]),
        "OgaCreateTokenizer": (p, [p, ctypes.POINTER(p)]),
        "OgaCreateSequences": (p, [ctypes.POINTER(p)]),
        "OgaTokenizerEncode": (p, [p, ctypes.c_char_p, p]),
        "OgaCreateGeneratorParams": (p, [p, ctypes.POINTER(p)]),
        "OgaGeneratorParamsSetSearchNumber": (p, [p, ctypes.c_char_p, ctypes.c_double]),
        "OgaGeneratorParamsSetSearchBool": (p, [p, ctypes.c_char_p, ctypes.c_bool]),
        "OgaCreateGenerator": (p, [p, p, ctypes.POINTER(p)]),
        "OgaGenerator_AppendTokenSequences": (p, [p, p]),
        "OgaGenerator_IsDone": (ctypes.c_bool, [p]),
        "OgaGenerator_GenerateNextToken": (p, [p]),
        "OgaGenerator_GetSequenceCount": (size, [p, size]),
        "OgaGenerator_GetSequenceData": (ctypes.POINTER(ctypes.c_int32), [p, size]),
    })


def main():
    lib_path, folder, key_file = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3]
    prompt = sys.argv[4] if len(sys.argv) > 4 else "the cat sat on"
    op, og = protect_lib(lib_path), genai_lib()

    def check(status, what):
        if status != OK:
            sys.exit(f"{what}: {op.last_error().decode()} (status {status})")

    def oga(result, what):
        if result:
            sys.exit(f"{what}: {og.OgaResultGetError(result).decode()}")

    key = p()
    check(op.key_from_file(key_file.encode(), ctypes.byref(key)), "key")
    # The private folder: the folder's other files, copied and checked by folder_open, and
    # this library (onnxruntime-genai opens a custom-ops library only from the config's folder).
    private = pathlib.Path(tempfile.mkdtemp(prefix="onnx-protect-genai-"))
    try:
        d = p()
        check(op.folder_open(str(folder).encode(), key, str(private).encode(), ctypes.byref(d)), "folder")
        models = []
        for i in range(op.folder_model_count(d)):
            name, path, f, m = ctypes.c_char_p(), ctypes.c_char_p(), p(), p()
            check(op.folder_model(d, i, ctypes.byref(name), ctypes.byref(path)), "folder model")
            check(op.open(path.value, ctypes.byref(f)), f"open {name.value.decode()}")
            check(op.file_decrypt_for_session(f, key, 0, ctypes.byref(m)), f"decrypt {name.value.decode()}")
            op.file_free(f)
            models.append((name.value.decode(), m))
        op.folder_free(d)
        shutil.copyfile(lib_path, private / "libonnx_protect.so")
        config = p()
        oga(og.OgaCreateConfig(str(private).encode(), ctypes.byref(config)), "config")
        for name, m in models:
            n = size()
            graph = op.model_data(m, ctypes.byref(n))
            oga(og.OgaConfigAddModelData(config, name.encode(), ctypes.cast(graph, p), n.value), "add model data")
        token = ctypes.create_string_buffer(32)
        arr = (p * len(models))(*[m for _, m in models])
        check(op.genai_stage(arr, len(models), token, 32), "stage")
        entries = {"custom_ops_library": "libonnx_protect.so",
                   "onnx_protect.genai": token.value.decode() + "\t" + os.path.abspath(lib_path)}
        oga(og.OgaConfigOverlay(config, json.dumps({"model": {"decoder": {"session_options": entries}}}).encode()),
            "overlay")
        model = p()
        oga(og.OgaCreateModelFromConfig(config, ctypes.byref(model)), "model")
        for name, m in models:
            check(op.model_settle(m), f"settle {name}")
        check(op.genai_unstage(token.value), "unstage")

        tok, seqs, params, gen = p(), p(), p(), p()
        oga(og.OgaCreateTokenizer(model, ctypes.byref(tok)), "tokenizer")
        oga(og.OgaCreateSequences(ctypes.byref(seqs)), "sequences")
        oga(og.OgaTokenizerEncode(tok, prompt.encode(), seqs), "encode")
        oga(og.OgaCreateGeneratorParams(model, ctypes.byref(params)), "params")
        oga(og.OgaGeneratorParamsSetSearchNumber(params, b"max_length", 24.0), "max_length")
        oga(og.OgaGeneratorParamsSetSearchBool(params, b"do_sample", False), "do_sample")
        oga(og.OgaCreateGenerator(model, params, ctypes.byref(gen)), "generator")
        oga(og.OgaGenerator_AppendTokenSequences(gen, seqs), "append")
        while not og.OgaGenerator_IsDone(gen):
            oga(og.OgaGenerator_GenerateNextToken(gen), "next token")
        count = og.OgaGenerator_GetSequenceCount(gen, 0)
        data = og.OgaGenerator_GetSequenceData(gen, 0)
        print("tokens:", " ".join(str(data[i]) for i in range(count)))
        # The model and its sessions read the decrypted files: the models are freed last
        # (this example leaves that to the process's end).
    finally:
        shutil.rmtree(private, ignore_errors=True)


if __name__ == "__main__":
    main()
