//! From a request path to a file under the static root, without ever reading outside it.
//!
//! Two steps:
//! 1. [`RelPath::parse`] (pure, on the runtime thread): the normalised path after the route
//!    prefix is split into segments and percent-decoded; an empty segment (`/static//etc`),
//!    a dot-segment, a dotfile (`.env`, `.git`), a separator or NUL hidden in an escape, or
//!    non-UTF-8 text is refused. Segments are only ever *pushed* onto the root, so an
//!    absolute-looking path cannot replace it.
//! 2. [`Lookup::run`] (blocking, on `spawn_blocking`): the file, its index (for a folder)
//!    and its precompressed siblings are canonicalised and must lie under the canonicalised
//!    root (so a symlink that resolves outside is not followed); only regular files are
//!    opened. The root is canonicalised on every lookup, so a deploy that swaps a `current`
//!    symlink is picked up without a reload. The *canonical* path is what gets opened, and on
//!    Unix with `O_NOFOLLOW | O_NONBLOCK` ([`open_no_follow`]): it has no symlink in it, so a
//!    last component that is one now was swapped in after the check and the open fails
//!    (`ELOOP`), and a FIFO swapped in cannot hold the blocking thread waiting for a writer.
//!    The descriptor's own `fstat` must then say "regular file" before anything is read.
//! 3. After opening, the *opened* file is checked again ([`opened_inside`]): a path component
//!    swapped for an outside-pointing symlink between the check and the open would otherwise
//!    be followed. On Linux the kernel's own name for the open descriptor
//!    (`/proc/self/fd/N`) must lie under the root; elsewhere (or without `/proc`) the path is
//!    resolved again and must name the very file (device and inode) that was opened. Only
//!    then is a byte read.

use std::ffi::OsString;
use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::sendfile::DiskFile;

use super::negotiate::Encoding;

/// A validated path below the static root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelPath {
    /// Percent-decoded, each a plain, visible file name.
    pub segments: Vec<String>,
    /// The URL ends with `/`: it names a folder (served through its index).
    pub dir: bool,
}

impl RelPath {
    /// `rest` is what follows the route prefix: empty, or starting with `/`.
    pub fn parse(rest: &str) -> Option<RelPath> {
        if rest.is_empty() {
            return Some(RelPath {
                segments: Vec::new(),
                dir: false,
            });
        }
        let inner = rest.strip_prefix('/')?;
        let (inner, dir) = match inner.strip_suffix('/') {
            Some(stripped) => (stripped, true),
            None => (inner, inner.is_empty()),
        };
        let segments = if inner.is_empty() {
            Vec::new()
        } else {
            inner
                .split('/')
                .map(decode_segment)
                .collect::<Option<_>>()?
        };
        Some(RelPath { segments, dir })
    }
}

/// Percent-decodes one segment and checks that it names a visible file.
fn decode_segment(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let text = String::from_utf8(out).ok()?;
    let visible = !text.is_empty()
        && !text.starts_with('.')
        && !text.contains(['/', '\\'])
        && !text.chars().any(char::is_control);
    visible.then_some(text)
}

/// Size and modification time: what revalidation compares and validators are made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub len: u64,
    pub mtime: SystemTime,
}

impl Stamp {
    fn of(meta: &Metadata) -> Stamp {
        Stamp {
            len: meta.len(),
            mtime: meta.modified().unwrap_or(UNIX_EPOCH),
        }
    }
}

/// Where a variant's bytes are.
#[derive(Debug)]
pub enum Body {
    /// Read whole; a large one keeps its file open for sendfile (see [`crate::sendfile`]).
    Memory(Bytes, Option<Arc<DiskFile>>),
    /// Large files: an open handle, streamed.
    File(File),
}

/// One representation of a file: the file itself or a compressed form.
#[derive(Debug)]
pub struct FileVariant {
    pub encoding: Encoding,
    pub stamp: Stamp,
    pub body: Body,
    /// Compressed by the gateway (not a sibling on disk): not part of revalidation.
    pub generated: bool,
}

