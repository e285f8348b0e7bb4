//! AES-256-CTR keystreams, with whole-byte and bit-masked application.

use core::fmt;

use aes::cipher::{KeyInit, StreamCipher, StreamCipherSeek};
use aes::Aes256;
use ctr::cipher::inout::InOutBuf;
use ctr::cipher::typenum::U16;
use ctr::cipher::{InnerIvInit, StreamCipherCore, StreamCipherSeekCore};
use ctr::{Ctr64BE, CtrCore};
use rayon::prelude::*;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::{CryptoError, KEY_LEN};

/// AES block size; keystream blocks and parallel split points are aligned to it.
const BLOCK_LEN: usize = 16;

/// Longest element mask accepted by the masked operations.
pub const MAX_MASK_LEN: usize = 256;

/// Size of the scratch buffers used by masked application. Two such buffers
/// live on the stack per call; nothing is heap-allocated.
const MASK_CHUNK: usize = 8 * 1024;

/// Size of the pieces handed to rayon workers by the parallel operations.
/// A multiple of [`BLOCK_LEN`], so every split falls on a block boundary.
const PAR_PIECE: usize = 1024 * 1024;

/// The counter block is 16 bytes, incremented as one 128-bit big-endian integer
/// from zero (docs/format.md §6). `ctr`'s 64-bit flavor, with a zero nonce, counts in
/// the low 8 bytes and leaves the high 8 at zero: the same blocks for every block
/// index below 2^64, and a keystream offset (a `u64` byte offset) never reaches
/// block 2^60. Its counter arithmetic is cheaper than the 128-bit flavor's (see
/// docs/performance.md); the test
/// `the_64_bit_counter_flavor_gives_the_format_s_128_bit_counter_blocks` compares
/// the two up to the last block.
type Aes256Ctr = Ctr64BE<Aes256>;

/// The AES-256-CTR keystream of one tensor.
///
/// The counter block starts at 16 zero bytes and the whole block is
/// incremented as one 128-bit big-endian integer, so keystream byte `o` is
/// `AES_K(u128_be(o / 16))[o % 16]`. Every method takes an absolute keystream
/// offset, so data may be processed in any order and in any pieces.
///
/// A (key, IV) pair is never reused: each tensor key is unique to
/// (master key, salt, stream id), the salt is fresh per encryption, and the
/// IV is fixed.
///
/// Applying is its own inverse (XOR), so the same calls encrypt and decrypt.
/// The expanded AES key is wiped on drop and never printed.
#[derive(Clone)]
pub struct Keystream {
    cipher: Aes256,
}

// The only field is `aes::Aes256`, which wipes its round keys on drop (aes's
// `zeroize` feature is enabled in Cargo.toml).
impl ZeroizeOnDrop for Keystream {}

impl fmt::Debug for Keystream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Keystream([redacted])")
    }
}

impl Keystream {
    /// Builds the keystream for a raw tensor key. The caller wipes `key`.
    pub(crate) fn new(key: &[u8; KEY_LEN]) -> Keystream {
        Keystream { cipher: Aes256::new(key.into()) }
    }

    /// A CTR cipher positioned at keystream byte `offset`.
    fn ctr_at(&self, offset: u64, len: usize) -> Result<Aes256Ctr, CryptoError> {
        let iv = [0u8; BLOCK_LEN];
        let core = CtrCore::inner_iv_init(self.cipher.clone(), &iv.into());
        let mut ctr = Aes256Ctr::from_core(core);
        ctr.try_seek(offset).map_err(|_| CryptoError::KeystreamRange { offset, len })?;
        Ok(ctr)
    }

    /// XORs `data` in place with keystream bytes `[offset, offset + data.len())`.
    ///
    /// Errors with [`CryptoError::KeystreamRange`] if that range does not fit
    /// in a `u64` offset; `data` is then left untouched.
    pub fn apply(&self, offset: u64, data: &mut [u8]) -> Result<(), CryptoError> {
        check_range(offset, data.len())?;
        let mut ctr = self.ctr_at(offset, data.len())?;
        ctr.try_apply_keystream(data).map_err(|_| CryptoError::KeystreamRange { offset, len: data.len() })
    }

