//! The files a bundle of an ONNX model covers, and the model-level sign and verify.
//!
//! A directory: every file under it. A model file with external data: the file and its
//! external data files, named by their paths relative to its directory (model_signing
//! checks such a bundle against the directory with `--ignore_unsigned_files`). Any other
//! file: itself alone (`.`).

use std::path::{Path, PathBuf};

use crate::cert::Certificates;
use crate::error::BundleError;
use crate::keys::{PrivateKey, PublicKey};
use crate::manifest::{compare, default_ignored, hash_files, hash_model, relative_inside, HashType, ModelManifest};
use crate::Trust;

/// Where a model's bundle lives unless told: `MODEL.sig` beside a file (so that several
/// models of one directory each have theirs), `model.sig` inside a directory
/// (model_signing's default name).
pub fn default_bundle(model: &Path) -> PathBuf {
    if model.is_dir() {
        model.join("model.sig")
    } else {
        let mut name = model.file_name().unwrap_or_default().to_os_string();
        name.push(".sig");
        model.with_file_name(name)
    }
}

fn dir_of(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// For a model file that has external data: its directory, the names of the file and of
/// its external data files, and the model's name. `None` for a directory, a model without
/// external data, and a file that does not open as an ONNX model.
pub fn model_files(model: &Path) -> Option<(PathBuf, Vec<String>, String)> {
    if !model.is_file() {
        return None;
    }
    let m = onnx_protect_format::Model::open(model).ok()?;
    if m.external_files.is_empty() {
        return None;
    }
    let name = model.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut names = vec![name.clone()];
    names.extend(m.external_files.iter().map(|f| f.location.replace('\\', "/")));
    Some((dir_of(model).to_path_buf(), names, name))
}

/// The manifest a new bundle of `model` signs (SHA-256); `bundle`, the path the bundle will
/// be written to, is left out of a directory.
pub fn model_manifest(model: &Path, bundle: Option<&Path>) -> Result<ModelManifest, BundleError> {
    match model_files(model) {
        Some((dir, names, name)) => hash_files(&dir, &names, HashType::Sha256, &name),
        None => hash_model(model, HashType::Sha256, &default_ignored(model, bundle)?),
    }
}

/// Verifies the bundle at `bundle` for `model` with `key`: its signature, then every file
/// it covers (none missing, none extra, none changed). Returns the signed manifest.
pub fn verify_model(model: &Path, bundle: &Path, key: &PublicKey) -> Result<ModelManifest, BundleError> {
    verify_model_with(model, bundle, Trust::Key(key))
}

/// [`verify_model`] with a signer trusted by its key or by a certificate chain.
pub fn verify_model_with(model: &Path, bundle: &Path, trust: Trust<'_>) -> Result<ModelManifest, BundleError> {
    let text =
        std::fs::read_to_string(bundle).map_err(|e| BundleError::Io { path: bundle.to_path_buf(), source: e })?;
    let signed = crate::open_bundle_with(&text, trust)?;
    let signed_names: Vec<String> = signed.resources.iter().map(|r| r.name.clone()).collect();
    let files = model_files(model);
    if signed_names == ["."] && files.is_some() {
        return Err(BundleError::Mismatch {
            missing: Vec::new(),
            extra: vec!["the model's external data files (the bundle signs the model file alone; sign its directory, or sign with `onnx-protect bundle sign`)".into()],
            changed: Vec::new(),
        });
    }
    let actual = match files {
        Some((dir, names, name)) => hash_files(&dir, &names, signed.hash, &name)?,
        // A model file that no longer opens (an external data file gone): the files the
        // bundle names are checked one by one, so that the missing one is named.
        None if model.is_file() && signed_names != ["."] => {
            let name = model.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            hash_files(dir_of(model), &signed_names, signed.hash, &name)?
        }
        None => {
            let mut ignore = signed.ignore_paths.clone();
            if let Some(b) = relative_inside(model, Some(bundle))? {
                ignore.push(b);
            }
            hash_model(model, signed.hash, &ignore)?
        }
    };
    compare(&signed, &actual)?;
    Ok(signed)
}

/// Signs `model` with `key` and writes the bundle to `bundle` (staged, mode 0644, renamed
/// into place; an existing regular file is replaced only with `replace`). Returns the
/// manifest signed.
pub fn sign_model(model: &Path, key: &PrivateKey, bundle: &Path, replace: bool) -> Result<ModelManifest, BundleError> {
    sign_model_with(model, key, None, bundle, replace)
}

/// [`sign_model`], the bundle carrying `chain` (the signing certificate of `key` first) when
/// given ([`crate::sign_manifest_with`]).
pub fn sign_model_with(
    model: &Path,
    key: &PrivateKey,
    chain: Option<&Certificates>,
    bundle: &Path,
    replace: bool,
) -> Result<ModelManifest, BundleError> {
    let manifest = model_manifest(model, Some(bundle))?;
    let text = crate::sign_manifest_with(&manifest, key, chain)?;
    write_bundle(bundle, &text, replace)?;
    Ok(manifest)
}

/// Writes a bundle's text atomically (see [`sign_model`]).
pub fn write_bundle(path: &Path, text: &str, replace: bool) -> Result<(), BundleError> {
    let io = |e: std::io::Error| BundleError::Io { path: path.to_path_buf(), source: e };
    let d =
        onnx_protect_format::write::check_destination(path).map_err(|e| io(std::io::Error::other(e.to_string())))?;
    if d.exists && !replace {
        return Err(io(std::io::Error::new(std::io::ErrorKind::AlreadyExists, "exists; pass --force to replace it")));
    }
    let mut staged = onnx_protect_fsio::stage::Staging::new(dir_of(path)).map_err(io)?;
    std::io::Write::write_all(staged.file_mut(), text.as_bytes()).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        staged.file().set_permissions(std::fs::Permissions::from_mode(0o644)).map_err(io)?;
    }
    staged.publish(path, replace).map_err(io)
}
