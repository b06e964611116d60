//! Images from the controller's image store: download once, verify the sha256, cache by
//! digest, and unpack a fresh root filesystem per container.
//!
//! Unpacking treats the tarball as hostile: entries that would land outside the root are
//! refused, device nodes and fifos are dropped, setuid/setgid bits are cleared, and the total
//! size and file count stop at configurable caps, leaving no partial directory behind.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use tar::EntryType;

use super::client::Client;

/// Why an image could not be made ready: a reason word for the status and a message.
pub type ImageFailure = (&'static str, String);

/// The cached tarball for `digest` (`sha256:HEX`), downloading and verifying it if needed.
pub fn fetch(
    client: &Client,
    credential: &str,
    cache: &Path,
    digest: &str,
) -> Result<PathBuf, ImageFailure> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or(("InvalidImage", format!("{digest:?} is not a sha256 digest")))?;
    let dir = cache.join("sha256");
    std::fs::create_dir_all(&dir).map_err(|e| {
        (
            "ImageFailed",
            format!("cannot create {}: {e}", dir.display()),
        )
    })?;
    let path = dir.join(hex);
    if path.is_file() {
        return Ok(path);
    }
    let tmp = dir.join(format!(".{hex}.part"));
    let got = client.download(credential, hex, &tmp).map_err(|e| {
        (
            "ImagePullFailed",
            format!("cannot download image {digest}: {e}"),
        )
    });
    match got {
        Ok(actual) if actual == hex => {
            std::fs::rename(&tmp, &path).map_err(|e| {
                (
                    "ImageFailed",
                    format!("cannot cache {}: {e}", path.display()),
                )
            })?;
            tracing::info!(%digest, "image downloaded and verified");
            Ok(path)
        }
        Ok(actual) => {
            let _ = std::fs::remove_file(&tmp);
            Err((
                "ImageDigestMismatch",
                format!(
                    "image download has digest sha256:{actual}, expected {digest}; refusing it"
                ),
            ))
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// How much an image may unpack to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Total bytes of file contents.
    pub max_bytes: u64,
    /// Number of entries (files, directories, links).
    pub max_files: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 4 << 30,
            max_files: 500_000,
        }
    }
}

static LIMITS: OnceLock<Limits> = OnceLock::new();

/// Sets the limits every later `unpack` uses (the agent's flags; once, at start).
pub fn set_limits(limits: Limits) {
    if LIMITS.set(limits).is_err() {
        tracing::warn!("image limits were already set; keeping the first ones");
    }
}

/// Unpacks `tarball` (plain, gzip, xz, bzip2 or zstd) into a new directory `dest`, replacing
/// any old one, within the limits set at start. On failure nothing is left at `dest`.
pub fn unpack(tarball: &Path, dest: &Path) -> Result<(), ImageFailure> {
    unpack_within(tarball, dest, LIMITS.get().copied().unwrap_or_default()).map(|_| ())
}

/// What an unpack dropped or changed, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Unpacked {
    pub files: u64,
    pub bytes: u64,
    /// Device nodes, fifos and other special entries left out.
    pub dropped: u64,
    /// Files whose setuid/setgid bits were cleared.
    pub setid_cleared: u64,
}

/// `unpack` with explicit limits.
pub fn unpack_within(
    tarball: &Path,
    dest: &Path,
    limits: Limits,
) -> Result<Unpacked, ImageFailure> {
    let failed = |what: &str, e: std::io::Error| ("ImageFailed", format!("{what}: {e}"));
    if dest.exists() {
        std::fs::remove_dir_all(dest)
            .map_err(|e| failed(&format!("cannot clear {}", dest.display()), e))?;
    }
    std::fs::create_dir_all(dest)
        .map_err(|e| failed(&format!("cannot create {}", dest.display()), e))?;
    let result = Decompressed::open(tarball).and_then(|mut input| {
        // Headers and long names come on top of the contents; past this the stream is a
        // bomb whatever its headers say.
        input.cap = limits
            .max_bytes
            .saturating_add(limits.max_files.saturating_mul(2048))
            .saturating_add(1 << 20);
        let unpacked = extract(&mut input, dest, limits)?;
        input.finish().map(|()| unpacked)
    });
    match result {
        Ok(unpacked) => {
            tracing::info!(
                dest = %dest.display(),
                files = unpacked.files,
                bytes = unpacked.bytes,
                dropped = unpacked.dropped,
                setid_cleared = unpacked.setid_cleared,
                "image unpacked"
            );
            Ok(unpacked)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(dest);
            Err(e)
        }
    }
}

/// Bits never carried over from an image: setuid and setgid (the sticky bit stays).
const SETID_BITS: u32 = 0o6000;

