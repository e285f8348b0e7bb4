//! Locators: the structural path of a tensor inside the model, independent of names.

use super::MAX_GRAPH_DEPTH;

/// One step of a [`Locator`]: the `index`-th occurrence of field `field` in the parent message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Step {
    pub field: u32,
    pub index: u32,
}

/// The structural path from the top-level `ModelProto` to a `TensorProto`,
/// independent of names (which may repeat across scopes).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Locator(pub Vec<Step>);

impl std::fmt::Display for Locator {
    /// `field.index` steps joined by `/`, e.g. `7.0/5.3` (initializer 3 of the main graph).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("/")?;
            }
            write!(f, "{}.{}", s.field, s.index)?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Locator {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s.is_empty() {
            return Err("empty locator".into());
        }
        let mut steps = Vec::new();
        for part in s.split('/') {
            let (a, b) = part.split_once('.').ok_or_else(|| format!("locator step '{part}' is not FIELD.INDEX"))?;
            let field = locator_number(a).ok_or_else(|| format!("locator step '{part}' has a bad field number"))?;
            let index = locator_number(b).ok_or_else(|| format!("locator step '{part}' has a bad index"))?;
            steps.push(Step { field, index });
        }
        if steps.len() > 4 * MAX_GRAPH_DEPTH + 8 {
            return Err("locator is too long".into());
        }
        Ok(Locator(steps))
    }
}

/// A number of a locator step as [`Locator`]'s `Display` writes it: decimal digits only,
/// no leading zero (but `0` itself), no sign; `None` for anything else.
fn locator_number(s: &str) -> Option<u32> {
    let canonical = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    canonical.then(|| s.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locators_parse_only_as_they_are_written() {
        let l: Locator = "7.0/5.10/0.0".parse().unwrap();
        assert_eq!(l.to_string(), "7.0/5.10/0.0");
        for bad in ["7.0/05.0", "07.0", "7.00", "7.+1", "7.-1", "7.", ".0", "7.0/", "7.0 ", "7.4294967296"] {
            assert!(bad.parse::<Locator>().is_err(), "{bad}");
        }
    }
}
