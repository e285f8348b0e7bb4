//! Reading and writing images (PNG, JPEG) and `.npy` tensors as [`Images`],
//! and atomic file output.

use std::io::Write;
use std::path::Path;

use crate::block::{Images, Layout};
use crate::error::{Result, TransformError};
use crate::npy::{self, NpyArray};

/// A supported file type, chosen by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Npy,
    Png,
    Jpeg,
}

impl FileKind {
    /// The kind of `path` from its extension (`.npy`, `.png`, `.jpg`/`.jpeg`).
    pub fn of(path: &Path) -> Result<FileKind> {
        let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).unwrap_or_default();
        match ext.as_str() {
            "npy" => Ok(FileKind::Npy),
            "png" => Ok(FileKind::Png),
            "jpg" | "jpeg" => Ok(FileKind::Jpeg),
            _ => Err(TransformError::Spec(format!(
                "{}: unknown file type (use .npy, .png, .jpg or .jpeg)",
                path.display()
            ))),
        }
    }

    /// Whether this is an image format (not a tensor).
    pub fn is_image(self) -> bool {
        !matches!(self, FileKind::Npy)
    }
}

/// Images read from a file, with what is needed to write them back in the same form.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub images: Images,
    pub kind: FileKind,
    /// The `.npy` shape as stored (rank 2, 3 or 4); empty for image files.
    pub npy_shape: Vec<usize>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TransformError + '_ {
    move |error| TransformError::Io { path: path.to_path_buf(), error }
}

/// Reads `path`. `.npy` arrays are interpreted with `layout`: rank 4 is `NCHW`/`NHWC`,
/// rank 3 one `CHW`/`HWC` image, rank 2 one single-channel `HW` image. Image files are
/// 8-bit gray, gray+alpha, RGB or RGBA (stored `NHWC` with `N = 1`).
pub fn load(path: &Path, layout: Layout) -> Result<Loaded> {
    let kind = FileKind::of(path)?;
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    match kind {
        FileKind::Npy => {
            let a = npy::read(&bytes).map_err(|e| match e {
                TransformError::Npy(e) => TransformError::Npy(e.in_file(path)),
                other => other,
            })?;
            let s = &a.shape;
            let (n, c, h, w) = match (s.len(), layout) {
                (4, Layout::Nchw) => (s[0], s[1], s[2], s[3]),
                (4, Layout::Nhwc) => (s[0], s[3], s[1], s[2]),
                (3, Layout::Nchw) => (1, s[0], s[1], s[2]),
                (3, Layout::Nhwc) => (1, s[2], s[0], s[1]),
                (2, _) => (1, 1, s[0], s[1]),
                (r, _) => {
                    return Err(TransformError::Shape(format!(
                        "{}: a rank-{r} array is not a batch of images (need rank 2, 3 or 4)",
                        path.display()
                    )))
                }
            };
            let layout = if s.len() == 2 { Layout::Nchw } else { layout };
            let images = Images { n, c, h, w, layout, data: a.data };
            images.validate()?;
            Ok(Loaded { images, kind, npy_shape: a.shape })
        }
        FileKind::Png | FileKind::Jpeg => decode_image(path, &bytes, kind),
    }
}

/// The error for PNG or JPEG files in a build without the `image` feature.
#[cfg(not(feature = "image"))]
fn no_image_support(path: &Path) -> TransformError {
    TransformError::Image(format!(
        "{}: this build reads and writes only .npy (PNG and JPEG need the `image` feature, on by default)",
        path.display()
    ))
}

#[cfg(not(feature = "image"))]
fn decode_image(path: &Path, _bytes: &[u8], _kind: FileKind) -> Result<Loaded> {
    Err(no_image_support(path))
}

