//! `assess`: how strong is a model's protection? The original, the key-less attacks
//! and the decrypted model (plus one row per access tier the key reaches, for a tiered
//! model), one table headed by the best key-less attack.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use onnx_protect_runtime::assess::{assess, AssessOptions, AssessReport, InputSource};
use onnx_protect_runtime::npy::NpyArray;

use crate::args::key::KeyArgs;
use crate::common::lift;

#[derive(clap::Args)]
pub struct Args {
    /// The unprotected model.
    #[arg(value_parser = crate::stdio::file_path)]
    original: PathBuf,
    /// The same model, protected.
    #[arg(value_parser = crate::stdio::file_path)]
    protected: PathBuf,
    /// Key of the protected model, for the `decrypted` variant (skipped without a key). For a
    /// tiered model, the key of tier T also adds the rows tier_1 .. tier_T.
    #[command(flatten)]
    key: KeyArgs,
    /// Inputs: a directory of NAME.npy files (one per model input), or one .npy file for a one-input model.
    #[arg(long, value_name = "DIR|FILE.npy", conflicts_with = "random", value_parser = crate::stdio::file_path)]
    inputs: Option<PathBuf>,
    /// Run N random samples (floats uniform in [0, 1)) instead of given inputs [default: 100].
    #[arg(long, value_name = "N")]
    random: Option<usize>,
    /// Seed of --random.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Unlabelled inputs (same layout as --inputs) for re-estimating every BatchNormalization
    /// after a fill (the *_fill_bn attacks); without them those attacks are skipped.
    #[arg(long, value_name = "DIR|FILE.npy")]
    calibration: Option<PathBuf>,
    /// Seed of the first init-fill draw.
    #[arg(long, default_value_t = 0)]
    fill_seed: u64,
    /// Init-fill draws (seeds --fill-seed, --fill-seed + 1, ...); its rows report their mean.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    fill_draws: u32,
    /// Integer class labels, one per sample (.npy), to report accuracy.
    #[arg(long, value_name = "FILE.npy", value_parser = crate::stdio::file_path)]
    labels: Option<PathBuf>,
    /// Print the report as JSON on standard output instead of a table.
    #[arg(long)]
    json: bool,
}

fn read_inputs(path: &std::path::Path) -> Result<BTreeMap<String, NpyArray>> {
    let mut map = BTreeMap::new();
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "npy"))
            .collect();
        entries.sort();
        for p in entries {
            let name = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            map.insert(name, NpyArray::read(&p).map_err(lift)?);
        }
        if map.is_empty() {
            bail!("{} holds no .npy files", path.display());
        }
    } else {
        map.insert(String::new(), NpyArray::read(path).map_err(lift)?);
    }
    Ok(map)
}

fn pct(v: Option<f64>) -> String {
    v.map(|x| format!("{:.1}%", 100.0 * x)).unwrap_or_else(|| "-".into())
}

fn num(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.4}")).unwrap_or_else(|| "-".into())
}

/// The report as a text table.
fn table(r: &AssessReport) -> String {
    let mut s = format!(
        "original  {}\nprotected {} ({} of {} weight bytes encrypted in {} tensors, {:.2}%)\n{} samples ({}), output '{}'\n\n",
        r.original,
        r.protected,
        r.encrypted_bytes,
        r.weight_bytes,
        r.encrypted_tensors,
        if r.weight_bytes > 0 { 100.0 * r.encrypted_bytes as f64 / r.weight_bytes as f64 } else { 0.0 },
        r.samples,
        r.inputs,
        r.output
    );
    if let Some(tiers) = r.tiers {
        let key = match r.key_tier {
            Some(t) => format!("key of tier {t}"),
            None => "no key: no tier rows".into(),
        };
        let restored = r.restored_tiers.unwrap_or(0);
        let restored =
            if restored > 0 { format!(", tiers 1-{restored} already decrypted in the file") } else { String::new() };
        s.insert_str(s.len() - 1, &format!("{tiers} access tiers ({key}{restored})\n"));
    }
    match &r.best_attack {
        Some(b) => {
            let chance = r.chance.map(|c| format!(" (chance {})", pct(Some(c)))).unwrap_or_default();
            let score = match b.accuracy {
                Some(a) => format!("accuracy {}{chance}, agreement {}", pct(Some(a)), pct(b.agreement)),
                None => format!("agreement {}", pct(b.agreement)),
            };
            s.push_str(&format!("best key-less attack: {}, {score}\n\n", b.variant));
        }
        None => s.push_str("best key-less attack: none ran\n\n"),
    }
    s.insert_str(
        s.len() - 1,
        "training attacks (re-learning the encrypted tensors, fine-tuning) need PyTorch: python3 -m \
         onnx_protect.assess PROTECTED --data train.npz --test test.npz\n",
    );
    s.push_str(&format!(
        "{:<12} {:>9} {:>9} {:>11} {:>11} {:>10}  {}\n",
        "variant", "agreement", "accuracy", "mean dist", "max dist", "non-finite", "what"
    ));
    for v in &r.variants {
        if v.status == "ok" {
            s.push_str(&format!(
                "{:<12} {:>9} {:>9} {:>11} {:>11} {:>10}  {}\n",
                v.variant,
                pct(v.agreement),
                pct(v.accuracy),
                num(v.mean_distance),
                num(v.max_distance),
                pct(v.non_finite),
                v.description
            ));
        } else {
            s.push_str(&format!("{:<12} {:>9}  {}\n", v.variant, v.status, v.error.clone().unwrap_or_default()));
        }
        for n in &v.notes {
            s.push_str(&format!("{:<12} note: {n}\n", ""));
        }
    }
    s.push_str(
        "\nagreement: top-1 equals the original's; dist: Euclidean distance of each sample's output to the \
         original's (over finite rows)",
    );
    s
}

pub fn run(a: Args) -> Result<ExitCode> {
    let key = a.key.source()?;
    let inputs = match (&a.inputs, a.random) {
        (Some(p), _) => InputSource::Arrays(read_inputs(p)?),
        (None, Some(0)) => crate::exit::usage!("--random needs at least one sample"),
        (None, n) => InputSource::Random { n: n.unwrap_or(100), seed: a.seed },
    };
    let labels = match &a.labels {
        Some(p) => Some(NpyArray::read(p).and_then(|l| l.to_labels()).map_err(lift)?),
        None => None,
    };
    let calibration = a.calibration.as_deref().map(read_inputs).transpose()?;
    let opts = AssessOptions {
        key: key.as_ref(),
        inputs,
        labels,
        calibration,
        fill_seed: a.fill_seed,
        fill_draws: a.fill_draws,
    };
    let report = assess(&a.original, &a.protected, &opts)
        .map_err(lift)
        .with_context(|| format!("assess {}", a.protected.display()))?;
    let protection = onnx_protect_format::Model::open(&a.protected)
        .ok()
        .and_then(|m| onnx_protect_core::protection::Protection::read(&m).ok().flatten());
    if let Some(w) = protection.and_then(|p| p.warning()) {
        eprintln!("warning: {w}");
    }
    if a.json {
        crate::output::emit(&serde_json::to_string_pretty(&report)?)?;
    } else {
        crate::output::emit(&table(&report))?;
    }
    Ok(ExitCode::SUCCESS)
}
