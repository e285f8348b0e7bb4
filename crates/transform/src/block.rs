//! Block-wise input transforms on batches of images.
//!
//! An image of `H×W` pixels and `C` channels is cut into `M×M` blocks (row-major
//! block order, `n = (H/M)·(W/M)` blocks). The `L = M·M·C` values of a block are
//! numbered `p = (i·M + j)·C + c` (row `i`, column `j` inside the block, channel `c`).
//! The forward transform applies, in this order:
//!
//! 1. **shuffle**: `v[p] = block[π[p]]` (the same `π` for every block);
//! 2. **negpos**: where `mask[p] = 1`, `v[p] = lo + hi − v[p]`;
//! 3. **ffx**: `v[p] = FFX_p(v[p])` on 8-bit values (floats are quantised to 256 levels);
//! 4. **scramble-blocks**: block `b` of the output is (the transformed) block `σ[b]` of the input.
//!
//! The inverse undoes the steps in reverse order.

use std::str::FromStr;

use onnx_protect_crypto::MasterKey;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::derive::{self, Ffx};
use crate::error::{Result, TransformError};

/// Which transforms to apply, and the block size `M`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TransformSpec {
    /// Block size `M` (blocks are `M×M` pixels).
    pub block: usize,
    /// Pixel shuffle within each block.
    pub shuffle: bool,
    /// Negative/positive flip at key-chosen positions.
    pub negpos: bool,
    /// FFX format-preserving encryption of 8-bit values.
    pub ffx: bool,
    /// Scrambling of the order of blocks.
    pub scramble_blocks: bool,
}

impl TransformSpec {
    /// Checks the block size and that at least one transform is chosen.
    pub fn validate(&self) -> Result<()> {
        if self.block == 0 || self.block > 4096 {
            return Err(TransformError::Spec(format!("block size {} is not in 1..=4096", self.block)));
        }
        if !(self.shuffle || self.negpos || self.ffx || self.scramble_blocks) {
            return Err(TransformError::Spec(
                "choose at least one transform (shuffle, negpos, ffx, scramble-blocks)".into(),
            ));
        }
        Ok(())
    }

    /// The chosen transforms' names, in the order they are applied.
    pub fn names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.shuffle {
            v.push("shuffle");
        }
        if self.negpos {
            v.push("negpos");
        }
        if self.ffx {
            v.push("ffx");
        }
        if self.scramble_blocks {
            v.push("scramble-blocks");
        }
        v
    }
}

/// The declared value range `[lo, hi]` of the data (needed by neg/pos flip and FFX).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ValueRange {
    pub lo: f64,
    pub hi: f64,
}

impl ValueRange {
    /// The range of 8-bit data.
    pub const U8: ValueRange = ValueRange { lo: 0.0, hi: 255.0 };

    /// Checks that both ends are finite and `lo < hi`.
    pub fn validate(&self) -> Result<()> {
        if !(self.lo.is_finite() && self.hi.is_finite() && self.lo < self.hi) {
            return Err(TransformError::Spec(format!(
                "value range [{}, {}] must be finite with lo < hi",
                self.lo, self.hi
            )));
        }
        Ok(())
    }
}

impl FromStr for ValueRange {
    type Err = TransformError;
    /// Parses `LO,HI`, e.g. `0,1` or `0,255`.
    fn from_str(s: &str) -> Result<ValueRange> {
        let bad = || TransformError::Spec(format!("value range '{s}' is not LO,HI (e.g. 0,1)"));
        let (a, b) = s.split_once(',').ok_or_else(bad)?;
        let r = ValueRange { lo: a.trim().parse().map_err(|_| bad())?, hi: b.trim().parse().map_err(|_| bad())? };
        r.validate()?;
        Ok(r)
    }
}

/// Memory layout of a batch of images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// Batch, channel, row, column.
    Nchw,
    /// Batch, row, column, channel.
    Nhwc,
}

