//! A summary of a model: versions, operators, where its weights are stored.
//!
//! [`Report`] serialises to the JSON document printed by `onnx-protect inspect --json`;
//! its schema is specified in `docs/inspect-json.md` and identified by [`SCHEMA`].

use std::collections::BTreeMap;

use onnx_protect_format::model::GraphKind;
use onnx_protect_format::{discover, Model, TensorData};
use serde::Serialize;

/// Identifies the JSON schema version of [`Report`].
pub const SCHEMA: &str = "onnx-protect/inspect/1";

#[derive(Debug, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub file: Option<String>,
    pub file_bytes: u64,
    pub ir_version: Option<i64>,
    pub producer_name: String,
    pub producer_version: String,
    pub domain: String,
    pub model_version: Option<i64>,
    pub opsets: Vec<OpsetReport>,
    pub node_count: usize,
    /// Nodes per operator, over every graph (subgraphs and function bodies included).
    /// Keys are `op_type` for the default domain and `domain:op_type` otherwise.
    pub op_types: BTreeMap<String, usize>,
    /// The main graph's inputs (initializers listed as inputs left out) and outputs.
    pub inputs: Vec<ValueReport>,
    pub outputs: Vec<ValueReport>,
    pub graphs: Vec<GraphReport>,
    pub tensors: Vec<TensorReport>,
    pub weights: WeightSummary,
    pub external_files: Vec<ExternalReport>,
    pub metadata_keys: Vec<String>,
    /// What onnx-protect encrypted, when the model carries a manifest (`null` otherwise).
    pub protection: Option<crate::summary::ProtectionInfo>,
    /// Why the manifest could not be read, when it is present but invalid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protection_error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct OpsetReport {
    pub domain: String,
    pub version: i64,
}

/// A graph input or output: its name and declared type (`float32[1, 3, N, 224]`, `?`).
#[derive(Debug, Serialize)]
pub struct ValueReport {
    pub name: String,
    #[serde(rename = "type")]
    pub value_type: String,
}

/// The main graph's inputs (without initializers that older models list as inputs)
/// and outputs.
fn values(model: &Model) -> (Vec<ValueReport>, Vec<ValueReport>) {
    let Some(g) = model.graphs.iter().find(|g| g.kind == onnx_protect_format::model::GraphKind::Main) else {
        return (Vec::new(), Vec::new());
    };
    let inits: std::collections::HashSet<&str> =
        g.initializers.iter().map(|&t| model.tensors[t].name.as_str()).collect();
    let report = |names: &[String], types: &[onnx_protect_format::ValueType], skip: &dyn Fn(&str) -> bool| {
        names
            .iter()
            .enumerate()
            .filter(|(_, n)| !skip(n))
            .map(|(i, n)| ValueReport {
                name: n.clone(),
                value_type: types.get(i).map(|t| t.to_string()).unwrap_or_else(|| "?".into()),
            })
            .collect()
    };
    (report(&g.inputs, &g.input_types, &|n| inits.contains(n)), report(&g.outputs, &g.output_types, &|_| false))
}

#[derive(Debug, Serialize)]
pub struct GraphReport {
    pub path: String,
    pub name: String,
    pub kind: &'static str,
    pub depth: usize,
    pub nodes: usize,
    pub initializers: usize,
    pub sparse_initializers: usize,
}

#[derive(Debug, Serialize)]
pub struct TensorReport {
    pub name: String,
    pub locator: String,
    pub origin: &'static str,
    pub graph: String,
    pub data_type: &'static str,
    pub dims: Vec<u64>,
    pub nbytes: u64,
    pub storage: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalRef>,
    /// Present when the tensor is a weight.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub uses: Vec<UseReport>,
}

#[derive(Debug, Serialize)]
pub struct ExternalRef {
    pub location: String,
    pub offset: u64,
    pub length: u64,
}

#[derive(Debug, Serialize)]
pub struct UseReport {
    pub node: String,
    pub op_type: String,
    pub role: &'static str,
    pub kind: &'static str,
    pub input_index: usize,
    /// Op types of the pass-through nodes between the constant and the user.
    pub via: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct Tally {
    pub count: u64,
    pub bytes: u64,
}

impl Tally {
    fn add(&mut self, bytes: u64) {
        self.count += 1;
        self.bytes += bytes;
    }
}

#[derive(Debug, Default, Serialize)]
pub struct WeightSummary {
    pub count: u64,
    pub bytes: u64,
    /// Attributed to each weight's first user.
    pub by_op_type: BTreeMap<String, Tally>,
    pub by_dtype: BTreeMap<String, Tally>,
    pub by_storage: BTreeMap<String, Tally>,
    pub by_kind: BTreeMap<String, Tally>,
}

#[derive(Debug, Serialize)]
pub struct ExternalReport {
    pub location: String,
    pub size: u64,
    pub tensors: usize,
    pub bytes: u64,
}

fn graph_kind(k: &GraphKind) -> &'static str {
    match k {
        GraphKind::Main => "main",
        GraphKind::Subgraph { .. } => "subgraph",
        GraphKind::Function { .. } => "function",
        GraphKind::Training { .. } => "training",
    }
}

