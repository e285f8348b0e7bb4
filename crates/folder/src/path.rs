//! The relative paths of a folder binding (docs/format.md §16): UTF-8, `/`-separated,
//! every component a plain name.

/// The longest path a binding may name, in bytes.
pub const MAX_PATH_LEN: usize = 4096;

/// Why `path` is not a relative path as a binding writes it, if it is not.
pub(crate) fn path_problem(path: &str) -> Option<&'static str> {
    if path.is_empty() {
        return Some("it is empty");
    }
    if path.len() > MAX_PATH_LEN {
        return Some("it is longer than 4096 bytes");
    }
    if path.contains('\0') {
        return Some("it holds a NUL byte");
    }
    if path.contains('\\') {
        return Some("it holds a backslash");
    }
    if path.starts_with('/') {
        return Some("it is absolute");
    }
    for (i, c) in path.split('/').enumerate() {
        if c.is_empty() {
            return Some("it has an empty component");
        }
        if c == "." || c == ".." {
            return Some("it has a '.' or '..' component");
        }
        let b = c.as_bytes();
        if i == 0 && b.len() == 2 && b[0].is_ascii_alphabetic() && b[1] == b':' {
            return Some("it starts with a drive letter");
        }
    }
    None
}

/// Whether `path` names a model: its name ends in `.onnx` (any case).
pub(crate) fn is_model_name(path: &str) -> bool {
    let b = path.as_bytes();
    b.len() > 5 && b[b.len() - 5..].eq_ignore_ascii_case(b".onnx") && !path.ends_with("/.onnx")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_relative_paths_pass() {
        for p in ["model.onnx", "a/b/tokenizer.json", "ünï/cödé.txt", "a b/c"] {
            assert_eq!(path_problem(p), None, "{p}");
        }
    }

    #[test]
    fn every_other_form_is_refused() {
        for p in ["", "/abs", "a//b", "a/", "./a", "a/./b", "../a", "a/..", "a\\b", "C:/x", "c:", "a\0b"] {
            assert!(path_problem(p).is_some(), "{p:?} passed");
        }
        assert!(path_problem(&"a".repeat(MAX_PATH_LEN + 1)).is_some());
        assert_eq!(path_problem(&"a".repeat(MAX_PATH_LEN)), None);
    }

    #[test]
    fn models_are_named_onnx() {
        assert!(is_model_name("m.onnx") && is_model_name("a/M.ONNX"));
        assert!(!is_model_name("m.onnx.data") && !is_model_name(".onnx") && !is_model_name("a/.onnx"));
    }
}