/// A file found under the root, with its variants (identity first).
#[derive(Debug)]
pub struct Loaded {
    /// The name the client asked for (or the index file's), for type and caching rules.
    pub name: String,
    pub variants: Vec<FileVariant>,
}

impl Loaded {
    /// The on-disk stamps, compared on revalidation.
    pub fn stamps(&self) -> Vec<(Encoding, Stamp)> {
        self.variants
            .iter()
            .filter(|v| !v.generated)
            .map(|v| (v.encoding, v.stamp))
            .collect()
    }
}

#[derive(Debug)]
pub enum Found {
    File(Loaded),
    /// Same stamps as the `previous` passed in: the cached copy is still right.
    Unchanged,
    /// A folder asked for without the trailing `/` that has an index: redirect to `path/`.
    Redirect,
    Missing,
}

/// The fixed part of every lookup on one static site.
#[derive(Debug, Clone)]
pub struct Lookup {
    pub root: PathBuf,
    pub index: Vec<String>,
    pub precompressed: Vec<Encoding>,
    /// Variants up to this size are read into memory; larger ones stay open files.
    pub max_in_memory: u64,
    /// Keep large files read into memory open for sendfile (see [`crate::sendfile`]).
    pub sendfile: bool,
}

impl Lookup {
    /// Blocking: call on `spawn_blocking`. Any I/O error (missing, permission) is a miss.
    pub fn run(&self, rel: &RelPath, previous: Option<&[(Encoding, Stamp)]>) -> Found {
        match self.try_run(rel, previous) {
            Ok(found) => found,
            Err(e) => {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::debug!(request_id = %crate::observability::CurrentRequestId, error = %e, root = %self.root.display(), "static lookup failed");
                }
                Found::Missing
            }
        }
    }

    fn try_run(&self, rel: &RelPath, previous: Option<&[(Encoding, Stamp)]>) -> io::Result<Found> {
        let root = std::fs::canonicalize(&self.root)?;
        let mut requested = self.root.clone();
        for segment in &rel.segments {
            requested.push(segment);
        }
        let Some((canonical, meta)) = inside(&root, &requested)? else {
            return Ok(Found::Missing);
        };
        let (path, canonical, meta, name) = if meta.is_dir() {
            let index = self.index.iter().find_map(|name| {
                let path = requested.join(name);
                match inside(&root, &path) {
                    Ok(Some((c, m))) if m.is_file() => Some((path, c, m, name.clone())),
                    _ => None,
                }
            });
            match (index, rel.dir) {
                (Some(found), true) => found,
                (Some(_), false) => return Ok(Found::Redirect),
                (None, _) => return Ok(Found::Missing),
            }
        } else if meta.is_file() && !rel.dir {
            let name = rel.segments.last().cloned().unwrap_or_default();
            (requested, canonical, meta, name)
        } else {
            return Ok(Found::Missing);
        };

        let mut found = vec![(Encoding::Identity, canonical, Stamp::of(&meta))];
        for &encoding in &self.precompressed {
            let mut sibling = OsString::from(path.as_os_str());
            sibling.push(encoding.suffix());
            if let Ok(Some((c, m))) = inside(&root, Path::new(&sibling)) {
                if m.is_file() {
                    found.push((encoding, c, Stamp::of(&m)));
                }
            }
        }
        if let Some(previous) = previous {
            let same = previous.len() == found.len()
                && found
                    .iter()
                    .zip(previous)
                    .all(|((e, _, s), (pe, ps))| e == pe && s == ps);
            if same {
                return Ok(Found::Unchanged);
            }
        }
        let mut variants = Vec::with_capacity(found.len());
        for (encoding, canonical, _) in found {
            match self.open(&root, &canonical) {
                Ok((stamp, body)) => variants.push(FileVariant {
                    encoding,
                    stamp,
                    body,
                    generated: false,
                }),
                // The file itself must open; a sibling that vanished is just not offered.
                Err(e) if encoding == Encoding::Identity => return Err(e),
                Err(_) => {}
            }
        }
        Ok(Found::File(Loaded { name, variants }))
    }

    /// Opens a regular file under `root` (canonical); small ones are read whole. The stamp
    /// is taken from the open handle, so it describes exactly the bytes served.
    fn open(&self, root: &Path, canonical: &Path) -> io::Result<(Stamp, Body)> {
        let file = open_no_follow(canonical)?;
        // Of the descriptor, not the path: a FIFO, device or folder is never read.
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::new(io::ErrorKind::NotFound, "not a file"));
        }
        if !opened_inside(root, canonical, &file, &meta) {
            tracing::warn!(
                request_id = %crate::observability::CurrentRequestId,
                path = %canonical.display(),
                "static file resolved outside the root when opened; refused"
            );
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "opened file lies outside the static root",
            ));
        }
        let stamp = Stamp::of(&meta);
        if stamp.len > self.max_in_memory || self.max_in_memory == 0 {
            return Ok((stamp, Body::File(file)));
        }
        let mut bytes = Vec::with_capacity(usize::try_from(stamp.len).unwrap_or(0));
        (&file).take(self.max_in_memory).read_to_end(&mut bytes)?;
        // A file rewritten while being read: serve what was read, described truthfully.
        let stamp = Stamp {
            len: bytes.len() as u64,
            ..stamp
        };
        let disk = match self.sendfile {
            true => DiskFile::keep(file, bytes.len(), stamp.mtime),
            false => None,
        };
        Ok((stamp, Body::Memory(Bytes::from(bytes), disk)))
    }
}

