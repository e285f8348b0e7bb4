//! What each mode does to the encrypted spans of a tensor (docs/format.md §6): which bits
//! of an element the format-preserving keystream reaches ([`fp_mask`]), whether a mode
//! transforms a span as a whole ([`Mode::whole_spans`]) and the fewest elements it takes
//! in one span ([`Mode::min_span_elements`]). Selection asks these when it picks spans;
//! the byte pass applies them.

use serde::Deserialize;

/// How a tensor's chosen spans are encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// AES-256-CTR over every bit.
    Ctr,
    /// Keystream on sign and mantissa bits only (floats), every bit (integers), the low
    /// bit (BOOL): [`fp_mask`].
    #[serde(alias = "format-preserving", alias = "format_preserving")]
    Fp,
    /// Keyed permutation of the elements inside each chosen subsequence: the
    /// encrypted values are the layer's own values (docs/format.md §6).
    #[serde(alias = "distribution-preserving", alias = "distribution_preserving")]
    Dp,
}

/// Fewest elements a distribution-preserving span holds: a shorter permutation hides too
/// little (one element permuted is no change at all).
pub const DP_MIN_ELEMENTS: u64 = 16;

impl Mode {
    /// The name policies and reports use: `ctr`, `fp`, `dp`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Ctr => "ctr",
            Mode::Fp => "fp",
            Mode::Dp => "dp",
        }
    }

    /// The mode a name or its long spelling (`format-preserving`, `distribution_preserving`,
    /// ...) names; `None` for any other text.
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "ctr" => Some(Mode::Ctr),
            "fp" | "format-preserving" | "format_preserving" => Some(Mode::Fp),
            "dp" | "distribution-preserving" | "distribution_preserving" => Some(Mode::Dp),
            _ => None,
        }
    }

    /// Whether a span is transformed as a whole (dp: a permutation of its elements), not
    /// byte by byte: a tensor in this mode is transformed in memory, whole, never streamed
    /// chunk by chunk; each span is one unit (spans may touch and are never merged); its
    /// elements are whole bytes and a span holds at least [`Mode::min_span_elements`] of them.
    pub fn whole_spans(self) -> bool {
        match self {
            Mode::Ctr | Mode::Fp => false,
            Mode::Dp => true,
        }
    }

    /// Whether this mode can transform elements of `bits` bits: every size byte by byte; in
    /// a mode of whole spans only whole bytes (a permutation moves elements, not bits).
    pub fn takes_element_bits(self, bits: u64) -> bool {
        !self.whole_spans() || (bits >= 8 && bits % 8 == 0)
    }

    /// The fewest elements one span may hold in this mode: [`DP_MIN_ELEMENTS`] in `dp`,
    /// whose shorter permutations hide too little; 1 in the modes that work byte by byte.
    pub fn min_span_elements(self) -> u64 {
        if self.whole_spans() {
            DP_MIN_ELEMENTS
        } else {
            1
        }
    }
}