impl FromStr for Layout {
    type Err = TransformError;
    fn from_str(s: &str) -> Result<Layout> {
        match s.to_ascii_lowercase().as_str() {
            "nchw" | "chw" => Ok(Layout::Nchw),
            "nhwc" | "hwc" => Ok(Layout::Nhwc),
            _ => Err(TransformError::Spec(format!("layout '{s}' is not nchw or nhwc"))),
        }
    }
}

impl Layout {
    /// `nchw` or `nhwc`.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Nchw => "nchw",
            Layout::Nhwc => "nhwc",
        }
    }
}

/// Element values of a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Samples {
    U8(Vec<u8>),
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl Samples {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Samples::U8(v) => v.len(),
            Samples::F32(v) => v.len(),
            Samples::F64(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `u8`, `f32` or `f64`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Samples::U8(_) => "u8",
            Samples::F32(_) => "f32",
            Samples::F64(_) => "f64",
        }
    }
}

/// A batch of `n` images of `c` channels and `h×w` pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct Images {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub layout: Layout,
    pub data: Samples,
}

impl Images {
    /// Checks that the dimensions match the number of elements.
    pub fn validate(&self) -> Result<()> {
        let want = self.n.checked_mul(self.c).and_then(|v| v.checked_mul(self.h)).and_then(|v| v.checked_mul(self.w));
        if want != Some(self.data.len()) {
            return Err(TransformError::Shape(format!(
                "{}×{}×{}×{} images need {:?} elements, found {}",
                self.n,
                self.c,
                self.h,
                self.w,
                want,
                self.data.len()
            )));
        }
        Ok(())
    }

    /// Number of `m×m` blocks per image (row-major), or an error if `m` does not divide the size.
    pub fn blocks(&self, m: usize) -> Result<usize> {
        if m == 0 || self.h % m != 0 || self.w % m != 0 {
            return Err(TransformError::Shape(format!(
                "image size {}×{} is not a multiple of the block size {m}",
                self.h, self.w
            )));
        }
        Ok((self.h / m) * (self.w / m))
    }
}

/// Transform direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Forward,
    Inverse,
}

/// All parameters of a transform, derived from a key for one block geometry.
///
/// The permutations, mask and FFX tables are secret; they are wiped on drop and
/// never shown by `Debug`.
pub struct KeyedTransform {
    spec: TransformSpec,
    channels: usize,
    blocks: usize,
    shuffle: Option<Zeroizing<Vec<u32>>>,
    flip: Option<Zeroizing<Vec<u8>>>,
    ffx: Option<Ffx>,
    scramble: Option<Zeroizing<Vec<u32>>>,
}

impl std::fmt::Debug for KeyedTransform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedTransform")
            .field("spec", &self.spec)
            .field("channels", &self.channels)
            .field("blocks", &self.blocks)
            .finish_non_exhaustive()
    }
}

impl KeyedTransform {
    /// Derives the parameters of `spec` for `channels`-channel images of `blocks` blocks.
    /// `blocks` is only used by block scrambling.
    pub fn derive(master: &MasterKey, spec: &TransformSpec, channels: usize, blocks: usize) -> Result<KeyedTransform> {
        spec.validate()?;
        let m = spec.block;
        Ok(KeyedTransform {
            spec: *spec,
            channels,
            blocks,
            shuffle: if spec.shuffle { Some(derive::shuffle_permutation(master, m, channels)?) } else { None },
            flip: if spec.negpos { Some(derive::negpos_mask(master, m, channels)?) } else { None },
            ffx: if spec.ffx { Some(Ffx::derive(master, m, channels)?) } else { None },
            scramble: if spec.scramble_blocks { Some(derive::block_permutation(master, m, blocks)?) } else { None },
        })
    }

    /// The transform specification.
    pub fn spec(&self) -> &TransformSpec {
        &self.spec
    }

    /// The pixel-shuffle permutation `π` (length `M·M·C`), if shuffling.
    pub fn shuffle(&self) -> Option<&[u32]> {
        self.shuffle.as_deref().map(|v| &v[..])
    }

    /// The neg/pos flip mask (0/1 per block position), if flipping.
    pub fn flip_mask(&self) -> Option<&[u8]> {
        self.flip.as_deref().map(|v| &v[..])
    }

