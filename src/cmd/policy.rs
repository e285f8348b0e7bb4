//! `policy search`: the smallest policy whose best key-less attack meets a target on
//! the user's labelled data (library: `onnx_protect_runtime::search`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Find the smallest policy whose best key-less attack meets a target on labelled data,
    /// evaluated in tract; write it as a policy file with a report of every point tried.
    ///
    /// Only the key-less fills run here. The search against the training attacks (re-learning
    /// the encrypted tensors, fine-tuning) needs PyTorch: python3 -m onnx_protect.assess
    /// --search MODEL.onnx --data train.npz --test test.npz.
    Search(SearchArgs),
}

#[derive(clap::Args)]
pub struct SearchArgs {
    /// The unprotected model.
    model: PathBuf,
    /// Labelled data: a .npz with the labels in `y` (or `labels`) and the inputs in `x` (one-input
    /// model) or one array per model input, named as the input; or a .npy of inputs with --labels.
    #[arg(long, value_name = "VAL.npz|X.npy")]
    data: PathBuf,
    /// Integer class labels (.npy), with a .npy --data.
    #[arg(long, value_name = "Y.npy")]
    labels: Option<PathBuf>,
    /// The largest accuracy the best key-less attack may reach: `chance+D` (chance is the share of
    /// the most frequent label), `chance`, or an accuracy in [0, 1].
    #[arg(long, default_value = "chance+0.02")]
    target: String,
    /// Unlabelled inputs for the BatchNormalization re-estimation attacks (same layout as --data
    /// without labels) [default: the first 256 samples of --data].
    #[arg(long, value_name = "CAL.npz|CAL.npy")]
    calibration: Option<PathBuf>,
    /// Where to write the chosen policy (TOML).
    #[arg(short, long, value_name = "POLICY.toml")]
    output: PathBuf,
    /// Where to write the report of every point tried (JSON) [default: the output path with
    /// `.report.json` in place of its extension].
    #[arg(long, value_name = "FILE.json")]
    report: Option<PathBuf>,
    /// Seed of the first init-fill draw and simulated ciphertext.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Draws of each random attack (init-fill, simulated ciphertext); each scores their mean.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    draws: u32,
    /// Evaluate every policy of the family with every attack (the whole curve), not only up to
    /// the first that meets the target.
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    out: crate::args::output::OutputArgs,
    #[command(flatten)]
    write: crate::args::output::WriteArgs,
}

pub fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Search(s) => search(s),
    }
}

#[cfg(not(feature = "tract"))]
fn search(_: SearchArgs) -> Result<ExitCode> {
    bail!("policy search runs models in tract: build onnx-protect with its default `tract` feature")
}

#[cfg(feature = "tract")]
use with_tract::search;

#[cfg(feature = "tract")]
pub(crate) mod with_tract {
    use super::*;
    use std::collections::BTreeMap;
    use std::path::Path;

    use anyhow::Context;

    use onnx_protect_format::Model;
    use onnx_protect_runtime::assess::{Bench, InputSource};
    use onnx_protect_runtime::npy::NpyArray;
    use onnx_protect_runtime::search::{search as run_search, SearchOptions, SearchReport, Target};

    use crate::common::{arrays, lift};

    /// Samples of --data used for calibration when --calibration is not given.
    const DEFAULT_CALIBRATION: usize = 256;

    /// The inputs and labels of --data (and --labels).
    pub(crate) fn labelled(data: &Path, labels: Option<&Path>) -> Result<(BTreeMap<String, NpyArray>, Vec<i64>)> {
        let mut inputs = arrays(data)?;
        let y = match labels {
            Some(p) => NpyArray::read(p).map_err(lift)?,
            None => {
                let key = ["y", "labels"].into_iter().find(|k| inputs.contains_key(*k));
                match key.and_then(|k| inputs.remove(k)) {
                    Some(y) => y,
                    None => bail!(
                        "{}: no labels: give a .npz with an array `y` (or `labels`), or --labels Y.npy",
                        data.display()
                    ),
                }
            }
        };
        if inputs.is_empty() {
            bail!("{}: no input arrays besides the labels", data.display());
        }
        let y = y.to_labels().map_err(lift).context("labels")?;
        Ok((inputs, y))
    }

    /// The first `n` samples of every array.
    fn head(arrays: &BTreeMap<String, NpyArray>, n: usize) -> Result<BTreeMap<String, NpyArray>> {
        let mut out = BTreeMap::new();
        for (k, a) in arrays {
            let rows = a.shape.first().copied().unwrap_or(0).min(n);
            out.insert(k.clone(), a.rows(0, rows).map_err(lift)?);
        }
        Ok(out)
    }

