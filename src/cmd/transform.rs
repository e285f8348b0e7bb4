//! `transform-input` and `encrypt-patch-embedding` (key-transformed inputs, docs/transforms.md).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use onnx_protect_crypto::MasterKey;
use onnx_protect_format::Model;
use onnx_protect_transform::io::{self, FileKind};
use onnx_protect_transform::{
    encrypt_patch_embedding, transform_images, Direction, Layout, PatchOptions, TransformError, TransformSpec,
    ValueRange,
};

use crate::args::key::KeyArgs;
use crate::args::output::OutputArgs;
use crate::common::record_lines;
use crate::exit::KeyFileError;
use crate::exit::UsageError;

/// The transforms and the block size, shared by both commands.
#[derive(clap::Args)]
pub struct TransformFlags {
    /// Block size M: images are cut into M×M blocks (for a model: its patch size).
    #[arg(long, value_name = "M")]
    block: usize,
    /// Shuffle the M·M·C values of every block with one key-derived permutation.
    #[arg(long)]
    shuffle: bool,
    /// Negative/positive flip (x → lo+hi−x) at key-chosen block positions.
    #[arg(long)]
    negpos: bool,
    /// FFX format-preserving encryption of 8-bit values (inputs only; cannot be absorbed by a model).
    #[arg(long)]
    ffx: bool,
    /// Scramble the order of the blocks (for models with a position embedding, e.g. ViT).
    #[arg(long)]
    scramble_blocks: bool,
}

impl TransformFlags {
    fn spec(&self) -> TransformSpec {
        TransformSpec {
            block: self.block,
            shuffle: self.shuffle,
            negpos: self.negpos,
            ffx: self.ffx,
            scramble_blocks: self.scramble_blocks,
        }
    }
}

#[derive(clap::Args)]
pub struct TransformInputArgs {
    /// Input: a .npy tensor (uint8, float32 or float64) or a .png/.jpg image.
    #[arg(value_parser = crate::stdio::file_path)]
    input: PathBuf,
    /// Output: .npy, .png or .jpg (JPEG is lossy, so its transform cannot be undone exactly).
    #[arg(value_parser = crate::stdio::file_path)]
    output: PathBuf,
    #[command(flatten)]
    key: KeyArgs,
    #[command(flatten)]
    flags: TransformFlags,
    /// Undo the transform instead of applying it.
    #[arg(long)]
    inverse: bool,
    /// Layout of a .npy tensor: nchw (rank 4, or chw for rank 3) or nhwc (hwc).
    #[arg(long, default_value = "nchw", value_name = "LAYOUT")]
    layout: String,
    /// Value range LO,HI of the data, e.g. 0,1 (needed for float data with --negpos or --ffx; 8-bit data: 0,255).
    #[arg(long, value_name = "LO,HI")]
    range: Option<String>,
    #[command(flatten)]
    write: crate::args::output::WriteArgs,
    #[command(flatten)]
    out: OutputArgs,
}

#[derive(clap::Args)]
pub struct EncryptPatchEmbeddingArgs {
    /// The trained model (its patch embedding is a Conv with kernel = stride).
    #[arg(value_parser = crate::stdio::file_path)]
    model: PathBuf,
    /// Where to write the transformed model.
    #[arg(short, long, value_parser = crate::stdio::file_path)]
    output: PathBuf,
    #[command(flatten)]
    key: KeyArgs,
    #[command(flatten)]
    flags: TransformFlags,
    /// Value range LO,HI of the model input, e.g. 0,1 (required with --negpos).
    #[arg(long, value_name = "LO,HI")]
    range: Option<String>,
    /// The patch-embedding Conv node's name, when several Convs read the input.
    #[arg(long, value_name = "NAME")]
    node: Option<String>,
    #[command(flatten)]
    write: crate::args::output::WriteArgs,
    #[command(flatten)]
    out: OutputArgs,
}

/// The master key; transforms need a key, not a passphrase (it would need a stored salt).
fn master_key(k: &KeyArgs) -> Result<MasterKey> {
    if k.passphrase {
        return Err(
            KeyFileError("input transforms need a key (--key-file or --key-env), not a passphrase".into()).into()
        );
    }
    k.required_master()?.master_key().cloned().ok_or_else(|| {
        KeyFileError(
            "input transforms need a key (--key-file or --key-env), not a passphrase: they are deterministic \
             and have no place to store a passphrase salt"
                .into(),
        )
        .into()
    })
}

/// An error in an option's value, found after parsing: a usage error (exit 2).
fn bad_option(e: TransformError) -> anyhow::Error {
    UsageError(e.to_string()).into()
}