    /// Overwrites `out` with keystream bytes `[offset, offset + out.len())`.
    ///
    /// Errors as [`Keystream::apply`]; `out` is then left untouched.
    pub fn fill(&self, offset: u64, out: &mut [u8]) -> Result<(), CryptoError> {
        check_range(offset, out.len())?;
        out.fill(0);
        self.apply(offset, out)
    }

    /// Writes `src` XOR keystream bytes `[offset, offset + src.len())` into `dst`, in
    /// one pass over both (no copy of `src` first): the same bytes as copying `src`
    /// into `dst` and calling [`Keystream::apply`] on it.
    ///
    /// # Panics
    /// If `src` and `dst` differ in length.
    pub fn apply_b2b(&self, offset: u64, src: &[u8], dst: &mut [u8]) -> Result<(), CryptoError> {
        assert_eq!(src.len(), dst.len(), "apply_b2b: source and destination differ in length");
        check_range(offset, src.len())?;
        let mut ctr = self.ctr_at(offset, src.len())?;
        ctr.apply_keystream_b2b(src, dst).map_err(|_| CryptoError::KeystreamRange { offset, len: src.len() })
    }

    /// XORs each `data[i]` with `keystream[offset + i] & mask[(offset + i) % mask.len()]`.
    ///
    /// `mask` is the bit pattern of one element in its little-endian byte
    /// order (fp32 sign+mantissa `[0xFF, 0xFF, 0x7F, 0x80]`, fp16
    /// `[0xFF, 0x83]`, bf16 `[0x7F, 0x80]`, 8-bit `[0xFF]`); it is indexed by
    /// absolute keystream offset, so offset 0 must be the start of an element.
    /// Bits outside the mask are never changed. Like `apply`, this is its own
    /// inverse.
    ///
    /// Errors: [`CryptoError::InvalidMask`] for an empty mask or one longer
    /// than [`MAX_MASK_LEN`]; [`CryptoError::KeystreamRange`] as for `apply`.
    /// On error `data` is untouched.
    pub fn apply_masked(&self, offset: u64, data: &mut [u8], mask: &[u8]) -> Result<(), CryptoError> {
        check_mask(mask)?;
        check_range(offset, data.len())?;
        self.apply_masked_unchecked(offset, data, mask)
    }

    /// Body of `apply_masked`; the caller has validated `mask` and the range.
    fn apply_masked_unchecked(&self, offset: u64, data: &mut [u8], mask: &[u8]) -> Result<(), CryptoError> {
        if data.is_empty() {
            return Ok(());
        }
        // Keystream is generated a whole block at a time straight into `ks`
        // (no zero-fill, no extra XOR pass). `ks[0]` is keystream byte `base`,
        // the start of the block holding `offset`; the first `skip` bytes of
        // the first chunk lie before `offset` and are not used.
        let skip = (offset % BLOCK_LEN as u64) as usize;
        let base = offset - skip as u64;
        let mut core = self.core_at_block(base / BLOCK_LEN as u64);

        // Chunk length is a multiple of both the mask length and the block
        // length, so every chunk starts on a block boundary and with the same
        // mask phase: one tile of mask bytes serves all chunks.
        let period = lcm(mask.len(), BLOCK_LEN);
        let chunk_len = MASK_CHUNK - MASK_CHUNK % period;
        let mut tile = [0u8; MASK_CHUNK];
        let mut ks = [0u8; MASK_CHUNK];
        // `mask.len()` is in 1..=MAX_MASK_LEN, so this cast and modulo are safe.
        let phase = (base % mask.len() as u64) as usize;
        let tile_len = chunk_len.min(skip + data.len());
        // One mask period by index, then doubling copies: each copy starts at a
        // multiple of the period, so the phase is kept (and no division per byte).
        let first = mask.len().min(tile_len);
        for (i, t) in tile[..first].iter_mut().enumerate() {
            *t = mask[(phase + i) % mask.len()];
        }
        let mut filled = first;
        while filled < tile_len {
            let n = filled.min(tile_len - filled);
            tile.copy_within(0..n, filled);
            filled += n;
        }
        let used = tile_len.div_ceil(BLOCK_LEN) * BLOCK_LEN;
        let total = skip + data.len();

        let mut lead = skip;
        let mut rest = data;
        while !rest.is_empty() {
            let n = (chunk_len - lead).min(rest.len());
            let (piece, tail) = rest.split_at_mut(n);
            // Whole blocks covering ks[lead .. lead + n]; at most chunk_len bytes.
            let ks_len = (lead + n).div_ceil(BLOCK_LEN) * BLOCK_LEN;
            let buf: InOutBuf<'_, '_, u8> = (&mut ks[..ks_len]).into();
            let (mut blocks, _) = buf.into_chunks::<U16>();
            // Block positions stay below 2^60 (offsets are u64), far from the
            // 2^128 counter limit that `write_keystream_blocks` leaves unchecked.
            core.write_keystream_blocks(blocks.get_out());
            xor_and(piece, &ks[lead..lead + n], &tile[lead..lead + n]);
            rest = tail;
            lead = 0;
        }
        // Only the bytes written hold keystream: the first chunk covers at most `used`
        // bytes, and later chunks (when there are any) fill whole chunks.
        let written = if total > chunk_len { chunk_len } else { used.min(MASK_CHUNK) };
        ks[..written].zeroize();
        Ok(())
    }