/// Opens `canonical` (free of symlinks when it was checked) read-only. On Unix the last
/// component is not followed (`O_NOFOLLOW`: a symlink swapped in since is `ELOOP`; folders on
/// the way are [`opened_inside`]'s job) and the open does not wait (`O_NONBLOCK`: a FIFO opens
/// at once instead of blocking until a writer appears). The flag stays set: the caller only
/// reads the descriptor after `fstat` says it is a regular file, and reads of regular files
/// ignore `O_NONBLOCK`.
fn open_no_follow(canonical: &Path) -> io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    }
    options.open(canonical)
}

/// Whether the file opened from `canonical` (checked to lie under `root` before the open)
/// really is under `root`: see the module docs, step 3.
fn opened_inside(root: &Path, canonical: &Path, file: &File, meta: &Metadata) -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // The kernel's name of what the descriptor holds: no path is walked again, so
        // nothing swapped afterwards can change the answer.
        if let Ok(actual) = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())) {
            return actual.starts_with(root);
        }
    }
    let _ = file;
    same_file_inside(root, canonical, meta)
}

/// Without `/proc`: `canonical` resolved again must still lie under `root` and name the
/// opened file (device and inode). Best effort: a second swap timed between this
/// re-resolution and its `stat` could still pass; the `/proc` check above has no such gap.
fn same_file_inside(root: &Path, canonical: &Path, opened: &Metadata) -> bool {
    let Ok(again) = std::fs::canonicalize(canonical) else {
        return false;
    };
    if !again.starts_with(root) {
        return false;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&again)
            .is_ok_and(|now| now.dev() == opened.dev() && now.ino() == opened.ino())
    }
    #[cfg(not(unix))]
    {
        let _ = opened;
        true
    }
}

/// The canonical form of `path` and its metadata, if it exists and lies under `root`
/// (already canonical). Only metadata is read; nothing is opened.
fn inside(root: &Path, path: &Path) -> io::Result<Option<(PathBuf, Metadata)>> {
    let canonical = match std::fs::canonicalize(path) {
        Ok(c) => c,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if !canonical.starts_with(root) {
        tracing::debug!(request_id = %crate::observability::CurrentRequestId, path = %path.display(), "static path resolves outside the root");
        return Ok(None);
    }
    let meta = std::fs::metadata(&canonical)?;
    Ok(Some((canonical, meta)))
}

#[cfg(test)]
#[path = "resolve_tests.rs"]
mod tests;