    /// The block-scrambling permutation `σ` (length `n`), if scrambling.
    pub fn block_order(&self) -> Option<&[u32]> {
        self.scramble.as_deref().map(|v| &v[..])
    }

    /// Applies the transform (or its inverse) to `images` in place.
    ///
    /// `range` is the declared value range; for `u8` data it defaults to `[0, 255]`.
    /// Float data needs a range for neg/pos flip and FFX.
    pub fn apply(&self, images: &mut Images, range: Option<ValueRange>, dir: Direction) -> Result<()> {
        images.validate()?;
        if images.c != self.channels {
            return Err(TransformError::Shape(format!(
                "the transform was derived for {} channels, the images have {}",
                self.channels, images.c
            )));
        }
        let blocks = images.blocks(self.spec.block)?;
        if self.scramble.is_some() && blocks != self.blocks {
            return Err(TransformError::Shape(format!(
                "the block order was derived for {} blocks, the images have {blocks}",
                self.blocks
            )));
        }
        let ctx = ValueCtx::new(&images.data, range, &self.spec)?;
        let g = Geometry::new(images, self.spec.block);
        match &mut images.data {
            Samples::U8(v) => *v = self.run(v, &g, &ctx, dir)?,
            Samples::F32(v) => *v = self.run(v, &g, &ctx, dir)?,
            Samples::F64(v) => *v = self.run(v, &g, &ctx, dir)?,
        }
        Ok(())
    }

