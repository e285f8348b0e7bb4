//! Lossless rewriting of a model file.
//!
//! A rewrite is a set of edits against the original bytes. Everything outside
//! the edits is copied unchanged, so fields this crate does not know survive by
//! construction. When an edit changes the length of a nested message, the
//! length prefixes of exactly the enclosing messages are re-encoded (in
//! canonical varint form) and nothing else moves.
//!
//! Same-length edits can be *streamed*: the writer hands each chunk of the
//! original range to a callback that transforms it in place, so encrypting a
//! large tensor never holds a second copy of it in memory.

use std::collections::BTreeMap;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::error::{FormatError, Result};
use crate::wire::{self, Container};

/// Transforms a chunk of a [`Content::Transform`] edit in place:
/// `(tag, logical offset of the chunk, chunk)`.
pub type Transform<'a> = dyn FnMut(usize, u64, &mut [u8]) -> Result<()> + 'a;

/// What replaces an edited range.
#[derive(Debug, Clone)]
pub enum Content {
    /// New bytes (any length).
    Bytes(Vec<u8>),
    /// The original bytes, passed through the transform callback with this tag
    /// (same length). `logical_start` is the logical offset of the range's first
    /// byte, passed to the callback with each chunk.
    Transform { tag: usize, logical_start: u64 },
}

/// One edit of the original file.
#[derive(Debug, Clone)]
pub struct Edit {
    pub range: Range<u64>,
    pub content: Content,
    /// Length-delimited fields that enclose `range`, outermost first.
    pub ancestors: Vec<Container>,
}

/// A validated, flattened list of edits, ready to stream out.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Sorted, disjoint, in bounds.
    edits: Vec<(Range<u64>, Content)>,
    append: Vec<u8>,
    src_len: u64,
    out_len: u64,
}

impl Plan {
    /// Builds a plan for a source of `src_len` bytes. `append` is written after the
    /// last byte (for top-level fields such as new `metadata_props` entries).
    pub fn new(src_len: u64, mut edits: Vec<Edit>, append: Vec<u8>) -> Result<Plan> {
        edits.sort_by_key(|e| (e.range.start, e.range.end));
        // Length changes per container, keyed by the container's start offset.
        let mut containers: BTreeMap<u64, (Container, i64)> = BTreeMap::new();
        let mut flat: Vec<(Range<u64>, Content)> = Vec::with_capacity(edits.len());
        let mut prev_end = 0u64;
        for e in &edits {
            if e.range.start > e.range.end || e.range.end > src_len {
                return Err(FormatError::Invalid(format!("edit {:?} is outside the {src_len}-byte model", e.range)));
            }
            if e.range.start < prev_end {
                return Err(FormatError::Invalid(format!("edit {:?} overlaps the previous edit", e.range)));
            }
            prev_end = e.range.end;
            let old = (e.range.end - e.range.start) as i64;
            let new = match &e.content {
                Content::Bytes(b) => b.len() as i64,
                Content::Transform { .. } => old,
            };
            let delta = new - old;
            for c in e.ancestors.iter().filter(|_| delta != 0) {
                if !(c.value_start <= e.range.start && e.range.end <= c.end) {
                    return Err(FormatError::Invalid(format!("edit {:?} is not inside its container", e.range)));
                }
                let entry = containers.entry(c.start).or_insert((*c, 0));
                entry.1 += delta;
            }
            flat.push((e.range.clone(), e.content.clone()));
        }
        // Process containers from the smallest up: a container nested in another is
        // strictly smaller, so when a container is reached, the header growth of
        // everything inside it is already known.
        let mut order: Vec<(Container, i64)> = containers.into_values().collect();
        order.sort_by_key(|(c, _)| c.end - c.start);
        let mut header_deltas: Vec<(Container, i64)> = Vec::new();
        let mut prefix_edits = Vec::new();
        for (c, content_delta) in order {
            let inner: i64 =
                header_deltas.iter().filter(|(k, _)| c.value_start <= k.start && k.end <= c.end).map(|(_, d)| *d).sum();
            let d = content_delta + inner;
            if d == 0 {
                continue;
            }
            let old_len = c.end - c.value_start;
            let new_len = u64::try_from(old_len as i64 + d)
                .map_err(|_| FormatError::Invalid("a message would get a negative length".into()))?;
            let mut prefix = Vec::with_capacity(10);
            wire::put_varint(&mut prefix, new_len);
            let header_delta = prefix.len() as i64 - (c.value_start - c.len_start) as i64;
            prefix_edits.push((c.len_start..c.value_start, Content::Bytes(prefix)));
            if header_delta != 0 {
                header_deltas.push((c, header_delta));
            }
        }
        flat.extend(prefix_edits);
        flat.sort_by_key(|(r, _)| (r.start, r.end));
        let mut out_len = src_len + append.len() as u64;
        let mut prev = 0u64;
        for (r, c) in &flat {
            if r.start < prev {
                return Err(FormatError::Invalid(format!("edit {r:?} overlaps a length prefix")));
            }
            prev = r.end;
            if let Content::Bytes(b) = c {
                out_len = out_len - (r.end - r.start) + b.len() as u64;
            }
        }
        Ok(Plan { edits: flat, append, src_len, out_len })
    }