fn parse_range(s: &Option<String>) -> Result<Option<ValueRange>> {
    Ok(match s {
        Some(s) => Some(s.parse::<ValueRange>().map_err(bad_option)?),
        None => None,
    })
}

pub fn transform_input(a: TransformInputArgs) -> Result<ExitCode> {
    let spec = a.flags.spec();
    spec.validate().map_err(bad_option)?;
    let layout: Layout = a.layout.parse().map_err(bad_option)?;
    let range = parse_range(&a.range)?;
    let out_kind = FileKind::of(&a.output).map_err(bad_option)?;
    let key = master_key(&a.key)?;
    a.write.check_file(&a.output)?;
    let created = crate::dest::missing(crate::dest::dir_of(&a.output));
    let mut loaded = naming(io::load(&a.input, layout), &a.input)?;
    let dir = if a.inverse { Direction::Inverse } else { Direction::Forward };
    naming(transform_images(&key, &spec, &mut loaded.images, range, dir), &a.input)?;
    naming(io::save(&a.output, &loaded), &a.output)?;
    crate::dest::note_created(created, a.out.quiet);
    let im = &loaded.images;
    let fp = crate::key_files::fingerprint_hex(&key);
    if a.out.quiet {
        return Ok(ExitCode::SUCCESS);
    }
    if a.out.json {
        let v = serde_json::json!({
            "input": a.input.display().to_string(),
            "output": a.output.display().to_string(),
            "direction": if a.inverse { "inverse" } else { "forward" },
            "images": im.n, "channels": im.c, "height": im.h, "width": im.w,
            "dtype": im.data.type_name(),
            "block": spec.block,
            "transforms": spec.names(),
            "key_fingerprint": fp,
        });
        crate::output::emit(&v.to_string())?;
    } else {
        crate::output::emit(&format!(
            "{} {} → {} ({} image(s), {}×{}×{} {}, {}×{} blocks: {}; key {fp})",
            if a.inverse { "restored" } else { "transformed" },
            a.input.display(),
            a.output.display(),
            im.n,
            im.c,
            im.h,
            im.w,
            im.data.type_name(),
            spec.block,
            spec.block,
            spec.names().join(", "),
        ))?;
    }
    if out_kind == FileKind::Jpeg {
        eprintln!("warning: JPEG is lossy; the transform of a JPEG output cannot be undone exactly (use .png or .npy)");
    }
    Ok(ExitCode::SUCCESS)
}

/// `r`, its error naming the file `path` (the library's errors of reading and writing
/// files name it already; the others are given its name).
fn naming<T>(r: std::result::Result<T, TransformError>, path: &std::path::Path) -> Result<T> {
    r.map_err(|e| {
        let name = path.display().to_string();
        if e.to_string().contains(&name) {
            anyhow::Error::new(e)
        } else {
            anyhow::Error::new(e).context(name)
        }
    })
}

pub fn encrypt_patch_embedding_cmd(a: EncryptPatchEmbeddingArgs) -> Result<ExitCode> {
    let opts = PatchOptions { spec: a.flags.spec(), range: parse_range(&a.range)?, node: a.node.clone() };
    // Everything the options alone decide is a usage error (exit 2), found before the model is read.
    opts.validate().map_err(bad_option)?;
    let key = master_key(&a.key)?;
    let model = Model::open(&a.model).with_context(|| format!("{}", a.model.display()))?;
    if std::fs::canonicalize(&a.model).ok() == std::fs::canonicalize(&a.output).ok() {
        anyhow::bail!(
            "the output {} is the input model; write the transformed model to another file",
            a.output.display()
        );
    }
    a.write.check_file(&a.output)?;
    let created = crate::dest::missing(crate::dest::dir_of(&a.output));
    let report =
        encrypt_patch_embedding(&model, &key, &opts, &a.output).with_context(|| format!("{}", a.model.display()))?;
    crate::dest::note_created(created, a.out.quiet);
    if a.out.quiet {
        return Ok(ExitCode::SUCCESS);
    }
    if a.out.json {
        crate::output::emit(&serde_json::to_string_pretty(&report)?)?;
    } else {
        let r = &report.record;
        let mut t = format!("wrote {}\n", a.output.display());
        let bias = match (&report.bias, report.bias_added) {
            (Some(b), true) => format!(", bias {b} added"),
            (Some(b), false) => format!(", bias {b}"),
            (None, _) => String::new(),
        };
        t += &format!("  patch embedding {} (weight {}{bias})\n", r.patch_embedding, report.weight);
        if !report.normalisation.is_empty() {
            t += &format!("  normalisation {}\n", report.normalisation.join(" → "));
        }
        t += &record_lines(r);
        t += &format!("inputs must be prepared with: {}", r.command_hint());
        crate::output::emit(&t)?;
    }
    Ok(ExitCode::SUCCESS)
}