    fn run<T: Sample>(&self, input: &[T], g: &Geometry, ctx: &ValueCtx, dir: Direction) -> Result<Vec<T>> {
        let mut out = input.to_vec();
        let l = g.rel.len();
        let pi = |p: usize| self.shuffle.as_ref().map_or(p, |s| s[p] as usize);
        let sigma = |b: usize| self.scramble.as_ref().map_or(b, |s| s[b] as usize);
        let flip = |p: usize| self.flip.as_ref().is_some_and(|f| f[p] == 1);
        for n in 0..g.n {
            for b in 0..g.blocks {
                let (src, dst) = match dir {
                    Direction::Forward => (g.origin(n, sigma(b)), g.origin(n, b)),
                    Direction::Inverse => (g.origin(n, b), g.origin(n, sigma(b))),
                };
                for p in 0..l {
                    match dir {
                        Direction::Forward => {
                            let at = src + g.rel[pi(p)];
                            let mut v = input[at];
                            if flip(p) {
                                v = v.flip(ctx, at)?;
                            }
                            if let Some(f) = &self.ffx {
                                v = T::from_level(f.encrypt(p, v.level(ctx, at)?), ctx);
                            }
                            out[dst + g.rel[p]] = v;
                        }
                        Direction::Inverse => {
                            let at = src + g.rel[p];
                            let mut v = input[at];
                            if let Some(f) = &self.ffx {
                                v = T::from_level(f.decrypt(p, v.level(ctx, at)?), ctx);
                            }
                            if flip(p) {
                                v = v.flip(ctx, at)?;
                            }
                            out[dst + g.rel[pi(p)]] = v;
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Derives the transform for `images` (its channel and block counts) and applies it.
pub fn transform_images(
    master: &MasterKey,
    spec: &TransformSpec,
    images: &mut Images,
    range: Option<ValueRange>,
    dir: Direction,
) -> Result<()> {
    spec.validate()?;
    images.validate()?;
    let blocks = images.blocks(spec.block)?;
    KeyedTransform::derive(master, spec, images.c, blocks)?.apply(images, range, dir)
}

/// Index arithmetic: element offset = origin(image, block) + `rel[p]`.
struct Geometry {
    n: usize,
    blocks: usize,
    blocks_per_row: usize,
    m: usize,
    image: usize,
    sy: usize,
    sx: usize,
    rel: Vec<usize>,
}

impl Geometry {
    fn new(im: &Images, m: usize) -> Geometry {
        let (sc, sy, sx) = match im.layout {
            Layout::Nchw => (im.h * im.w, im.w, 1),
            Layout::Nhwc => (1, im.w * im.c, im.c),
        };
        let l = m * m * im.c;
        let rel = (0..l)
            .map(|p| {
                let (i, j, c) = (p / (m * im.c), (p / im.c) % m, p % im.c);
                c * sc + i * sy + j * sx
            })
            .collect();
        Geometry {
            n: im.n,
            blocks: (im.h / m) * (im.w / m),
            blocks_per_row: im.w / m,
            m,
            image: im.c * im.h * im.w,
            sy,
            sx,
            rel,
        }
    }

    fn origin(&self, n: usize, b: usize) -> usize {
        let (by, bx) = (b / self.blocks_per_row, b % self.blocks_per_row);
        n * self.image + by * self.m * self.sy + bx * self.m * self.sx
    }
}

/// The value range as the per-element operations need it.
struct ValueCtx {
    lo: f64,
    hi: f64,
}

impl ValueCtx {
    fn new(data: &Samples, range: Option<ValueRange>, spec: &TransformSpec) -> Result<ValueCtx> {
        if let Some(r) = range {
            r.validate()?;
        }
        let needs = spec.negpos || spec.ffx;
        let r = match (data, range) {
            (Samples::U8(_), None) => ValueRange::U8,
            (Samples::U8(_), Some(r)) => {
                if r.lo < 0.0 || r.hi > 255.0 || r.lo.fract() != 0.0 || r.hi.fract() != 0.0 {
                    return Err(TransformError::Spec(format!(
                        "the range of 8-bit data must have integer ends in 0..=255, not [{}, {}]",
                        r.lo, r.hi
                    )));
                }
                r
            }
            (_, Some(r)) => r,
            (d, None) if needs => {
                return Err(TransformError::Spec(format!(
                    "{} data needs a declared value range for negpos and ffx (e.g. --range 0,1)",
                    d.type_name()
                )))
            }
            (_, None) => ValueRange { lo: 0.0, hi: 1.0 },
        };
        Ok(ValueCtx { lo: r.lo, hi: r.hi })
    }
}

/// Per-element operations of the value transforms.
trait Sample: Copy {
    /// `lo + hi − x`.
    fn flip(self, ctx: &ValueCtx, index: usize) -> Result<Self>;
    /// The 8-bit level FFX encrypts.
    fn level(self, ctx: &ValueCtx, index: usize) -> Result<u8>;
    /// The value of an 8-bit level.
    fn from_level(l: u8, ctx: &ValueCtx) -> Self;
}

impl Sample for u8 {
    fn flip(self, ctx: &ValueCtx, index: usize) -> Result<u8> {
        let x = f64::from(self);
        if x < ctx.lo || x > ctx.hi {
            return Err(TransformError::OutOfRange { index, value: x, lo: ctx.lo, hi: ctx.hi });
        }
        // lo, hi are integers in 0..=255 and lo <= x <= hi, so the result is too.
        Ok((ctx.lo + ctx.hi - x) as u8)
    }
    fn level(self, _: &ValueCtx, _: usize) -> Result<u8> {
        Ok(self)
    }
    fn from_level(l: u8, _: &ValueCtx) -> u8 {
        l
    }
}

fn float_level(x: f64, ctx: &ValueCtx, index: usize) -> Result<u8> {
    if !(x >= ctx.lo && x <= ctx.hi) {
        return Err(TransformError::OutOfRange { index, value: x, lo: ctx.lo, hi: ctx.hi });
    }
    Ok(((x - ctx.lo) / (ctx.hi - ctx.lo) * 255.0).round().clamp(0.0, 255.0) as u8)
}

fn float_from_level(l: u8, ctx: &ValueCtx) -> f64 {
    ctx.lo + f64::from(l) / 255.0 * (ctx.hi - ctx.lo)
}

impl Sample for f32 {
    fn flip(self, ctx: &ValueCtx, _: usize) -> Result<f32> {
        Ok((ctx.lo + ctx.hi - f64::from(self)) as f32)
    }
    fn level(self, ctx: &ValueCtx, index: usize) -> Result<u8> {
        float_level(f64::from(self), ctx, index)
    }
    fn from_level(l: u8, ctx: &ValueCtx) -> f32 {
        float_from_level(l, ctx) as f32
    }
}

impl Sample for f64 {
    fn flip(self, ctx: &ValueCtx, _: usize) -> Result<f64> {
        Ok(ctx.lo + ctx.hi - self)
    }
    fn level(self, ctx: &ValueCtx, index: usize) -> Result<u8> {
        float_level(self, ctx, index)
    }
    fn from_level(l: u8, ctx: &ValueCtx) -> f64 {
        float_from_level(l, ctx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn key(b: u8) -> MasterKey {
        MasterKey::from_bytes([b; 32])
    }

    fn all() -> TransformSpec {
        TransformSpec { block: 2, shuffle: true, negpos: true, ffx: true, scramble_blocks: true }
    }

    fn u8_images(layout: Layout) -> Images {
        let (n, c, h, w) = (2, 3, 4, 6);
        Images { n, c, h, w, layout, data: Samples::U8((0..n * c * h * w).map(|i| (i * 37 % 256) as u8).collect()) }
    }

    #[test]
    fn forward_then_inverse_is_identity_for_every_combination() {
        for bits in 1..16u8 {
            let spec = TransformSpec {
                block: 2,
                shuffle: bits & 1 != 0,
                negpos: bits & 2 != 0,
                ffx: bits & 4 != 0,
                scramble_blocks: bits & 8 != 0,
            };
            for layout in [Layout::Nchw, Layout::Nhwc] {
                let plain = u8_images(layout);
                let mut x = plain.clone();
                transform_images(&key(1), &spec, &mut x, None, Direction::Forward).unwrap();
                assert_ne!(x, plain, "{spec:?}");
                transform_images(&key(1), &spec, &mut x, None, Direction::Inverse).unwrap();
                assert_eq!(x, plain, "{spec:?} {layout:?}");
            }
        }
    }

    #[test]
    fn layouts_give_the_same_transform() {
        let a = u8_images(Layout::Nchw);
        // The same images stored NHWC.
        let Samples::U8(v) = &a.data else { unreachable!() };
        let mut nhwc = vec![0u8; v.len()];
        for n in 0..a.n {
            for c in 0..a.c {
                for y in 0..a.h {
                    for x in 0..a.w {
                        nhwc[((n * a.h + y) * a.w + x) * a.c + c] = v[((n * a.c + c) * a.h + y) * a.w + x];
                    }
                }
            }
        }
        let mut b = Images { layout: Layout::Nhwc, data: Samples::U8(nhwc), ..a.clone() };
        let mut a2 = a.clone();
        transform_images(&key(3), &all(), &mut a2, None, Direction::Forward).unwrap();
        transform_images(&key(3), &all(), &mut b, None, Direction::Forward).unwrap();
        let (Samples::U8(x), Samples::U8(y)) = (&a2.data, &b.data) else { unreachable!() };
        for n in 0..a.n {
            for c in 0..a.c {
                for yy in 0..a.h {
                    for xx in 0..a.w {
                        assert_eq!(x[((n * a.c + c) * a.h + yy) * a.w + xx], y[((n * a.h + yy) * a.w + xx) * a.c + c]);
                    }
                }
            }
        }
    }

    #[test]
    fn shuffle_keeps_each_block_a_permutation_of_itself() {
        let spec = TransformSpec { block: 2, shuffle: true, ..Default::default() };
        let plain = u8_images(Layout::Nchw);
        let mut x = plain.clone();
        transform_images(&key(4), &spec, &mut x, None, Direction::Forward).unwrap();
        let g = Geometry::new(&plain, 2);
        let (Samples::U8(p), Samples::U8(t)) = (&plain.data, &x.data) else { unreachable!() };
        for n in 0..plain.n {
            for b in 0..g.blocks {
                let o = g.origin(n, b);
                let mut u: Vec<u8> = g.rel.iter().map(|r| p[o + r]).collect();
                let mut v: Vec<u8> = g.rel.iter().map(|r| t[o + r]).collect();
                u.sort();
                v.sort();
                assert_eq!(u, v);
            }
        }
    }

    #[test]
    fn float_negpos_is_exact_and_needs_a_range() {
        let spec = TransformSpec { block: 2, negpos: true, shuffle: true, ..Default::default() };
        let vals: Vec<f32> = (0..64).map(|i| (i % 17) as f32 / 16.0).collect();
        let plain = Images { n: 1, c: 1, h: 8, w: 8, layout: Layout::Nchw, data: Samples::F32(vals) };
        let mut x = plain.clone();
        assert!(transform_images(&key(1), &spec, &mut x, None, Direction::Forward).is_err());
        let r = Some(ValueRange { lo: 0.0, hi: 1.0 });
        transform_images(&key(1), &spec, &mut x, r, Direction::Forward).unwrap();
        let Samples::F32(t) = &x.data else { unreachable!() };
        assert!(t.iter().all(|v| (0.0..=1.0).contains(v)));
        transform_images(&key(1), &spec, &mut x, r, Direction::Inverse).unwrap();
        assert_eq!(x, plain);
    }

    #[test]
    fn float_ffx_quantises_and_checks_the_range() {
        let spec = TransformSpec { block: 2, ffx: true, ..Default::default() };
        let r = Some(ValueRange { lo: 0.0, hi: 1.0 });
        let vals: Vec<f64> = (0..16).map(|i| f64::from(i * 17) / 255.0).collect();
        let plain = Images { n: 1, c: 1, h: 4, w: 4, layout: Layout::Nchw, data: Samples::F64(vals) };
        let mut x = plain.clone();
        transform_images(&key(2), &spec, &mut x, r, Direction::Forward).unwrap();
        transform_images(&key(2), &spec, &mut x, r, Direction::Inverse).unwrap();
        let (Samples::F64(a), Samples::F64(b)) = (&x.data, &plain.data) else { unreachable!() };
        assert!(a.iter().zip(b).all(|(u, v)| (u - v).abs() < 1e-12));
        let mut bad = Images { data: Samples::F64(vec![1.5; 16]), ..plain };
        let e = transform_images(&key(2), &spec, &mut bad, r, Direction::Forward).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::OutOfRange);
    }

    #[test]
    fn u8_negpos_with_a_narrow_range() {
        let spec = TransformSpec { block: 2, negpos: true, ..Default::default() };
        let r = Some(ValueRange { lo: 0.0, hi: 16.0 });
        let plain = Images { n: 1, c: 1, h: 2, w: 2, layout: Layout::Nchw, data: Samples::U8(vec![0, 5, 16, 9]) };
        let mut x = plain.clone();
        transform_images(&key(9), &spec, &mut x, r, Direction::Forward).unwrap();
        let Samples::U8(t) = &x.data else { unreachable!() };
        assert!(t.iter().all(|&v| v <= 16));
        transform_images(&key(9), &spec, &mut x, r, Direction::Inverse).unwrap();
        assert_eq!(x, plain);
        let mut over = Images { data: Samples::U8(vec![17, 17, 17, 17]), ..plain };
        assert!(transform_images(&key(9), &spec, &mut over, r, Direction::Forward).is_err());
    }

    #[test]
    fn shape_errors() {
        let spec = TransformSpec { block: 3, shuffle: true, ..Default::default() };
        let mut x = u8_images(Layout::Nchw);
        assert_eq!(
            transform_images(&key(1), &spec, &mut x, None, Direction::Forward).unwrap_err().kind(),
            ErrorKind::Shape
        );
        let none = TransformSpec { block: 2, ..Default::default() };
        assert_eq!(
            transform_images(&key(1), &none, &mut x, None, Direction::Forward).unwrap_err().kind(),
            ErrorKind::Spec
        );
        assert!("0;1".parse::<ValueRange>().is_err());
        assert!("1,0".parse::<ValueRange>().is_err());
        assert_eq!("0, 255".parse::<ValueRange>().unwrap(), ValueRange::U8);
    }
}