/// Builds the report of a parsed model.
pub fn inspect(model: &Model) -> Report {
    let (summary, mut uses_of) = summarize_weights(model);
    let mut op_types = BTreeMap::new();
    for n in &model.nodes {
        let key = if n.is_onnx() { n.op_type.clone() } else { format!("{}:{}", n.domain, n.op_type) };
        *op_types.entry(key).or_insert(0) += 1;
    }
    let (inputs, outputs) = values(model);
    let tensors = model
        .tensors
        .iter()
        .map(|t| TensorReport {
            name: t.name.clone(),
            locator: t.locator.to_string(),
            origin: t.origin.name(),
            graph: model.graphs[t.graph].path.clone(),
            data_type: t.data_type.name(),
            dims: t.dims.clone(),
            nbytes: t.nbytes,
            storage: t.data.storage_name(),
            external: match &t.data {
                TensorData::External { file, range } => Some(ExternalRef {
                    location: model.external_files[*file].location.clone(),
                    offset: range.start,
                    length: range.end - range.start,
                }),
                _ => None,
            },
            uses: uses_of.remove(&t.id).unwrap_or_default(),
        })
        .collect();
    let (protection, protection_error) =
        match crate::protection::Protection::read(model).and_then(|p| p.map(|p| p.info(model)).transpose()) {
            Ok(p) => (p, None),
            Err(e) => (None, Some(e.to_string())),
        };
    Report {
        schema: SCHEMA,
        file: model.path.as_ref().map(|p| p.display().to_string()),
        file_bytes: model.bytes().len() as u64,
        ir_version: model.ir_version,
        producer_name: model.producer_name.clone(),
        producer_version: model.producer_version.clone(),
        domain: model.domain.clone(),
        model_version: model.model_version,
        opsets: model.opsets.iter().map(|o| OpsetReport { domain: o.domain.clone(), version: o.version }).collect(),
        node_count: model.nodes.len(),
        op_types,
        inputs,
        outputs,
        graphs: model
            .graphs
            .iter()
            .map(|g| GraphReport {
                path: g.path.clone(),
                name: g.name.clone(),
                kind: graph_kind(&g.kind),
                depth: g.depth,
                nodes: g.nodes.len(),
                initializers: g.initializers.len(),
                sparse_initializers: g.sparse_initializers.len(),
            })
            .collect(),
        tensors,
        weights: summary,
        external_files: model
            .external_files
            .iter()
            .map(|f| ExternalReport {
                location: f.location.clone(),
                size: f.size,
                tensors: f.tensors.len(),
                bytes: f.tensors.iter().map(|&t| model.tensors[t].nbytes).sum(),
            })
            .collect(),
        metadata_keys: model.metadata.iter().map(|m| m.key.clone()).collect(),
        protection,
        protection_error,
    }
}

/// The weights of `model` summed up, and the uses of each weight, by tensor id.
fn summarize_weights(model: &Model) -> (WeightSummary, BTreeMap<usize, Vec<UseReport>>) {
    let mut uses_of: BTreeMap<usize, Vec<UseReport>> = BTreeMap::new();
    let mut summary = WeightSummary::default();
    for w in &discover(model) {
        let t = &model.tensors[w.tensor];
        summary.count += 1;
        summary.bytes += t.nbytes;
        summary.by_op_type.entry(w.primary_op().to_string()).or_default().add(t.nbytes);
        summary.by_dtype.entry(t.data_type.name().to_string()).or_default().add(t.nbytes);
        summary.by_storage.entry(t.data.storage_name().to_string()).or_default().add(t.nbytes);
        let kind = w.uses.first().map(|u| u.kind.name()).unwrap_or("main");
        summary.by_kind.entry(kind.to_string()).or_default().add(t.nbytes);
        uses_of.insert(
            w.tensor,
            w.uses
                .iter()
                .map(|u| UseReport {
                    node: model.nodes[u.node].name.clone(),
                    op_type: u.op_type.clone(),
                    role: u.role,
                    kind: u.kind.name(),
                    input_index: u.input_index,
                    via: u.via.iter().map(|&n| model.nodes[n].op_type.clone()).collect(),
                })
                .collect(),
        );
    }
    (summary, uses_of)
}

fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// One line of what the bytes under a key get, for people: "1.2 KiB encrypted, 3.4 KiB
/// sign and mantissa encrypted (exponent clear), 0 B permuted".
pub fn protection_breakdown(by: &BTreeMap<&'static str, u64>) -> String {
    crate::summary::ProtectionKind::ALL
        .iter()
        .map(|p| format!("{} {}", human(by.get(p.id()).copied().unwrap_or(0)), p.label()))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Whether a terminal would act on `c` or not show it: control characters (C0, DEL, C1),
/// line and paragraph separators, and the invisible format characters (soft hyphen,
/// zero-width and joiner characters, direction marks, embeddings, overrides and isolates,
/// the byte order mark, interlinear annotation marks, tag characters).
pub fn is_non_printing(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{ad}'
                | '\u{61c}'
                | '\u{180e}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{206f}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffb}'
                | '\u{e0000}'..='\u{e007f}'
        )
}

/// `text` with every [`is_non_printing`] character written as `\u{HEX}`, so that text a
/// model carries (names, labels, paths) prints as itself on a terminal: it cannot move the
/// cursor, change colours, set the window title, start a new line or reorder what follows.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(is_non_printing) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_non_printing(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// A JSON text with every [`is_non_printing`] character that is not a line break between
/// values written as a JSON escape (`\u007f`, `\u009b`, `\u202e`; a surrogate pair past
/// U+FFFF): the same document, printable. `serde_json` escapes the C0 controls in strings
/// but writes DEL, the C1 controls and the format characters as they are; outside strings
/// a JSON text has none of them.
pub fn printable_json(json: &str) -> std::borrow::Cow<'_, str> {
    if !json.chars().any(|c| c != '\n' && is_non_printing(c)) {
        return std::borrow::Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if c != '\n' && is_non_printing(c) {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{:04x}", u));
            }
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Appends one line of the text report: `args` formatted, made [`printable`] (the model's
/// strings in it included), and a newline.
fn push_line(s: &mut String, args: std::fmt::Arguments) {
    s.push_str(&printable(&args.to_string()));
    s.push('\n');
}

/// `writeln!` for the report's lines, through [`push_line`].
macro_rules! line {
    ($s:expr, $($arg:tt)*) => {
        push_line($s, format_args!($($arg)*))
    };
}

impl Report {
    /// The human-readable summary printed by `inspect` without `--json`. Every line is
    /// [`printable`]: text from the model cannot drive the terminal.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let s = &mut out;
        line!(s, "model        {}", self.file.as_deref().unwrap_or("<memory>"));
        line!(s, "size         {} ({} bytes)", human(self.file_bytes), self.file_bytes);
        line!(s, "ir_version   {}", self.ir_version.map(|v| v.to_string()).unwrap_or_else(|| "-".into()));
        let opsets: Vec<String> = self
            .opsets
            .iter()
            .map(|o| format!("{}={}", if o.domain.is_empty() { "ai.onnx" } else { &o.domain }, o.version))
            .collect();
        line!(s, "opsets       {}", opsets.join(", "));
        line!(s, "producer     {} {}", self.producer_name, self.producer_version);
        for (label, values) in [("inputs", &self.inputs), ("outputs", &self.outputs)] {
            line!(s, "{label:<12} {}", values.len());
            for v in values {
                line!(s, "  {:<40} {}", v.name, v.value_type);
            }
        }
        s.push('\n');
        line!(s, "nodes        {} in {} graph(s)", self.node_count, self.graphs.len());
        for (op, n) in &self.op_types {
            line!(s, "  {op:<28} {n}");
        }
        s.push('\n');
        line!(s, "weights      {} tensors, {}", self.weights.count, human(self.weights.bytes));
        line!(s, "  by op type");
        for (k, t) in &self.weights.by_op_type {
            line!(s, "    {k:<26} {:>5} {:>12}", t.count, human(t.bytes));
        }
        line!(s, "  by dtype");
        for (k, t) in &self.weights.by_dtype {
            line!(s, "    {k:<26} {:>5} {:>12}", t.count, human(t.bytes));
        }
        line!(s, "  by storage");
        for (k, t) in &self.weights.by_storage {
            line!(s, "    {k:<26} {:>5} {:>12}", t.count, human(t.bytes));
        }
        let subgraphs: Vec<&GraphReport> = self.graphs.iter().filter(|g| g.kind != "main").collect();
        s.push('\n');
        line!(s, "subgraphs    {}", subgraphs.len());
        for g in subgraphs {
            line!(s, "  {:<40} {} nodes, depth {}", g.path, g.nodes, g.depth);
        }
        s.push('\n');
        line!(s, "external data files {}", self.external_files.len());
        for f in &self.external_files {
            line!(s, "  {:<40} {} tensors, {}", f.location, f.tensors, human(f.bytes));
        }
        s.push('\n');
        line!(s, "metadata_props keys {}", self.metadata_keys.len());
        for k in &self.metadata_keys {
            line!(s, "  {k}");
        }
        if let Some(e) = &self.protection_error {
            s.push('\n');
            line!(s, "protection   INVALID: {e}");
        }
        if let Some(p) = &self.protection {
            self.protection_text(p, s);
        }
        out
    }

    /// The protection section of [`Report::to_text`].
    fn protection_text(&self, p: &crate::summary::ProtectionInfo, s: &mut String) {
        let pct =
            if self.weights.bytes > 0 { 100.0 * p.encrypted_bytes as f64 / self.weights.bytes as f64 } else { 0.0 };
        let amount = if p.positions == "secret" {
            "positions secret".to_string()
        } else {
            format!("{} under a key ({pct:.2}% of weight bytes)", human(p.encrypted_bytes))
        };
        s.push('\n');
        line!(
            s,
            "protection   {} ({}), {} tensors, {amount}{}",
            p.key,
            p.tool,
            p.tensors.len(),
            if p.passphrase { ", passphrase key" } else { "" }
        );
        line!(s, "  {}", protection_breakdown(&p.bytes_by_protection));
        if let Some(w) = p.warning {
            line!(s, "  warning: {w}");
        }
        if p.format_version >= 2 {
            line!(
                s,
                "  integrity    every byte: BLAKE3 content digest under HMAC-SHA256 (per tier) and a keyless checksum"
            );
        } else {
            line!(
                s,
                "  integrity    HMAC-SHA256 over {} chunk hashes of the encrypted bytes",
                p.leaf_hash.to_uppercase()
            );
        }
        if let Some(l) = &p.label_lock {
            line!(s, "  label lock   {l}");
        }
        if p.positions == "secret" {
            line!(s, "  positions    secret: which subsequences are encrypted is sealed (key holders only)");
        }
        for r in &p.recipients {
            line!(s, "  recipient    {r}");
        }
        for k in &p.signatures {
            line!(s, "  signed by    {k} (not verified: use verify --signer)");
        }
        if p.tiers > 1 {
            // The order the encryptor recorded (docs/policy.md, "Access tiers").
            let by = match crate::summary::recorded_order(&p.policy_summary) {
                Some("classes") => ", by class",
                Some("inverse") => ", most important first",
                _ => "",
            };
            line!(s, "  tiers        {}{by} ({} restored in this file)", p.tiers, p.restored_tiers);
            if let Some(groups) = &p.tier_classes {
                let served: Vec<String> = (1..)
                    .zip(groups)
                    .map(|(t, g)| {
                        format!("tier {t}: {}", onnx_protect_select::class_groups_text(std::slice::from_ref(g)))
                    })
                    .collect();
                line!(s, "  classes      {}", served.join(", "));
            }
        }
        for t in &p.tensors {
            let mut spans: Vec<String> = t.spans.iter().take(4).map(|(a, b)| format!("[{a},{b})")).collect();
            if p.positions == "secret" {
                spans = vec!["(secret)".into()];
            }
            let more = if t.spans.len() > 4 { format!(" +{} more", t.spans.len() - 4) } else { String::new() };
            let tier = if t.tier > 0 { format!(" tier {}", t.tier) } else { String::new() };
            line!(
                s,
                "  {:<28} {:<8} {} ({}){tier}, {}/{} subseq, {} of {} bytes at {}{more}",
                t.name,
                t.op_type,
                t.mode,
                t.label,
                t.chosen,
                t.subsequences,
                t.encrypted_bytes,
                t.nbytes,
                spans.join(" ")
            );
        }
    }
}

#[cfg(test)]
mod printable_tests {
    use super::*;

    #[test]
    fn non_printing_characters_are_escaped_and_the_rest_kept() {
        assert!(matches!(printable("conv1.weight µ ×"), std::borrow::Cow::Borrowed(_)));
        let hostile = "a\u{1b}]0;owned\u{7}b\u{7f}\u{9b}31m\nc\r\u{202e}d\u{e0041}";
        let p = printable(hostile);
        assert_eq!(p, "a\\u{1b}]0;owned\\u{7}b\\u{7f}\\u{9b}31m\\u{a}c\\u{d}\\u{202e}d\\u{e0041}");
        assert!(!p.chars().any(is_non_printing));
    }

    #[test]
    fn printable_json_is_the_same_document() {
        let v = serde_json::json!({"name": "x\u{1b}[2J\u{7f}\u{9b}\u{202e}\u{e0041}\n", "n": [1, 2]});
        let text = serde_json::to_string_pretty(&v).unwrap();
        let safe = printable_json(&text);
        assert!(!safe.chars().any(|c| c != '\n' && is_non_printing(c)), "{safe}");
        assert!(safe.contains("\\u007f") && safe.contains("\\udb40\\udc41"), "{safe}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&safe).unwrap(), v);
    }
}