    /// Length of the output in bytes.
    pub fn output_len(&self) -> u64 {
        self.out_len
    }

    /// Whether the plan only changes bytes in place and appends (no length changes
    /// inside the file), so the output can be made by patching a copy.
    pub fn is_in_place(&self) -> bool {
        self.edits.iter().all(|(r, c)| match c {
            Content::Transform { .. } => true,
            Content::Bytes(b) => b.len() as u64 == r.end - r.start,
        })
    }

    /// Streams the output to `out`. `src` must be the bytes the plan was made for.
    /// `transform(tag, logical_offset, chunk)` changes a chunk of a `Transform` edit in place.
    pub fn write<W: Write>(&self, src: &[u8], out: &mut W, transform: &mut Transform<'_>) -> Result<()> {
        if src.len() as u64 != self.src_len {
            return Err(FormatError::Invalid("source length changed".into()));
        }
        let io = |e: std::io::Error| FormatError::Io { path: "<output>".into(), source: e };
        const CHUNK: usize = 8 << 20;
        let mut buf: Vec<u8> = Vec::new();
        let mut pos = 0usize;
        for (r, c) in &self.edits {
            let (start, end) = (r.start as usize, r.end as usize);
            out.write_all(&src[pos..start]).map_err(io)?;
            match c {
                Content::Bytes(b) => out.write_all(b).map_err(io)?,
                Content::Transform { tag, logical_start } => {
                    let mut at = start;
                    while at < end {
                        let n = (end - at).min(CHUNK);
                        buf.clear();
                        buf.extend_from_slice(&src[at..at + n]);
                        transform(*tag, logical_start + (at - start) as u64, &mut buf)?;
                        out.write_all(&buf).map_err(io)?;
                        at += n;
                    }
                }
            }
            pos = end;
        }
        out.write_all(&src[pos..]).map_err(io)?;
        out.write_all(&self.append).map_err(io)?;
        Ok(())
    }

    /// Applies an in-place plan to `dst`, a buffer holding a copy of the source
    /// (extended by the appended bytes on return). Only edited bytes are touched.
    pub fn apply_in_place(&self, dst: &mut Vec<u8>, transform: &mut Transform<'_>) -> Result<()> {
        if !self.is_in_place() {
            return Err(FormatError::Invalid("plan changes lengths; it cannot be applied in place".into()));
        }
        if dst.len() as u64 != self.src_len {
            return Err(FormatError::Invalid("buffer length differs from the source".into()));
        }
        for (r, c) in &self.edits {
            let s = &mut dst[r.start as usize..r.end as usize];
            match c {
                Content::Bytes(b) => s.copy_from_slice(b),
                Content::Transform { tag, logical_start } => transform(*tag, *logical_start, s)?,
            }
        }
        dst.extend_from_slice(&self.append);
        Ok(())
    }

    /// The edits in file order (after flattening).
    pub fn edits(&self) -> impl Iterator<Item = (&Range<u64>, &Content)> {
        self.edits.iter().map(|(r, c)| (r, c))
    }
}

/// Encodes a `StringStringEntryProto` as a top-level `ModelProto.metadata_props`
/// field (field 14), ready to append to a model file.
pub fn metadata_field(key: &str, value: &str) -> Vec<u8> {
    let mut entry = Vec::with_capacity(key.len() + value.len() + 8);
    wire::put_len_field(&mut entry, 1, key.as_bytes());
    wire::put_len_field(&mut entry, 2, value.as_bytes());
    let mut out = Vec::with_capacity(entry.len() + 8);
    wire::put_len_field(&mut out, 14, &entry);
    out
}

/// What a destination path holds before an output is written there.
#[derive(Debug, Clone)]
pub struct Destination {
    /// Where the output is really written: the path itself, or, if it is a symbolic
    /// link, the file it points to (as `cp` writes through a link), so that the link
    /// stays and the file behind it is replaced.
    pub path: PathBuf,
    /// Whether a regular file is there now (writing replaces it).
    pub exists: bool,
}

/// How a file that is not a regular file is named in messages.
fn kind_of(m: &std::fs::Metadata) -> &'static str {
    let t = m.file_type();
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if t.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