    /// The CTR core positioned at keystream block `block`.
    fn core_at_block(&self, block: u64) -> CtrCore<Aes256, ctr::flavors::Ctr64BE> {
        let iv = [0u8; BLOCK_LEN];
        let mut core = CtrCore::inner_iv_init(self.cipher.clone(), &iv.into());
        core.set_block_pos(block);
        core
    }

    /// Same result as [`Keystream::apply`], computed on the rayon thread pool.
    ///
    /// Large buffers are split at absolute keystream offsets that are
    /// multiples of 1 MiB (hence block aligned); each piece seeks its own
    /// cipher. Small buffers are processed on the calling thread.
    pub fn apply_par(&self, offset: u64, data: &mut [u8]) -> Result<(), CryptoError> {
        self.apply_par_in_pieces(offset, data, PAR_PIECE)
    }

    /// Same result as [`Keystream::apply_masked`], computed on the rayon
    /// thread pool, split as in [`Keystream::apply_par`].
    pub fn apply_masked_par(&self, offset: u64, data: &mut [u8], mask: &[u8]) -> Result<(), CryptoError> {
        self.apply_masked_par_in_pieces(offset, data, mask, PAR_PIECE)
    }

    /// `apply_par` with an explicit piece size (a positive multiple of 16),
    /// so tests can cross piece boundaries with small buffers.
    pub(crate) fn apply_par_in_pieces(&self, offset: u64, data: &mut [u8], piece: usize) -> Result<(), CryptoError> {
        check_range(offset, data.len())?;
        for_each_piece(offset, data, piece, |o, d| {
            let mut ctr = self.ctr_at(o, d.len())?;
            ctr.try_apply_keystream(d).map_err(|_| CryptoError::KeystreamRange { offset: o, len: d.len() })
        })
    }

    /// `apply_masked_par` with an explicit piece size (a positive multiple of 16).
    pub(crate) fn apply_masked_par_in_pieces(
        &self,
        offset: u64,
        data: &mut [u8],
        mask: &[u8],
        piece: usize,
    ) -> Result<(), CryptoError> {
        check_mask(mask)?;
        check_range(offset, data.len())?;
        for_each_piece(offset, data, piece, |o, d| self.apply_masked_unchecked(o, d, mask))
    }
}

/// `data[i] ^= ks[i] & mask[i]` for equal-length slices (a plain loop the
/// compiler vectorizes).
fn xor_and(data: &mut [u8], ks: &[u8], mask: &[u8]) {
    for ((d, k), m) in data.iter_mut().zip(ks).zip(mask) {
        *d ^= k & m;
    }
}