/// The bits the format-preserving mode may change, per little-endian byte of one element
/// of the ONNX `data_type` code `data_type` (docs/format.md §5 numbers them, §6 gives the
/// masks): sign and mantissa of a float, every bit of an integer, the low bit of a BOOL;
/// `None` for the types the mode does not encrypt (STRING, FLOAT8E8M0, the FLOAT6 types)
/// and for codes that name no type.
pub fn fp_mask(data_type: i32) -> Option<&'static [u8]> {
    Some(match data_type {
        // FLOAT, COMPLEX64
        1 | 14 => &[0xFF, 0xFF, 0x7F, 0x80],
        // DOUBLE, COMPLEX128
        11 | 15 => &[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F, 0x80],
        // FLOAT16
        10 => &[0xFF, 0x83],
        // BFLOAT16
        16 => &[0x7F, 0x80],
        // FLOAT8E4M3FN, FLOAT8E4M3FNUZ
        17 | 18 => &[0x87],
        // FLOAT8E5M2, FLOAT8E5M2FNUZ
        19 | 20 => &[0x83],
        // FLOAT4E2M1 (two elements per byte)
        23 => &[0x99],
        // BOOL
        9 => &[0x01],
        // UINT8, INT8, UINT4, INT4, UINT2, INT2
        2 | 3 | 21 | 22 | 25 | 26 => &[0xFF],
        // UINT16, INT16
        4 | 5 => &[0xFF, 0xFF],
        // INT32, UINT32
        6 | 12 => &[0xFF; 4],
        // INT64, UINT64
        7 | 13 => &[0xFF; 8],
        // STRING (8), FLOAT8E8M0 (24), FLOAT6E2M3 (27), FLOAT6E3M2 (28), unknown codes
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Type names with their mask bytes.
    type Masks = Vec<(String, Vec<u8>)>;
    /// Type names with their `data_type` codes.
    type Codes = Vec<(String, i32)>;

    /// The masks docs/format.md §6 lists, each with the type names before it, and the
    /// type codes of §5's table (`| 32 | 1 FLOAT, 6 INT32, 12 UINT32 |`).
    fn documented() -> (Masks, Codes) {
        let doc = include_str!("../../../docs/format.md");
        let section = |from: &str, to: &str| {
            let a = doc.find(from).unwrap_or_else(|| panic!("docs/format.md has {from}"));
            let b = a + doc[a..].find(to).unwrap_or_else(|| panic!("docs/format.md has {to} after {from}"));
            &doc[a..b]
        };
        let fp = section("`MODE_FORMAT_PRESERVING`", "Both XOR modes").split_whitespace().collect::<Vec<_>>().join(" ");
        let lead = "exponent bits stay in clear):";
        let list = &fp[fp.find(lead).expect("the mask list") + lead.len()..];
        let mut masks = Vec::new();
        for item in list.split(';') {
            let mut parts = item.split('`');
            let (Some(names), Some(hex)) = (parts.next(), parts.next()) else { continue };
            let bytes: Vec<u8> = hex.split(' ').map(|h| u8::from_str_radix(h, 16).expect("a hex byte")).collect();
            for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                masks.push((name.to_string(), bytes.clone()));
            }
        }
        let mut codes = Vec::new();
        for row in section("**Bits per element**", "`numel` is").lines().filter(|l| l.starts_with('|')) {
            let Some(cell) = row.split('|').nth(2) else { continue };
            for entry in cell.split(',') {
                if let Some((code, name)) = entry.trim().split_once(' ') {
                    if let Ok(code) = code.parse() {
                        codes.push((name.to_string(), code));
                    }
                }
            }
        }
        (masks, codes)
    }

    #[test]
    fn the_format_preserving_masks_are_those_of_docs_format_md() {
        let (masks, codes) = documented();
        assert_eq!(codes.len(), 28, "{codes:?}");
        let named = |name: &str| masks.iter().find(|(n, _)| n == name).map(|(_, m)| m.as_slice());
        assert_eq!(named("every integer type (2 to 64 bits)"), Some(&[0xFF][..]), "{masks:?}");
        let mut with_mask = 0;
        for (name, code) in &codes {
            // UINT2 … INT64: `FF` in every byte of an element (one byte for the packed types).
            let int_bits =
                name.strip_prefix('U').unwrap_or(name).strip_prefix("INT").and_then(|b| b.parse::<usize>().ok());
            let want = match (named(name), int_bits) {
                (Some(m), _) => Some(m.to_vec()),
                (None, Some(bits)) => Some(vec![0xFF; bits.div_ceil(8)]),
                (None, None) => None,
            };
            assert_eq!(fp_mask(*code).map(<[u8]>::to_vec), want, "{name} ({code})");
            with_mask += usize::from(want.is_some());
        }
        // STRING, FLOAT8E8M0 and the two FLOAT6 types have none.
        assert_eq!(with_mask, 24, "{masks:?}");
        for (name, _) in masks.iter().filter(|(n, _)| !n.starts_with("every")) {
            assert!(codes.iter().any(|(n, _)| n == name), "docs/format.md §6 names {name}, which §5 does not number");
        }
        for code in [0, 8, 24, 27, 28, 29, -1, i32::MAX] {
            assert_eq!(fp_mask(code), None, "code {code}");
        }
    }

    #[test]
    fn only_the_distribution_preserving_mode_takes_whole_spans_of_sixteen_elements() {
        assert_eq!([Mode::Ctr, Mode::Fp, Mode::Dp].map(Mode::whole_spans), [false, false, true]);
        assert_eq!([Mode::Ctr, Mode::Fp, Mode::Dp].map(Mode::min_span_elements), [1, 1, 16]);
        for bits in [1, 2, 4, 8, 12, 16, 32, 64] {
            let whole = bits % 8 == 0;
            assert_eq!(
                [Mode::Ctr, Mode::Fp, Mode::Dp].map(|m| m.takes_element_bits(bits)),
                [true, true, whole],
                "{bits}"
            );
        }
        for m in [Mode::Ctr, Mode::Fp, Mode::Dp] {
            assert_eq!(Mode::parse(m.name()), Some(m));
        }
        assert_eq!(Mode::parse("format-preserving"), Some(Mode::Fp));
        assert_eq!(Mode::parse("distribution_preserving"), Some(Mode::Dp));
        assert_eq!(Mode::parse("CTR"), None);
    }
}
