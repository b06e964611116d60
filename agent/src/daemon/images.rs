//! Images from the controller's image store: download once, verify the sha256, cache by
//! digest, and unpack a fresh root filesystem per container.

use std::path::{Path, PathBuf};
use std::process::Command;

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

/// Unpacks `tarball` (plain, gzip, xz or zstd) into a new directory `dest`, replacing any old
/// one. On failure nothing is left at `dest`.
pub fn unpack(tarball: &Path, dest: &Path) -> Result<(), ImageFailure> {
    if dest.exists() {
        std::fs::remove_dir_all(dest).map_err(|e| {
            (
                "ImageFailed",
                format!("cannot clear {}: {e}", dest.display()),
            )
        })?;
    }
    std::fs::create_dir_all(dest).map_err(|e| {
        (
            "ImageFailed",
            format!("cannot create {}: {e}", dest.display()),
        )
    })?;
    let out = Command::new("tar")
        .arg("-xf")
        .arg(tarball)
        .arg("-C")
        .arg(dest)
        .args(["--no-same-owner", "--numeric-owner"])
        .output();
    let failure = match out {
        Ok(o) if o.status.success() => return Ok(()),
        Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
        Err(e) => format!("cannot run tar: {e}"),
    };
    let _ = std::fs::remove_dir_all(dest);
    Err(("ImageFailed", format!("cannot unpack the image: {failure}")))
}
