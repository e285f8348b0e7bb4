//! The `.npy` header: magic, version, length and the Python dict literal
//! `{'descr': ..., 'fortran_order': ..., 'shape': (...), }`.

use crate::{numel, Dtype, NpyError, Result, MAGIC, MAX_DIMS, MAX_HEADER_LEN};

/// What the header says, and where the data starts.
pub(crate) struct Header {
    pub(crate) dtype: Dtype,
    pub(crate) shape: Vec<usize>,
    big_endian: bool,
    /// Bytes the data must have.
    data_len: usize,
    /// Offset of the data in the file.
    pub(crate) data_start: usize,
}

impl Header {
    /// Checks the data's length and converts it to little-endian in place.
    pub(crate) fn finish(&self, data: &mut [u8]) -> Result<()> {
        if data.len() != self.data_len {
            return Err(NpyError::DataLength { expected: self.data_len, found: data.len(), shape: self.shape.clone() });
        }
        if self.big_endian {
            for e in data.chunks_exact_mut(self.dtype.size()) {
                e.reverse();
            }
        }
        Ok(())
    }
}

/// Parses the header of the `.npy` file `bytes`.
pub(crate) fn parse(bytes: &[u8]) -> Result<Header> {
    if bytes.get(..MAGIC.len()) != Some(MAGIC) {
        return Err(NpyError::Magic);
    }
    let major = *bytes.get(6).ok_or(NpyError::TruncatedHeader)?;
    let (len_bytes, start) = match major {
        1 => (2, 10),
        2 | 3 => (4, 12),
        v => return Err(NpyError::Version(v)),
    };
    let raw = bytes.get(8..8 + len_bytes).ok_or(NpyError::TruncatedHeader)?;
    let hlen = raw.iter().rev().fold(0usize, |v, &b| (v << 8) | usize::from(b));
    if hlen > MAX_HEADER_LEN {
        return Err(NpyError::HeaderTooLong { len: hlen, max: MAX_HEADER_LEN });
    }
    // start + hlen <= 12 + 2^16: no overflow.
    let data_start = start + hlen;
    let text = bytes.get(start..data_start).ok_or(NpyError::TruncatedHeader)?;
    let text = std::str::from_utf8(text).map_err(|_| NpyError::Header("not text".into()))?;
    let dict = Dict::parse(text)?;
    let (dtype, big_endian) = Dtype::from_descr(&dict.descr).ok_or_else(|| NpyError::Dtype(clip(&dict.descr)))?;
    if dict.fortran_order {
        return Err(NpyError::Fortran);
    }
    let data_len = numel(&dict.shape)
        .and_then(|n| n.checked_mul(dtype.size()))
        .ok_or(NpyError::ShapeTooLarge(dict.shape.clone()))?;
    Ok(Header { dtype, shape: dict.shape, big_endian, data_len, data_start })
}

/// The header text for `descr` and `shape`, padded with spaces and ended by
/// `\n` so that the data starts at a multiple of 64 bytes in a version 1.0 file.
pub(crate) fn encode(descr: &str, shape: &[usize]) -> String {
    let shape = match shape {
        [] => "()".to_string(),
        [d] => format!("({d},)"),
        _ => format!("({})", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    let total = MAGIC.len() + 2 + 2 + header.len() + 1;
    header.push_str(&" ".repeat(total.next_multiple_of(64) - total));
    header.push('\n');
    header
}

/// At most 40 characters of an untrusted string, control characters replaced,
/// for a one-line error message.
fn clip(s: &str) -> String {
    s.chars().take(40).map(|c| if c.is_control() { '?' } else { c }).collect()
}

/// The three keys of the header dict.
struct Dict {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// A cursor over the header text.
struct Cursor<'a> {
    rest: &'a str,
}

fn malformed(what: &str) -> NpyError {
    NpyError::Header(what.to_string())
}

impl<'a> Cursor<'a> {
    fn skip_ws(&mut self) {
        self.rest = self.rest.trim_start_matches([' ', '\t', '\n', '\r']);
    }

    /// Consumes `token` (after whitespace) if it is next.
    fn eat(&mut self, token: &str) -> bool {
        self.skip_ws();
        match self.rest.strip_prefix(token) {
            Some(r) => {
                self.rest = r;
                true
            }
            None => false,
        }
    }

    fn expect(&mut self, token: &str, what: &str) -> Result<()> {
        if self.eat(token) {
            Ok(())
        } else {
            Err(malformed(what))
        }
    }

    /// A string literal in single or double quotes, without escapes.
    fn string(&mut self) -> Result<&'a str> {
        self.skip_ws();
        let quote = self
            .rest
            .chars()
            .next()
            .filter(|c| *c == '\'' || *c == '"')
            .ok_or_else(|| malformed("expected a quoted string"))?;
        let body = &self.rest[1..];
        let end = body.find(quote).ok_or_else(|| malformed("unterminated string"))?;
        let s = &body[..end];
        if s.contains('\\') {
            return Err(malformed("escapes in strings are not supported"));
        }
        self.rest = &body[end + 1..];
        Ok(s)
    }

    /// A tuple of non-negative integers (a trailing `L` of Python 2 is accepted).
    fn shape(&mut self) -> Result<Vec<usize>> {
        self.expect("(", "shape must be a tuple")?;
        let mut dims = Vec::new();
        loop {
            if self.eat(")") {
                return Ok(dims);
            }
            self.skip_ws();
            let digits = self.rest.len() - self.rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            if digits == 0 {
                return Err(malformed("shape dimensions must be non-negative integers"));
            }
            let d = self.rest[..digits].parse::<usize>().map_err(|_| NpyError::ShapeTooLarge(dims.clone()))?;
            self.rest = &self.rest[digits..];
            self.eat("L");
            dims.push(d);
            if dims.len() > MAX_DIMS {
                return Err(malformed(&format!("more than {MAX_DIMS} dimensions")));
            }
            if !self.eat(",") {
                self.expect(")", "shape must be a tuple of integers")?;
                return Ok(dims);
            }
        }
    }
}

impl Dict {
    fn parse(text: &str) -> Result<Dict> {
        let mut c = Cursor { rest: text };
        c.expect("{", "the header must be a dict")?;
        let (mut descr, mut fortran, mut shape) = (None, None, None);
        loop {
            if c.eat("}") {
                break;
            }
            let key = c.string()?;
            c.expect(":", "expected ':' after a key")?;
            let duplicate = match key {
                "descr" => descr.replace(c.string()?.to_string()).is_some(),
                "fortran_order" => {
                    let v = if c.eat("False") {
                        false
                    } else if c.eat("True") {
                        true
                    } else {
                        return Err(malformed("fortran_order must be True or False"));
                    };
                    fortran.replace(v).is_some()
                }
                "shape" => shape.replace(c.shape()?).is_some(),
                other => return Err(malformed(&format!("unexpected key '{}'", clip(other)))),
            };
            if duplicate {
                return Err(malformed(&format!("key '{key}' appears twice")));
            }
            if !c.eat(",") {
                c.expect("}", "expected ',' or '}' in the dict")?;
                break;
            }
        }
        c.skip_ws();
        if !c.rest.is_empty() {
            return Err(malformed("text after the dict"));
        }
        Ok(Dict {
            descr: descr.ok_or_else(|| malformed("no 'descr'"))?,
            fortran_order: fortran.ok_or_else(|| malformed("no 'fortran_order'"))?,
            shape: shape.ok_or_else(|| malformed("no valid 'shape'"))?,
        })
    }
}