#[cfg(feature = "image")]
fn decode_image(path: &Path, bytes: &[u8], kind: FileKind) -> Result<Loaded> {
    use crate::block::Samples;
    let img = image::load_from_memory(bytes).map_err(|e| TransformError::Image(format!("{}: {e}", path.display())))?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (c, data) = match img {
        image::DynamicImage::ImageLuma8(b) => (1, b.into_raw()),
        image::DynamicImage::ImageLumaA8(b) => (2, b.into_raw()),
        image::DynamicImage::ImageRgb8(b) => (3, b.into_raw()),
        image::DynamicImage::ImageRgba8(b) => (4, b.into_raw()),
        other => {
            return Err(TransformError::Image(format!(
                "{}: {:?} images are not supported; convert to 8 bits per channel or use .npy",
                path.display(),
                other.color()
            )))
        }
    };
    let images = Images { n: 1, c, h, w, layout: Layout::Nhwc, data: Samples::U8(data) };
    images.validate()?;
    Ok(Loaded { images, kind, npy_shape: Vec::new() })
}

/// Encodes `loaded` for `path` (whose extension chooses the format) and writes it atomically.
/// `.npy` output keeps the input's shape and element type; image output needs
/// one 8-bit image (JPEG: gray or RGB only; JPEG is lossy, quality 95).
pub fn save(path: &Path, loaded: &Loaded) -> Result<()> {
    let kind = FileKind::of(path)?;
    let im = &loaded.images;
    let bytes = match kind {
        FileKind::Npy => {
            let shape = if loaded.npy_shape.is_empty() {
                match im.layout {
                    Layout::Nchw => vec![im.n, im.c, im.h, im.w],
                    Layout::Nhwc => vec![im.n, im.h, im.w, im.c],
                }
            } else {
                loaded.npy_shape.clone()
            };
            npy::write(&NpyArray { shape, data: im.data.clone() })?
        }
        FileKind::Png | FileKind::Jpeg => encode_image(path, im, kind)?,
    };
    write_atomic(path, |f| f.write_all(&bytes))
}

#[cfg(not(feature = "image"))]
fn encode_image(path: &Path, _im: &Images, _kind: FileKind) -> Result<Vec<u8>> {
    Err(no_image_support(path))
}

#[cfg(feature = "image")]
fn encode_image(_path: &Path, im: &Images, kind: FileKind) -> Result<Vec<u8>> {
    use crate::block::Samples;
    use image::ImageEncoder;
    let Samples::U8(data) = &im.data else {
        return Err(TransformError::Image(format!(
            "{} data cannot be written as an image; use .npy",
            im.data.type_name()
        )));
    };
    if im.n != 1 {
        return Err(TransformError::Image(format!("{} images cannot be written to one image file; use .npy", im.n)));
    }
    let color = match im.c {
        1 => image::ExtendedColorType::L8,
        2 => image::ExtendedColorType::La8,
        3 => image::ExtendedColorType::Rgb8,
        4 => image::ExtendedColorType::Rgba8,
        c => return Err(TransformError::Image(format!("{c}-channel data cannot be written as an image"))),
    };
    // Image encoders want interleaved (HWC) pixels.
    let hwc: Vec<u8> = match im.layout {
        Layout::Nhwc => data.clone(),
        Layout::Nchw => {
            let mut v = vec![0u8; data.len()];
            for c in 0..im.c {
                for p in 0..im.h * im.w {
                    v[p * im.c + c] = data[c * im.h * im.w + p];
                }
            }
            v
        }
    };
    let (w, h) = (
        u32::try_from(im.w).map_err(|_| TransformError::Image("image too wide".into()))?,
        u32::try_from(im.h).map_err(|_| TransformError::Image("image too tall".into()))?,
    );
    let mut out = Vec::new();
    let res = match kind {
        FileKind::Jpeg => {
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95).write_image(&hwc, w, h, color)
        }
        _ => image::codecs::png::PngEncoder::new(&mut out).write_image(&hwc, w, h, color),
    };
    res.map_err(|e| TransformError::Image(e.to_string()))?;
    Ok(out)
}