    fn pct(x: f64) -> String {
        format!("{:.1}%", 100.0 * x)
    }

    fn table(model: &Path, r: &SearchReport, written: Option<&Path>, report: &Path) -> String {
        let mut s = format!(
            "model     {}\ndata      {} samples, chance {}; calibration {} samples\ntarget    best key-less attack at most {}\n\
             attacks   key-less fills only; against the training attacks (re-learning, fine-tuning): python3 -m \
             onnx_protect.assess --search {} --data train.npz --test test.npz\n\n",
            model.display(),
            r.samples,
            pct(r.chance),
            r.calibration_samples,
            pct(r.threshold),
            model.display()
        );
        s.push_str(&format!("{:<24} {:>7} {:>10}  {:<14} {}\n", "policy", "share", "best", "attack", "result"));
        for p in r.points.iter().filter(|p| p.status != "not_reached") {
            let (best, attack) = match &p.best {
                Some(b) => (pct(b.accuracy), b.variant.as_str()),
                None => ("-".into(), "-"),
            };
            let result = match (p.status, p.meets) {
                ("skipped", _) => format!("same bytes as {}", p.same_as.as_deref().unwrap_or("?")),
                (_, Some(true)) => "meets the target".into(),
                _ => "above the target".into(),
            };
            s.push_str(&format!("{:<24} {:>7} {:>10}  {:<14} {result}\n", p.label, pct(p.share), best, attack));
        }
        match (r.chosen, written) {
            (Some(i), Some(w)) => {
                let p = &r.points[i];
                s.push_str(&format!(
                    "\nchosen: {} ({} of the weight bytes), written to {}\n",
                    p.label,
                    pct(p.share),
                    w.display()
                ));
            }
            _ => s.push_str("\nno policy of the family meets the target\n"),
        }
        s.push_str(&format!("report: {}", report.display()));
        s
    }

    pub fn search(a: SearchArgs) -> Result<ExitCode> {
        let target = Target::parse(&a.target)
            .with_context(|| format!("--target '{}': expected chance, chance+D or an accuracy in [0, 1]", a.target))?;
        let (inputs, labels) = labelled(&a.data, a.labels.as_deref())?;
        let calibration = match &a.calibration {
            Some(p) => arrays(p)?,
            None => head(&inputs, DEFAULT_CALIBRATION)?,
        };
        let report_path = a.report.clone().unwrap_or_else(|| a.output.with_extension("report.json"));
        if report_path == a.output {
            crate::exit::usage!("--report and -o name the same file {}", a.output.display());
        }
        // Both outputs are checked before the search runs, so a refusal costs nothing.
        a.write.check_file(&a.output)?;
        a.write.check_file(&report_path)?;
        let created = crate::dest::missing(crate::dest::dir_of(&a.output));
        let model = Model::open(&a.model).map_err(lift).with_context(|| format!("read {}", a.model.display()))?;
        let bench = Bench::new(&model, &InputSource::Arrays(inputs), Some(labels), Some(&calibration))
            .map_err(lift)
            .with_context(|| format!("run {}", a.model.display()))?;
        let bar = crate::progress::Bar::counting(a.out.quiet);
        let (report, policy) = run_search(
            &model,
            &bench,
            &SearchOptions { target, seed: a.seed, draws: a.draws, exhaustive: a.all, progress: &bar },
        )
        .map_err(lift)
        .with_context(|| format!("policy search on {}", a.model.display()))?;
        write_atomic(&report_path, serde_json::to_string_pretty(&report)?.as_bytes())?;
        if let Some(p) = &policy {
            write_atomic(&a.output, p.to_toml().as_bytes())?;
        }
        crate::dest::note_created(created, a.out.quiet);
        a.out.report(&report, false, || {
            table(&a.model, &report, policy.as_ref().map(|_| a.output.as_path()), &report_path)
        })?;
        if policy.is_none() {
            bail!("no policy of the search family meets the target {}; see {}", a.target, report_path.display());
        }
        Ok(ExitCode::SUCCESS)
    }

    /// Writes `bytes` to `path` through a private staging file published under its name.
    fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
        use std::io::Write;
        let mut out = onnx_protect_format::write::StagedOutput::new(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        out.file_mut()
            .write_all(bytes)
            .and_then(|_| out.finish(false))
            .and_then(|_| out.publish())
            .with_context(|| format!("cannot write {}", path.display()))
    }
}
