use std::ffi::c_int;

use onnx_protect_core::memory::DecryptedBytes;
use pyo3::exceptions::PyBufferError;
use pyo3::ffi;
use pyo3::prelude::*;

/// A read-only view of decrypted bytes held by Rust (an external data file), exposed
/// through the buffer protocol without a copy. `close()` zeroes the decrypted
/// bytes and releases them; it is refused while a `memoryview` of it is alive.
#[pyclass(module = "onnx_protect")]
pub struct Buffer {
    pub(crate) data: Option<DecryptedBytes>,
    pub(crate) exports: usize,
}

#[pymethods]
impl Buffer {
    fn __len__(&self) -> usize {
        self.data.as_ref().map_or(0, |d| d.len())
    }

    /// Whether the bytes were released.
    #[getter]
    fn closed(&self) -> bool {
        self.data.is_none()
    }

    /// Zeroes and releases the decrypted bytes (idempotent).
    pub(crate) fn close(&mut self) -> PyResult<()> {
        if self.exports > 0 {
            return Err(PyBufferError::new_err(format!(
                "{} view(s) of this buffer are still alive (release the memoryviews and arrays first)",
                self.exports
            )));
        }
        self.data = None;
        Ok(())
    }

    fn __repr__(&self) -> String {
        match &self.data {
            Some(d) => format!("<onnx_protect.Buffer {} bytes>", d.len()),
            None => "<onnx_protect.Buffer closed>".into(),
        }
    }

    /// # Safety
    /// Called by the interpreter with a valid `view` to fill, as the buffer protocol says.
    unsafe fn __getbuffer__(slf: Bound<'_, Self>, view: *mut ffi::Py_buffer, flags: c_int) -> PyResult<()> {
        if view.is_null() {
            return Err(PyBufferError::new_err("no view to fill"));
        }
        if (flags & ffi::PyBUF_WRITABLE) == ffi::PyBUF_WRITABLE {
            return Err(PyBufferError::new_err("decrypted buffers are read-only"));
        }
        let mut me = slf.borrow_mut();
        let (ptr, len) = match &me.data {
            Some(d) => (d.as_ptr(), d.len()),
            None => return Err(PyBufferError::new_err("the buffer is closed")),
        };
        let len = isize::try_from(len).map_err(|_| PyBufferError::new_err("buffer too large"))?;
        me.exports += 1;
        drop(me);
        // SAFETY: `view` is non-null and owned by the caller for the duration of the
        // export; the bytes stay put while `exports > 0` (close() refuses, and the
        // object cannot be collected while `view.obj` holds a reference to it).
        unsafe { fill_byte_view(view, slf.into_any().into_ptr(), ptr, len, flags) }
        Ok(())
    }

    /// # Safety
    /// Called by the interpreter once per successful `__getbuffer__`.
    unsafe fn __releasebuffer__(mut slf: PyRefMut<'_, Self>, _view: *mut ffi::Py_buffer) {
        slf.exports = slf.exports.saturating_sub(1);
    }
}

/// Fills `view` as a read-only, one-dimensional view of `len` bytes at `buf`, exported by
/// `obj` (whose reference the view takes over), with the shape, strides and format that
/// `flags` ask for.
///
/// # Safety
/// `view` is non-null and owned by the caller for the duration of the export, and the
/// `len` bytes at `buf` stay valid and unchanged while the view holds `obj`.
pub(crate) unsafe fn fill_byte_view(
    view: *mut ffi::Py_buffer,
    obj: *mut ffi::PyObject,
    buf: *const u8,
    len: isize,
    flags: c_int,
) {
    // SAFETY: as the caller promises.
    unsafe {
        (*view).obj = obj;
        (*view).buf = buf as *mut std::ffi::c_void;
        (*view).len = len;
        (*view).readonly = 1;
        (*view).itemsize = 1;
        (*view).format = if (flags & ffi::PyBUF_FORMAT) == ffi::PyBUF_FORMAT {
            c"B".as_ptr() as *mut std::ffi::c_char
        } else {
            std::ptr::null_mut()
        };
        (*view).ndim = 1;
        (*view).shape = if (flags & ffi::PyBUF_ND) == ffi::PyBUF_ND { &mut (*view).len } else { std::ptr::null_mut() };
        (*view).strides = if (flags & ffi::PyBUF_STRIDES) == ffi::PyBUF_STRIDES {
            &mut (*view).itemsize
        } else {
            std::ptr::null_mut()
        };
        (*view).suboffsets = std::ptr::null_mut();
        (*view).internal = std::ptr::null_mut();
    }
}