/// Checks the destination of an output before anything is written: it may be missing
/// or a regular file (directly or through a symbolic link), never anything else. A
/// character or block device (such as `/dev/null`), a FIFO, a socket or a directory is
/// refused, and so is a symbolic link to a missing file: only regular files are ever
/// replaced.
pub fn check_destination(dest: &Path) -> std::io::Result<Destination> {
    let path = match std::fs::symlink_metadata(dest) {
        Ok(m) if m.file_type().is_symlink() => std::fs::canonicalize(dest).map_err(|e| {
            std::io::Error::new(e.kind(), format!("{} is a symbolic link to a missing file", dest.display()))
        })?,
        _ => dest.to_path_buf(),
    };
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => Ok(Destination { path, exists: true }),
        Ok(m) if m.is_dir() => Err(std::io::Error::new(std::io::ErrorKind::IsADirectory, "is a directory")),
        Ok(m) => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "is {}, not a regular file; only regular files are replaced (to stream an output, write it to \
                 standard output)",
                kind_of(&m)
            ),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Destination { path, exists: false }),
        Err(e) => Err(e),
    }
}

/// An output being written: a private staging file in its destination's directory
/// ([`onnx_protect_fsio::Staging`]: mode 0600 from its creation, unnamed on Linux, so
/// a killed process leaves nothing), published under the destination's name only by
/// [`StagedOutput::publish`]. Bytes not yet checked (a decryption verifies its MAC at
/// the end of its one pass) are never readable by others. Just before it is published
/// it gets the permission bits of the file it replaces, or those of any new file (0666
/// less the umask), as `cp` creates it. Dropped unpublished, it leaves nothing.
pub struct StagedOutput {
    staging: onnx_protect_fsio::Staging,
    dest: PathBuf,
    /// The permission bits it gets before it is published.
    mode: Option<std::fs::Permissions>,
    /// Whether a file was at the destination when staging began; if not, publishing
    /// never replaces one that appeared meanwhile.
    replace: bool,
}

impl StagedOutput {
    /// Stages an output for `dest` (through a symbolic link: for the file it points to;
    /// see [`check_destination`], whose refusals apply). Missing directories on the way
    /// to it are created. Named staging files of dead processes in that directory are
    /// removed first (once per process and directory).
    pub fn new(dest: &Path) -> std::io::Result<StagedOutput> {
        let Destination { path, exists } = check_destination(dest)?;
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        onnx_protect_fsio::stage::remove_stale_once(dir);
        let mode = if exists { Some(std::fs::metadata(&path)?.permissions()) } else { new_file_permissions() };
        let staging = onnx_protect_fsio::Staging::new(dir)?;
        Ok(StagedOutput { staging, dest: path, mode, replace: exists })
    }

    /// The file being written.
    pub fn file(&self) -> &std::fs::File {
        self.staging.file()
    }

    /// The file being written, for `std::io::Write`.
    pub fn file_mut(&mut self) -> &mut std::fs::File {
        self.staging.file_mut()
    }

    /// Where it will be published (a symbolic link resolved).
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Readies the file for publishing: gives it its final permission bits, flushes it
    /// to the disk with `durable` (`fsync`), and closes the descriptor that wrote it,
    /// checking the error `close` reports (network file systems may report a failed
    /// write only there).
    pub fn finish(&mut self, durable: bool) -> std::io::Result<()> {
        if let Some(p) = &self.mode {
            self.staging.file().set_permissions(p.clone())?;
        }
        if durable {
            self.staging.file().sync_all()?;
        }
        self.staging.close_writer()
    }

    /// Publishes the file under its destination's name, atomically: a rename over the
    /// file that was there when staging began, or, when there was none, a link that
    /// never replaces a file that appeared meanwhile. Anything but a regular file found
    /// there now is refused.
    pub fn publish(self) -> std::io::Result<()> {
        if self.replace {
            match std::fs::symlink_metadata(&self.dest) {
                Ok(m) if !m.is_file() => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("became {} while the output was written; it is not replaced", kind_of(&m)),
                    ))
                }
                _ => {}
            }
        }
        self.staging.publish(&self.dest, self.replace).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                std::io::Error::new(e.kind(), "a file appeared there while the output was written; it is not replaced")
            } else {
                e
            }
        })
    }
}