fn extract(
    input: &mut Decompressed,
    dest: &Path,
    limits: Limits,
) -> Result<Unpacked, ImageFailure> {
    let bad = |message: String| ("ImageFailed", format!("cannot unpack the image: {message}"));
    let too_big = |what: String| {
        (
            "ImageTooLarge",
            format!("image unpacks to more than {what}; refusing it (agent flags --image-max-bytes, --image-max-files)"),
        )
    };
    let exceeded = input.exceeded.clone();
    let mut archive = tar::Archive::new(&mut *input);
    archive.set_preserve_permissions(true);
    archive.set_mask(SETID_BITS);
    archive.set_preserve_ownerships(false);
    archive.set_overwrite(true);
    let mut done = Unpacked::default();
    let mut dropped_paths: HashSet<PathBuf> = HashSet::new();
    // Directories last, so that their modes and times are not disturbed by what goes in them.
    let mut directories = Vec::new();
    let entries = archive.entries().map_err(|e| bad(e.to_string()))?;
    for entry in entries {
        let mut entry = match entry {
            Ok(entry) => entry,
            Err(_) if exceeded.load(Ordering::Relaxed) => {
                return Err(too_big(format!("{} bytes", limits.max_bytes)))
            }
            Err(e) => return Err(bad(e.to_string())),
        };
        let path = entry.path().map_err(|e| bad(e.to_string()))?.into_owned();
        let kind = entry.header().entry_type();
        match kind {
            EntryType::Regular
            | EntryType::Continuous
            | EntryType::GNUSparse
            | EntryType::Directory
            | EntryType::Symlink => {}
            EntryType::Link => {
                let target = entry.link_name().ok().flatten().map(|t| t.into_owned());
                if target.is_some_and(|t| dropped_paths.contains(&t)) {
                    done.dropped += 1;
                    continue;
                }
            }
            EntryType::XGlobalHeader => continue,
            _ => {
                tracing::debug!(path = %path.display(), ?kind, "image entry dropped");
                done.dropped += 1;
                dropped_paths.insert(path);
                continue;
            }
        }
        done.files += 1;
        if done.files > limits.max_files {
            return Err(too_big(format!("{} files", limits.max_files)));
        }
        done.bytes = done.bytes.saturating_add(entry.size());
        if done.bytes > limits.max_bytes {
            return Err(too_big(format!("{} bytes", limits.max_bytes)));
        }
        if entry.header().mode().is_ok_and(|m| m & SETID_BITS != 0) && kind != EntryType::Directory
        {
            done.setid_cleared += 1;
        }
        if kind == EntryType::Directory {
            directories.push(entry);
            continue;
        }
        match entry.unpack_in(dest) {
            Ok(true) => {}
            Ok(false) => {
                return Err(bad(format!(
                    "entry {} lies outside the root filesystem",
                    path.display()
                )))
            }
            Err(_) if exceeded.load(Ordering::Relaxed) => {
                return Err(too_big(format!("{} bytes", limits.max_bytes)))
            }
            Err(e) => return Err(bad(error_chain(&e))),
        }
    }
    directories.sort_by(|a, b| b.path_bytes().cmp(&a.path_bytes()));
    for mut dir in directories {
        match dir.unpack_in(dest) {
            Ok(true) => {}
            Ok(false) => {
                return Err(bad(format!(
                    "entry {} lies outside the root filesystem",
                    String::from_utf8_lossy(&dir.path_bytes())
                )))
            }
            Err(e) => return Err(bad(error_chain(&e))),
        }
    }
    Ok(done)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// The tarball's bytes, decompressed by the system's own tool when compressed, counted so
/// that a compression bomb stops at a cap.
struct Decompressed {
    reader: Box<dyn Read + Send>,
    child: Option<Child>,
    read: u64,
    cap: u64,
    exceeded: Arc<AtomicBool>,
}

impl Decompressed {
    fn open(tarball: &Path) -> Result<Decompressed, ImageFailure> {
        let failed = |e: std::io::Error| {
            (
                "ImageFailed",
                format!("cannot read {}: {e}", tarball.display()),
            )
        };
        let mut magic = [0u8; 6];
        let n = std::fs::File::open(tarball)
            .and_then(|mut f| f.read(&mut magic))
            .map_err(failed)?;
        let tool = match &magic[..n] {
            [0x1f, 0x8b, ..] => Some("gzip"),
            [0xfd, b'7', b'z', b'X', b'Z', 0] => Some("xz"),
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Some("zstd"),
            [b'B', b'Z', b'h', ..] => Some("bzip2"),
            _ => None,
        };
        let file = std::fs::File::open(tarball).map_err(failed)?;
        let (reader, child): (Box<dyn Read + Send>, _) = match tool {
            None => (Box::new(file), None),
            Some(tool) => {
                let mut child = Command::new(tool)
                    .arg("-dc")
                    .stdin(file)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .map_err(|e| ("ImageFailed", format!("cannot run {tool}: {e}")))?;
                let Some(stdout) = child.stdout.take() else {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(("ImageFailed", format!("{tool} has no output pipe")));
                };
                (Box::new(stdout), Some(child))
            }
        };
        Ok(Decompressed {
            reader,
            child,
            read: 0,
            cap: u64::MAX,
            exceeded: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Checks the decompressor's exit once the archive has ended. Tar pads archives to whole
    /// records, so a little more may follow; beyond [`TRAILER_BYTES`] the rest is not read at
    /// all (the archive is complete) and the decompressor is stopped.
    fn finish(mut self) -> Result<(), ImageFailure> {
        let drained = std::io::copy(
            &mut (&mut self).take(TRAILER_BYTES + 1),
            &mut std::io::sink(),
        );
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let complete = matches!(drained, Ok(n) if n <= TRAILER_BYTES);
        if !complete {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(());
        }
        match child.wait() {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err((
                "ImageFailed",
                format!("cannot unpack the image: its decompression failed ({s})"),
            )),
            Err(e) => Err(("ImageFailed", format!("cannot unpack the image: {e}"))),
        }
    }
}

/// How much may follow the end of an archive before the rest is ignored unread.
const TRAILER_BYTES: u64 = 1 << 20;

impl Read for Decompressed {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.read >= self.cap {
            self.exceeded.store(true, Ordering::Relaxed);
            return Err(std::io::Error::other("image stream exceeds the size cap"));
        }
        let n = self.reader.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

impl Drop for Decompressed {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
#[path = "images_tests.rs"]
mod tests;