/// Writes a file atomically: into a private staging file in the destination's
/// directory (unnamed on Linux), flushed to disk, then published under its name,
/// replacing a regular file that was there (whose permission bits it keeps; through a
/// symbolic link, the file it points to is replaced and the link kept). A destination
/// that is not a regular file (a device, a FIFO, a socket) is refused.
pub fn write_atomic(path: &Path, fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>) -> Result<()> {
    let err = |error| TransformError::Io { path: path.to_path_buf(), error };
    let mut out = onnx_protect_format::write::StagedOutput::new(path).map_err(err)?;
    fill(out.file_mut()).map_err(err)?;
    out.finish(true).map_err(err)?;
    out.publish().map_err(err)?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::block::Samples;

    #[test]
    #[cfg(feature = "image")]
    fn png_round_trip_keeps_pixels() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.png");
        let data: Vec<u8> = (0..4 * 6 * 3).map(|i| (i * 7) as u8).collect();
        let im = Images { n: 1, c: 3, h: 4, w: 6, layout: Layout::Nhwc, data: Samples::U8(data) };
        let l = Loaded { images: im, kind: FileKind::Png, npy_shape: vec![] };
        save(&p, &l).unwrap();
        assert_eq!(load(&p, Layout::Nchw).unwrap(), l);
    }

    #[test]
    #[cfg(feature = "image")]
    fn jpeg_is_read_and_written() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.jpg");
        let data: Vec<u8> = (0..16 * 16).map(|i| (i % 16 * 16) as u8).collect();
        let im = Images { n: 1, c: 1, h: 16, w: 16, layout: Layout::Nchw, data: Samples::U8(data.clone()) };
        save(&p, &Loaded { images: im, kind: FileKind::Jpeg, npy_shape: vec![] }).unwrap();
        let back = load(&p, Layout::Nchw).unwrap();
        assert_eq!((back.images.n, back.images.c, back.images.h, back.images.w), (1, 1, 16, 16));
        let Samples::U8(v) = back.images.data else { panic!("8-bit") };
        assert!(v.iter().zip(&data).all(|(a, b)| a.abs_diff(*b) < 24));
        // Alpha cannot go to JPEG; float data cannot go to an image.
        let rgba = Images { n: 1, c: 4, h: 2, w: 2, layout: Layout::Nhwc, data: Samples::U8(vec![0; 16]) };
        assert!(save(&p, &Loaded { images: rgba, kind: FileKind::Png, npy_shape: vec![] }).is_err());
        let f = Images { n: 1, c: 1, h: 2, w: 2, layout: Layout::Nhwc, data: Samples::F32(vec![0.0; 4]) };
        assert!(save(&dir.path().join("f.png"), &Loaded { images: f, kind: FileKind::Npy, npy_shape: vec![] }).is_err());
    }

    #[test]
    #[cfg(not(feature = "image"))]
    fn images_are_refused_without_the_image_feature() {
        let im = Images { n: 1, c: 1, h: 2, w: 2, layout: Layout::Nhwc, data: Samples::U8(vec![0; 4]) };
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.png");
        let e = save(&p, &Loaded { images: im, kind: FileKind::Png, npy_shape: vec![] }).unwrap_err();
        assert!(e.to_string().contains("`image` feature"), "{e}");
        std::fs::write(&p, b"\x89PNG\r\n\x1a\n").unwrap();
        assert!(load(&p, Layout::Nhwc).unwrap_err().to_string().contains("`image` feature"));
    }

    #[test]
    fn npy_layouts() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npy");
        let a = NpyArray { shape: vec![2, 4, 6, 3], data: Samples::F32(vec![0.5; 144]) };
        std::fs::write(&p, npy::write(&a).unwrap()).unwrap();
        let l = load(&p, Layout::Nhwc).unwrap();
        assert_eq!((l.images.n, l.images.c, l.images.h, l.images.w), (2, 3, 4, 6));
        let l = load(&p, Layout::Nchw).unwrap();
        assert_eq!((l.images.n, l.images.c, l.images.h, l.images.w), (2, 4, 6, 3));
        save(&dir.path().join("b.npy"), &l).unwrap();
        assert_eq!(std::fs::read(dir.path().join("b.npy")).unwrap(), std::fs::read(&p).unwrap());
        assert!(FileKind::of(Path::new("x.bmp")).is_err());
    }
}