/// The permission bits of a new file (0666 less the umask): `None` where the system has
/// no such bits.
fn new_file_permissions() -> Option<std::fs::Permissions> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        Some(std::fs::Permissions::from_mode(onnx_protect_fsio::stage::new_file_mode()))
    }
    #[cfg(not(unix))]
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{put_len_field, FieldReader};

    fn container_of(buf: &[u8], range: Range<u64>) -> Container {
        let mut r = FieldReader::new(buf, range).unwrap();
        let f = r.next_field().unwrap().unwrap();
        Container::from(&f)
    }

    #[test]
    fn growing_a_nested_field_rewrites_every_enclosing_prefix() {
        // outer(1) { inner(2) { payload(3) = 120 bytes } }: growing the payload to
        // 200 bytes pushes inner's and outer's length prefixes from 1 to 2 bytes.
        let payload = vec![7u8; 120];
        let mut inner = Vec::new();
        put_len_field(&mut inner, 3, &payload);
        let mut outer = Vec::new();
        put_len_field(&mut outer, 2, &inner);
        let mut file = Vec::new();
        put_len_field(&mut file, 1, &outer);
        let outer_c = container_of(&file, 0..file.len() as u64);
        let inner_c = container_of(&file, outer_c.value_start..outer_c.end);
        let payload_c = container_of(&file, inner_c.value_start..inner_c.end);

        let new_payload = vec![9u8; 200];
        let edit = Edit {
            range: payload_c.len_start..payload_c.end,
            content: Content::Bytes({
                let mut v = Vec::new();
                crate::wire::put_varint(&mut v, 200);
                v.extend_from_slice(&new_payload);
                v
            }),
            ancestors: vec![outer_c, inner_c],
        };
        let plan = Plan::new(file.len() as u64, vec![edit], Vec::new()).unwrap();
        let mut out = Vec::new();
        plan.write(&file, &mut out, &mut |_, _, _| Ok(())).unwrap();

        let mut want_inner = Vec::new();
        put_len_field(&mut want_inner, 3, &new_payload);
        let mut want_outer = Vec::new();
        put_len_field(&mut want_outer, 2, &want_inner);
        let mut want = Vec::new();
        put_len_field(&mut want, 1, &want_outer);
        assert_eq!(out, want);
        assert_eq!(plan.output_len(), want.len() as u64);
    }

    #[test]
    fn no_edits_copy_the_source_exactly() {
        let src: Vec<u8> = (0..=255u8).collect();
        let plan = Plan::new(256, Vec::new(), Vec::new()).unwrap();
        let mut out = Vec::new();
        plan.write(&src, &mut out, &mut |_, _, _| Ok(())).unwrap();
        assert_eq!(out, src);
    }

    #[test]
    fn overlapping_edits_are_refused() {
        let e = |r: Range<u64>| Edit { range: r, content: Content::Bytes(vec![]), ancestors: vec![] };
        assert!(Plan::new(10, vec![e(0..5), e(4..6)], vec![]).is_err());
        assert!(Plan::new(10, vec![e(8..12)], vec![]).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn a_directory_is_refused_as_an_output_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let e = StagedOutput::new(dir.path()).err().unwrap();
        assert_eq!(e.kind(), std::io::ErrorKind::IsADirectory);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[cfg(unix)]
    #[test]
    fn devices_fifos_and_sockets_are_never_outputs() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let sock = dir.path().join("sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let link = dir.path().join("null-link");
        std::os::unix::fs::symlink("/dev/null", &link).unwrap();
        for (p, what) in [
            (Path::new("/dev/null"), "a character device"),
            (fifo.as_path(), "a FIFO"),
            (sock.as_path(), "a socket"),
            (link.as_path(), "a character device"),
        ] {
            let e = StagedOutput::new(p).err().unwrap();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{}", p.display());
            assert!(e.to_string().contains(what), "{}: {e}", p.display());
        }
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device());
    }

    #[cfg(unix)]
    #[test]
    fn staged_outputs_are_private_until_they_get_their_final_mode() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |f: &std::fs::File| f.metadata().unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        // What a new file gets in this process (umask).
        let usual = mode(&std::fs::File::create(dir.path().join("probe")).unwrap());
        let mut out = StagedOutput::new(&dir.path().join("new.onnx")).unwrap();
        assert_eq!(out.dest(), dir.path().join("new.onnx"));
        assert_eq!(mode(out.file()), 0o600);
        out.finish(false).unwrap();
        assert_eq!(mode(out.file()), usual);
        out.publish().unwrap();
        // Replacing a file: its mode, even when it is wider than the usual one.
        let old = dir.path().join("old.onnx");
        std::fs::write(&old, b"x").unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o664)).unwrap();
        let mut out = StagedOutput::new(&old).unwrap();
        assert_eq!(mode(out.file()), 0o600);
        out.file_mut().write_all(b"y").unwrap();
        out.finish(true).unwrap();
        assert_eq!(mode(out.file()), 0o664);
        out.publish().unwrap();
        assert_eq!(std::fs::read(&old).unwrap(), b"y");
    }

    #[test]
    fn a_file_that_appears_while_a_new_output_is_written_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.onnx");
        let mut out = StagedOutput::new(&dest).unwrap();
        out.file_mut().write_all(b"mine").unwrap();
        std::fs::write(&dest, b"theirs").unwrap();
        out.finish(false).unwrap();
        let e = out.publish().unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&dest).unwrap(), b"theirs");
    }
}
