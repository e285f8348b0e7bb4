//! The policy options of `encrypt` and `batch encrypt`, and reading a policy file with
//! overrides (`check` too).

use std::path::PathBuf;

use anyhow::{Context, Result};
use onnx_protect_select::Policy;

use crate::stdio;

/// The policy options of `encrypt` and `batch encrypt`.
#[derive(clap::Args)]
pub struct PolicyArgs {
    /// A TOML policy file (docs/policy.md); the built-in default otherwise.
    #[arg(long, value_name = "FILE", value_parser = stdio::file_path)]
    pub policy: Option<PathBuf>,
    /// Override a coefficient: OP=VALUE in [0, 1] (OP may be `*`). Repeatable.
    #[arg(long, value_name = "OP=C")]
    pub coefficient: Vec<String>,
    /// Override a mode: OP=ctr|fp|dp. Repeatable. With --tiers N > 1 the default is fp and ctr is refused.
    #[arg(long, value_name = "OP=MODE")]
    pub mode: Vec<String>,
    /// Override the split: OP=first-dim|N. Repeatable.
    #[arg(long, value_name = "OP=N")]
    pub subsequences: Vec<String>,
    /// Override the selection rule: OP=even|l1|l2|sample-l1|sample-l2. Repeatable.
    #[arg(long, value_name = "OP=RULE")]
    pub selection: Vec<String>,
    /// Public seed of the sample-* selection rules.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Split the encrypted set into N nested access tiers: by class on a classifier, else by importance (docs/policy.md; N > 1: default mode fp; ctr refused).
    #[arg(long, value_name = "N")]
    pub tiers: Option<u32>,
    /// Share of the encrypted bytes per tier, least important first, e.g. 0.5,0.3,0.2.
    #[arg(long, value_name = "S1,S2,...", value_delimiter = ',')]
    pub tier_shares: Option<Vec<f64>>,
    /// Tiers by class: the classes each tier below the top adds, tiers by ';', classes by ',', runs as a-b (e.g. 0-3;4-6 with --tiers 3: the top tier adds the rest).
    #[arg(long, value_name = "C,..;C,..")]
    pub tier_classes: Option<String>,
}

impl PolicyArgs {
    /// Whether any policy option was given.
    pub fn any(&self) -> bool {
        self.policy.is_some()
            || !self.coefficient.is_empty()
            || !self.mode.is_empty()
            || !self.subsequences.is_empty()
            || !self.selection.is_empty()
            || self.seed.is_some()
            || self.tiers.is_some()
            || self.tier_shares.is_some()
            || self.tier_classes.is_some()
    }

    /// The policy file (or the built-in default) with the overrides applied.
    pub fn build(&self) -> Result<Policy> {
        let mut policy = load_policy(self.policy.as_ref(), &self.coefficient, &self.mode, &self.subsequences)?;
        for s in &self.selection {
            policy.apply_override("selection", s)?;
        }
        if let Some(seed) = self.seed {
            policy.seed = seed;
        }
        if let Some(t) = self.tiers {
            policy.set_tiers(t)?;
        }
        if let Some(s) = &self.tier_shares {
            policy.set_tier_shares(s)?;
            policy.shares()?;
        }
        if let Some(text) = &self.tier_classes {
            policy.set_tier_classes(onnx_protect_select::parse_class_groups(text)?)?;
            policy.shares()?;
        }
        Ok(policy)
    }
}

pub fn load_policy(path: Option<&PathBuf>, coeff: &[String], mode: &[String], subs: &[String]) -> Result<Policy> {
    let mut p = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("cannot read policy {}", p.display()))?;
            Policy::from_toml(&text).with_context(|| format!("{}", p.display()))?
        }
        None => Policy::default(),
    };
    for c in coeff {
        p.apply_override("coefficient", c)?;
    }
    for m in mode {
        p.apply_override("mode", m)?;
    }
    for s in subs {
        p.apply_override("subsequences", s)?;
    }
    Ok(p)
}
