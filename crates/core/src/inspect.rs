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

impl Report {
    /// The human-readable summary printed by `inspect` without `--json`.
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "model        {}", self.file.as_deref().unwrap_or("<memory>"));
        let _ = writeln!(s, "size         {} ({} bytes)", human(self.file_bytes), self.file_bytes);
        let _ = writeln!(s, "ir_version   {}", self.ir_version.map(|v| v.to_string()).unwrap_or_else(|| "-".into()));
        let opsets: Vec<String> = self
            .opsets
            .iter()
            .map(|o| format!("{}={}", if o.domain.is_empty() { "ai.onnx" } else { &o.domain }, o.version))
            .collect();
        let _ = writeln!(s, "opsets       {}", opsets.join(", "));
        let _ = writeln!(s, "producer     {} {}", self.producer_name, self.producer_version);
        for (label, values) in [("inputs", &self.inputs), ("outputs", &self.outputs)] {
            let _ = writeln!(s, "{label:<12} {}", values.len());
            for v in values {
                let _ = writeln!(s, "  {:<40} {}", v.name, v.value_type);
            }
        }
        let _ = writeln!(s, "\nnodes        {} in {} graph(s)", self.node_count, self.graphs.len());
        for (op, n) in &self.op_types {
            let _ = writeln!(s, "  {op:<28} {n}");
        }
        let _ = writeln!(s, "\nweights      {} tensors, {}", self.weights.count, human(self.weights.bytes));
        let _ = writeln!(s, "  by op type");
        for (k, t) in &self.weights.by_op_type {
            let _ = writeln!(s, "    {k:<26} {:>5} {:>12}", t.count, human(t.bytes));
        }
        let _ = writeln!(s, "  by dtype");
        for (k, t) in &self.weights.by_dtype {
            let _ = writeln!(s, "    {k:<26} {:>5} {:>12}", t.count, human(t.bytes));
        }
        let _ = writeln!(s, "  by storage");
        for (k, t) in &self.weights.by_storage {
            let _ = writeln!(s, "    {k:<26} {:>5} {:>12}", t.count, human(t.bytes));
        }
        let subgraphs: Vec<&GraphReport> = self.graphs.iter().filter(|g| g.kind != "main").collect();
        let _ = writeln!(s, "\nsubgraphs    {}", subgraphs.len());
        for g in subgraphs {
            let _ = writeln!(s, "  {:<40} {} nodes, depth {}", g.path, g.nodes, g.depth);
        }
        let _ = writeln!(s, "\nexternal data files {}", self.external_files.len());
        for f in &self.external_files {
            let _ = writeln!(s, "  {:<40} {} tensors, {}", f.location, f.tensors, human(f.bytes));
        }
        let _ = writeln!(s, "\nmetadata_props keys {}", self.metadata_keys.len());
        for k in &self.metadata_keys {
            let _ = writeln!(s, "  {k}");
        }
        if let Some(e) = &self.protection_error {
            let _ = writeln!(s, "\nprotection   INVALID: {e}");
        }
        if let Some(p) = &self.protection {
            self.protection_text(p, &mut s);
        }
        s
    }

    /// The protection section of [`Report::to_text`].
    fn protection_text(&self, p: &crate::summary::ProtectionInfo, s: &mut String) {
        use std::fmt::Write;
        let pct =
            if self.weights.bytes > 0 { 100.0 * p.encrypted_bytes as f64 / self.weights.bytes as f64 } else { 0.0 };
        let amount = if p.positions == "secret" {
            "positions secret".to_string()
        } else {
            format!("{} under a key ({pct:.2}% of weight bytes)", human(p.encrypted_bytes))
        };
        let _ = writeln!(
            s,
            "\nprotection   {} ({}), {} tensors, {amount}{}",
            p.key,
            p.tool,
            p.tensors.len(),
            if p.passphrase { ", passphrase key" } else { "" }
        );
        let _ = writeln!(s, "  {}", protection_breakdown(&p.bytes_by_protection));
        if let Some(w) = p.warning {
            let _ = writeln!(s, "  warning: {w}");
        }
        if p.format_version >= 2 {
            let _ = writeln!(
                s,
                "  integrity    every byte: BLAKE3 content digest under HMAC-SHA256 (per tier) and a keyless checksum"
            );
        } else {
            let _ = writeln!(
                s,
                "  integrity    HMAC-SHA256 over {} chunk hashes of the encrypted bytes",
                p.leaf_hash.to_uppercase()
            );
        }
        if let Some(l) = &p.label_lock {
            let outs: Vec<String> = l.outputs.iter().map(|(n, k)| format!("{n} ({k})")).collect();
            let _ = writeln!(
                s,
                "  label lock   {} classes of {} in a keyed order ({}); outputs {} need the key{}",
                l.classes,
                l.node,
                l.tensors.join(", "),
                outs.join(", "),
                if l.only { "; weights in clear" } else { "" }
            );
        }
        if p.positions == "secret" {
            let _ = writeln!(s, "  positions    secret: which subsequences are encrypted is sealed (key holders only)");
        }
        for r in &p.recipients {
            let _ = writeln!(s, "  recipient    {r}");
        }
        for k in &p.signatures {
            let _ = writeln!(s, "  signed by    {k} (not verified: use verify --signer)");
        }
        if p.tiers > 1 {
            let _ = writeln!(s, "  tiers        {} ({} restored in this file)", p.tiers, p.restored_tiers);
        }
        for t in &p.tensors {
            let mut spans: Vec<String> = t.spans.iter().take(4).map(|(a, b)| format!("[{a},{b})")).collect();
            if p.positions == "secret" {
                spans = vec!["(secret)".into()];
            }
            let more = if t.spans.len() > 4 { format!(" +{} more", t.spans.len() - 4) } else { String::new() };
            let tier = if t.tier > 0 { format!(" tier {}", t.tier) } else { String::new() };
            let _ = writeln!(
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
