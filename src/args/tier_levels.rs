//! `encrypt --tier-levels` / `--tier-data`: tier shares fitted to service levels on the
//! user's labelled data (library: `onnx_protect_runtime::tiers`).

use std::path::{Path, PathBuf};

use anyhow::Result;
use onnx_protect_select::{check_tier_levels, Policy, PolicyError};

use crate::stdio;

/// Seeds each fitted accuracy is the mean over.
#[cfg(feature = "tract")]
pub const DRAWS: u32 = 3;

/// The options of `encrypt` that fit the tier shares on labelled data.
#[derive(clap::Args)]
pub struct TierLevelArgs {
    /// Fit the tier shares so that the holder of tier k gets about L_k times the original's
    /// accuracy on --tier-data: one level per tier below the top, increasing, each in (0, 1).
    #[arg(long, value_name = "L1,L2,...", value_delimiter = ',')]
    pub tier_levels: Option<Vec<f64>>,
    /// Labelled data the tier shares are fitted on (tract): a .npz with the labels in `y` and the
    /// inputs in `x` (or one array per model input), or a .npy of inputs with --tier-labels.
    /// Without --tier-levels: levels evenly spaced from chance to the original.
    #[arg(long, value_name = "VAL.npz|X.npy", value_parser = stdio::file_path)]
    pub tier_data: Option<PathBuf>,
    /// Integer class labels (.npy) of a .npy --tier-data.
    #[arg(long, value_name = "Y.npy", value_parser = stdio::file_path)]
    pub tier_labels: Option<PathBuf>,
}

impl TierLevelArgs {
    /// Whether the shares are to be fitted.
    pub fn any(&self) -> bool {
        self.tier_levels.is_some() || self.tier_data.is_some() || self.tier_labels.is_some()
    }

    /// The refusals that need no model: levels that do not fit the policy's tiers, no data,
    /// explicit shares as well. Policy errors (exit 7).
    pub fn check(&self, policy: &Policy) -> Result<()> {
        if !self.any() {
            return Ok(());
        }
        let invalid = |m: &str| -> Result<()> { Err(PolicyError::Invalid(m.to_string()).into()) };
        if policy.tier_shares.is_some() {
            return invalid("give --tier-shares or --tier-levels/--tier-data, not both");
        }
        match &self.tier_levels {
            Some(levels) => check_tier_levels(policy.tiers, levels)?,
            None if policy.tiers < 2 => return invalid("--tier-data fits tier shares: give --tiers N with N > 1"),
            None => {}
        }
        if self.tier_data.is_none() {
            return invalid(
                "--tier-levels are fitted on labelled data: give --tier-data (and --tier-labels for a .npy)",
            );
        }
        Ok(())
    }
}

/// What fitting gave, for the report.
#[cfg(feature = "tract")]
pub type Fit = onnx_protect_runtime::tiers::TierFit;
#[cfg(not(feature = "tract"))]
pub type Fit = ();

/// Fits the tier shares of `policy` for the model at `model` and sets them; `None` when no
/// fitting option is given.
#[cfg(not(feature = "tract"))]
pub fn fit(a: &TierLevelArgs, policy: &mut Policy, _model: &Path) -> Result<Option<Fit>> {
    a.check(policy)?;
    if a.any() {
        anyhow::bail!("--tier-levels runs the model in tract: build onnx-protect with its default `tract` feature");
    }
    Ok(None)
}

/// Fits the tier shares of `policy` for the model at `model` and sets them; `None` when no
/// fitting option is given.
#[cfg(feature = "tract")]
pub fn fit(a: &TierLevelArgs, policy: &mut Policy, model: &Path) -> Result<Option<Fit>> {
    use anyhow::Context;
    use onnx_protect_runtime::assess::{Bench, InputSource};
    use onnx_protect_runtime::tiers::{even_targets, fit_tier_shares};

    use crate::common::lift;

    a.check(policy)?;
    let Some(data) = &a.tier_data else { return Ok(None) };
    let (inputs, labels) = crate::cmd::policy::with_tract::labelled(data, a.tier_labels.as_deref())?;
    let m = onnx_protect_format::Model::open(model).map_err(lift)?;
    let bench = Bench::new(&m, &InputSource::Arrays(inputs), Some(labels), None)
        .map_err(lift)
        .with_context(|| format!("--tier-data {}", data.display()))?;
    let original = bench.original_score();
    let chance = bench.chance().unwrap_or(0.0);
    let targets = match &a.tier_levels {
        Some(levels) => levels.iter().map(|l| l * original).collect(),
        None => even_targets(policy.tiers, chance, original),
    };
    let f = fit_tier_shares(&m, policy, &bench, &targets, DRAWS).map_err(lift).context("fitting the tier shares")?;
    f.apply(policy).map_err(lift)?;
    Ok(Some(f))
}

/// The report lines of a fit (and the warnings: levels more than 0.05 from their target).
#[cfg(feature = "tract")]
pub fn text(f: &Fit) -> (String, Vec<String>) {
    let shares: Vec<String> = f.shares.iter().map(|s| format!("{s:.4}")).collect();
    let mut t = format!(
        "\n  tier shares fitted on {} samples: {} in the {} order (original {:.3}, every tier encrypted {:.3}, chance \
         {:.3})",
        f.samples,
        shares.join(","),
        f.order,
        f.original,
        f.no_key,
        f.chance
    );
    let mut warnings = Vec::new();
    for tier in &f.tiers {
        t += &format!(
            "\n    tier {}: accuracy {:.3} (asked {:.3}), {:.2}% of the encrypted bytes still encrypted",
            tier.tier,
            tier.accuracy,
            tier.target,
            100.0 * tier.still_encrypted
        );
        if (tier.accuracy - tier.target).abs() > 0.05 {
            warnings.push(format!(
                "tier {} reaches accuracy {:.3} where {:.3} was asked: no share of the encrypted bytes gives it \
                 on this data",
                tier.tier, tier.accuracy, tier.target
            ));
        }
    }
    (t, warnings)
}

#[cfg(not(feature = "tract"))]
pub fn text(_: &Fit) -> (String, Vec<String>) {
    (String::new(), Vec::new())
}