/// Splits `data` (which starts at keystream offset `offset`) at absolute
/// offsets that are multiples of `piece` and runs `f(piece_offset, piece)` on
/// the rayon pool. Buffers no longer than one piece run on this thread.
///
/// Preconditions: `piece` is a positive multiple of 16 and
/// `offset + data.len()` fits in a `u64` (checked by the caller).
fn for_each_piece<F>(offset: u64, data: &mut [u8], piece: usize, f: F) -> Result<(), CryptoError>
where
    F: Fn(u64, &mut [u8]) -> Result<(), CryptoError> + Sync,
{
    if piece == 0 || data.len() <= piece {
        return f(offset, data);
    }
    let piece_u64 = piece as u64;
    // Bytes until the next multiple of `piece` (0 if already on one).
    let head_len = ((piece_u64 - offset % piece_u64) % piece_u64) as usize;
    let total = data.len();
    let head_len = head_len.min(total);
    let (head, tail) = data.split_at_mut(head_len);
    let tail_start = offset.checked_add(head_len as u64).ok_or(CryptoError::KeystreamRange { offset, len: total })?;
    let (head_result, tail_result) = rayon::join(
        || f(offset, head),
        || {
            tail.par_chunks_mut(piece).enumerate().try_for_each(|(i, p)| {
                let start = (i as u64)
                    .checked_mul(piece_u64)
                    .and_then(|rel| tail_start.checked_add(rel))
                    .ok_or(CryptoError::KeystreamRange { offset: tail_start, len: p.len() })?;
                f(start, p)
            })
        },
    );
    head_result?;
    tail_result
}

/// Ensures `[offset, offset + len)` is addressable with `u64` offsets.
fn check_range(offset: u64, len: usize) -> Result<(), CryptoError> {
    u64::try_from(len)
        .ok()
        .and_then(|l| offset.checked_add(l))
        .map(|_| ())
        .ok_or(CryptoError::KeystreamRange { offset, len })
}

fn check_mask(mask: &[u8]) -> Result<(), CryptoError> {
    if mask.is_empty() || mask.len() > MAX_MASK_LEN {
        return Err(CryptoError::InvalidMask { len: mask.len(), max: MAX_MASK_LEN });
    }
    Ok(())
}

fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Least common multiple; callers pass `a` in 1..=MAX_MASK_LEN and `b = 16`,
/// so the result is at most 4096 and no overflow is possible.
fn lcm(a: usize, b: usize) -> usize {
    a / gcd(a, b) * b
}

