//! `.npz` archives (`numpy.savez`, `numpy.savez_compressed`): a ZIP file whose
//! members are `.npy` files, stored or deflated. The array names are the member
//! names without `.npy`; a name that appears twice reads as its last member, as
//! `numpy.load` does.

use std::io::{Read, Seek};
use std::path::Path;

use crate::{NpyArray, NpyError, Result};

/// Largest number of members read.
pub const MAX_NPZ_MEMBERS: usize = 4096;
/// Largest stated uncompressed size of one member, in bytes (16 GiB).
pub const MAX_NPZ_MEMBER_LEN: u64 = 1 << 34;
/// Largest accepted ratio of a member's stated size to its compressed size.
/// Deflate cannot exceed about 1032:1, so a larger statement is false.
pub const MAX_DEFLATE_RATIO: u64 = 1032;

/// Reads every array of the `.npz` file `path`, in archive order; errors name the file.
pub fn read_npz(path: &Path) -> Result<Vec<(String, NpyArray)>> {
    let file = std::fs::File::open(path).map_err(|error| NpyError::Io { path: path.to_path_buf(), error })?;
    read_npz_from(std::io::BufReader::new(file)).map_err(|e| e.in_file(path))
}

/// Reads every array of a `.npz` archive held in memory, in archive order.
pub fn read_npz_bytes(bytes: &[u8]) -> Result<Vec<(String, NpyArray)>> {
    read_npz_from(std::io::Cursor::new(bytes))
}

fn zip_err(e: zip::result::ZipError) -> NpyError {
    NpyError::Npz(e.to_string())
}

fn read_npz_from<R: Read + Seek>(reader: R) -> Result<Vec<(String, NpyArray)>> {
    let mut archive = zip::ZipArchive::new(reader).map_err(zip_err)?;
    if archive.len() > MAX_NPZ_MEMBERS {
        return Err(NpyError::Npz(format!("{} members; at most {MAX_NPZ_MEMBERS} are read", archive.len())));
    }
    let mut out = Vec::with_capacity(archive.len());
    for i in 0..archive.len() {
        let member = archive.by_index(i).map_err(zip_err)?;
        let name = member.name().to_string();
        let in_member =
            |e: NpyError| NpyError::InMember { member: name.chars().take(80).collect(), problem: Box::new(e) };
        let Some(array_name) = name.strip_suffix(".npy") else {
            return Err(in_member(NpyError::Npz("not a .npy member".into())));
        };
        let array_name = array_name.to_string();
        if !matches!(member.compression(), zip::CompressionMethod::Stored | zip::CompressionMethod::Deflated) {
            return Err(in_member(NpyError::Npz(format!(
                "compression {} is not read (stored or deflated only)",
                member.compression()
            ))));
        }
        let stated = member.size();
        let ratio_limit = member.compressed_size().saturating_mul(MAX_DEFLATE_RATIO).saturating_add(1024);
        if stated > MAX_NPZ_MEMBER_LEN || stated > ratio_limit {
            return Err(in_member(NpyError::Npz(format!(
                "a stated size of {stated} bytes is larger than this member can hold"
            ))));
        }
        // Read one byte past the stated size, so that a member longer than it says is seen;
        // reading to the end also checks the CRC-32.
        let mut bytes = Vec::new();
        member
            .take(stated.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|e| in_member(NpyError::Npz(format!("cannot read: {e}"))))?;
        if bytes.len() as u64 != stated {
            return Err(in_member(NpyError::Npz(format!("{} bytes where {stated} were stated", bytes.len()))));
        }
        let array = NpyArray::from_vec(bytes).map_err(in_member)?;
        out.push((array_name, array));
    }
    Ok(out)
}
