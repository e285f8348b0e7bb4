"""The onnxruntime session step of the C example, through Python's ctypes.

    python3 examples/c/session_ctypes.py LIBONNX_PROTECT.so PROTECTED.onnx KEY_FILE [INPUT.npy]

Calls the onnx-protect C ABI exactly as decrypt_model.c does (open, verify, decrypt into
memory), then creates an onnxruntime session from the decrypted bytes, with the external
data files from memory. The onnxruntime C API header is not shipped by any package
registry this project can use (docs/capi.md), so the session is created through
onnxruntime's Python API here; a C program passes the same pointer and length to
`CreateSessionFromArray`. With INPUT.npy it runs the model and prints the first output's
shape and sum.
"""

import ctypes
import sys

import numpy as np
import onnxruntime as ort

OK = 0


class Lib:
    """The few C ABI functions this example calls, with their C signatures."""

    def __init__(self, path):
        lib = ctypes.CDLL(path)
        p, u8p, size = ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint8), ctypes.c_size_t
        sig = {
            "onnx_protect_last_error": (ctypes.c_char_p, []),
            "onnx_protect_key_from_file": (ctypes.c_int, [ctypes.c_char_p, ctypes.POINTER(p)]),
            "onnx_protect_key_free": (None, [p]),
            "onnx_protect_open": (ctypes.c_int, [ctypes.c_char_p, ctypes.POINTER(p)]),
            "onnx_protect_file_verify": (ctypes.c_int, [p, p]),
            "onnx_protect_file_decrypt": (ctypes.c_int, [p, p, ctypes.c_uint32, ctypes.POINTER(p)]),
            "onnx_protect_file_free": (None, [p]),
            "onnx_protect_model_data": (u8p, [p, ctypes.POINTER(size)]),
            "onnx_protect_model_external_count": (size, [p]),
            "onnx_protect_model_external": (
                ctypes.c_int,
                [p, size, ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(u8p), ctypes.POINTER(size)],
            ),
            "onnx_protect_model_free": (None, [p]),
        }
        for name, (res, args) in sig.items():
            f = getattr(lib, name)
            f.restype, f.argtypes = res, args
            setattr(self, name.removeprefix("onnx_protect_"), f)

    def check(self, status, what):
        if status != OK:
            raise RuntimeError(f"{what}: {self.last_error().decode()} (status {status})")


def session(lib, model_path, key_file):
    """An onnxruntime session of the protected model, decrypted through the C ABI."""
    key, file, model = ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_void_p()
    try:
        lib.check(lib.key_from_file(key_file.encode(), ctypes.byref(key)), "key")
        lib.check(lib.open(model_path.encode(), ctypes.byref(file)), "open")
        lib.check(lib.file_verify(file, key), "verify")
        lib.check(lib.file_decrypt(file, key, 0, ctypes.byref(model)), "decrypt")
        n = ctypes.c_size_t()
        data = lib.model_data(model, ctypes.byref(n))
        # onnxruntime's Python API takes the model as bytes: one copy.
        model_bytes = ctypes.string_at(data, n.value)
        so = ort.SessionOptions()
        names, arrays = [], []
        for i in range(lib.model_external_count(model)):
            loc, ext, m = ctypes.c_char_p(), ctypes.POINTER(ctypes.c_uint8)(), ctypes.c_size_t()
            lib.check(lib.model_external(model, i, ctypes.byref(loc), ctypes.byref(ext), ctypes.byref(m)), "external")
            names.append(loc.value.decode())
            # A view of the library's buffer, no copy; onnxruntime copies it while it creates the session.
            arrays.append(np.ctypeslib.as_array(ext, shape=(m.value,)))
        if names:
            so.add_external_initializers_from_files_in_memory(names, arrays, [a.size for a in arrays])
        s = ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
        del arrays
        return s
    finally:
        lib.model_free(model)  # zeroes the decrypted bytes
        lib.file_free(file)
        lib.key_free(key)


def main():
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    lib = Lib(sys.argv[1])
    s = session(lib, sys.argv[2], sys.argv[3])
    print("session inputs:", [i.name for i in s.get_inputs()])
    if len(sys.argv) == 5:
        x = np.load(sys.argv[4])
        y = s.run(None, {s.get_inputs()[0].name: x})[0]
        print("output", y.shape, float(y.astype(np.float64).sum()))


if __name__ == "__main__":
    main()