/// Low-level AES-256-CTR: XORs `data` with the keystream starting at byte
/// `offset`, where the counter block for keystream block `n` is
/// `initial_counter + n` as a 128-bit big-endian integer (wrapping mod 2^128).
///
/// With a zero initial counter this is [`Keystream`]'s keystream (which takes
/// `ctr`'s 64-bit counter flavor for speed, see `Aes256Ctr`; a test compares the
/// two); it is public so the NIST SP 800-38A known-answer tests can run against
/// it. Errors with [`CryptoError::KeystreamRange`] if
/// `offset + data.len()` overflows a `u64`.
pub fn aes256_ctr_xor(
    key: &[u8; KEY_LEN],
    initial_counter: &[u8; 16],
    offset: u64,
    data: &mut [u8],
) -> Result<(), CryptoError> {
    check_range(offset, data.len())?;
    let len = data.len();
    let range_err = || CryptoError::KeystreamRange { offset, len };
    let core = CtrCore::inner_iv_init(Aes256::new(key.into()), initial_counter.into());
    let mut ctr = ctr::Ctr128BE::<Aes256>::from_core(core);
    ctr.try_seek(offset).map_err(|_| range_err())?;
    ctr.try_apply_keystream(data).map_err(|_| range_err())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn the_64_bit_counter_flavor_gives_the_format_s_128_bit_counter_blocks() {
        // docs/format.md §6: the counter block is one 128-bit big-endian integer.
        let key = [0x5a; KEY_LEN];
        let ks = Keystream::new(&key);
        let data: Vec<u8> = (0..300u32).map(|i| (i * 13 % 256) as u8).collect();
        let last = u64::MAX - 300; // the last 300 bytes a range of u64 offsets can address
        for offset in [0u64, 1, 15, 16, 4097, (1 << 36) - 7, 1 << 40, (1 << 60) + 5, last] {
            let mut want = data.clone();
            aes256_ctr_xor(&key, &[0; 16], offset, &mut want).unwrap();
            for (name, got) in [
                ("apply", {
                    let mut d = data.clone();
                    ks.apply(offset, &mut d).unwrap();
                    d
                }),
                ("apply_masked", {
                    let mut d = data.clone();
                    ks.apply_masked(offset, &mut d, &[0xff]).unwrap();
                    d
                }),
            ] {
                assert_eq!(got, want, "{name} at offset {offset}");
            }
        }
    }

    #[test]
    fn apply_b2b_equals_copy_then_apply() {
        let ks = Keystream::new(&[0x42; KEY_LEN]);
        let src: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
        for (offset, len) in [(0u64, 0usize), (0, 1), (5, 16), (15, 17), (16, 4096), (1 << 40, 4999), (3, 5000)] {
            let mut want = src[..len].to_vec();
            ks.apply(offset, &mut want).unwrap();
            let mut got = vec![0u8; len];
            ks.apply_b2b(offset, &src[..len], &mut got).unwrap();
            assert_eq!(got, want, "offset {offset} len {len}");
        }
    }
    use proptest::prelude::*;

    fn keystream(seed: u8) -> Keystream {
        Keystream::new(&[seed; KEY_LEN])
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// With tiny pieces, the parallel paths cross many piece boundaries,
        /// including a partial head piece, and must still equal the serial ones.
        #[test]
        fn parallel_with_small_pieces_equals_serial(
            data in proptest::collection::vec(any::<u8>(), 0..3000),
            offset in 0u64..100_000,
            piece_blocks in 1usize..20,
            mask in proptest::collection::vec(any::<u8>(), 1..9),
        ) {
            let ks = keystream(3);
            let piece = piece_blocks * BLOCK_LEN;

            let mut serial = data.clone();
            ks.apply(offset, &mut serial).unwrap();
            let mut parallel = data.clone();
            ks.apply_par_in_pieces(offset, &mut parallel, piece).unwrap();
            prop_assert_eq!(&parallel, &serial);

            let mut serial = data.clone();
            ks.apply_masked(offset, &mut serial, &mask).unwrap();
            let mut parallel = data.clone();
            ks.apply_masked_par_in_pieces(offset, &mut parallel, &mask, piece).unwrap();
            prop_assert_eq!(&parallel, &serial);
        }
    }

    #[test]
    fn masked_chunk_length_is_multiple_of_mask_and_block() {
        for m in 1..=MAX_MASK_LEN {
            let period = lcm(m, BLOCK_LEN);
            let chunk = MASK_CHUNK - MASK_CHUNK % period;
            assert!(chunk > 0 && chunk % m == 0 && chunk % BLOCK_LEN == 0, "mask length {m}");
        }
    }

    #[test]
    fn masked_application_across_many_internal_chunks_equals_bytewise_definition() {
        // Longer than several MASK_CHUNKs, with a mask length (3) that does
        // not divide the chunk size, starting at an unaligned offset.
        let ks = keystream(9);
        let mask = [0xF0, 0x0F, 0xAA];
        let offset = 5u64;
        let mut data: Vec<u8> = (0..3 * MASK_CHUNK + 77).map(|i| (i * 31) as u8).collect();
        let original = data.clone();
        ks.apply_masked(offset, &mut data, &mask).unwrap();

        let mut stream = vec![0u8; data.len()];
        ks.apply(offset, &mut stream).unwrap();
        for i in 0..data.len() {
            let m = mask[(offset as usize + i) % mask.len()];
            assert_eq!(data[i], original[i] ^ (stream[i] & m), "byte {i}");
        }
    }
}
