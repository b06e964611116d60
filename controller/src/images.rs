//! The image store: root filesystem tarballs per architecture, kept by sha256 in the data dir,
//! with a record per `NAME:TAG` in the store naming each architecture's digest.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use texu_api::Arch;
use tokio::io::AsyncWriteExt;

use crate::objects::{ObjectError, Objects, KEY_ROOT};
use crate::store::Txn;

/// An image upload that sends nothing for this long is abandoned (its partial blob removed).
pub const UPLOAD_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

/// Largest image accepted.
pub const MAX_IMAGE_BYTES: u64 = 2 << 30;

/// One architecture's tarball.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Variant {
    /// `sha256:HEX` of the tarball as imported.
    pub digest: String,
    pub size: u64,
    pub imported: String,
}

/// An image: `NAME:TAG` with a tarball per architecture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageRecord {
    pub name: String,
    pub tag: String,
    pub variants: BTreeMap<Arch, Variant>,
}

/// What can go wrong importing or reading images.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image is larger than {MAX_IMAGE_BYTES} bytes")]
    TooLarge,
    #[error("image upload broke off: {0}")]
    Upload(String),
    #[error("image store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is not a sha256 digest")]
    BadDigest(String),
    #[error(transparent)]
    Object(#[from] ObjectError),
}

fn record_key(name: &str, tag: &str) -> String {
    format!("{KEY_ROOT}images/{name}/{tag}")
}

/// Blobs on disk and records in the store.
pub struct ImageStore {
    dir: PathBuf,
    objects: Objects,
}

impl ImageStore {
    /// An image store with blobs under `dir` (created when needed).
    pub fn new(dir: PathBuf, objects: Objects) -> Self {
        ImageStore { dir, objects }
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
        move |source| ImageError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// The path of a blob by its hex digest, if the digest is well-formed.
    pub fn blob_path(&self, hex: &str) -> Result<PathBuf, ImageError> {
        let valid = hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
        if !valid {
            return Err(ImageError::BadDigest(hex.to_string()));
        }
        Ok(self.dir.join("sha256").join(hex))
    }

    /// Streams a tarball to disk, hashing it, and records it as `name:tag` for `arch`.
    pub async fn import<S, B, E>(
        &self,
        name: &str,
        tag: &str,
        arch: Arch,
        mut body: S,
    ) -> Result<Variant, ImageError>
    where
        S: Stream<Item = Result<B, E>> + Unpin,
        B: bytes::Buf,
        E: std::fmt::Display,
    {
        let blobs = self.dir.join("sha256");
        tokio::fs::create_dir_all(&blobs)
            .await
            .map_err(Self::io(&blobs))?;
        let tmp = blobs.join(format!(".upload-{}", rand::random::<u64>()));
        let result = async {
            let mut file = tokio::fs::File::create(&tmp)
                .await
                .map_err(Self::io(&tmp))?;
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            loop {
                let next = tokio::time::timeout(UPLOAD_IDLE, body.next())
                    .await
                    .map_err(|_| {
                        ImageError::Upload(format!(
                            "no data for {} s after {size} bytes",
                            UPLOAD_IDLE.as_secs()
                        ))
                    })?;
                let Some(chunk) = next else {
                    break;
                };
                let mut chunk = chunk.map_err(|e| ImageError::Upload(e.to_string()))?;
                while chunk.has_remaining() {
                    let part = chunk.chunk();
                    size += part.len() as u64;
                    if size > MAX_IMAGE_BYTES {
                        return Err(ImageError::TooLarge);
                    }
                    hasher.update(part);
                    file.write_all(part).await.map_err(Self::io(&tmp))?;
                    let n = part.len();
                    chunk.advance(n);
                }
            }
            file.sync_all().await.map_err(Self::io(&tmp))?;
            Ok((hex::encode(hasher.finalize()), size))
        }
        .await;
        let (hex, size) = match result {
            Ok(v) => v,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e);
            }
        };
        let path = self.blob_path(&hex)?;
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(Self::io(&path))?;
        let variant = Variant {
            digest: format!("sha256:{hex}"),
            size,
            imported: crate::clock::now_rfc3339(),
        };
        self.record(name, tag, arch, variant.clone()).await?;
        tracing::info!(image = %format!("{name}:{tag}"), %arch, digest = %variant.digest, size, "image imported");
        Ok(variant)
    }

    async fn record(
        &self,
        name: &str,
        tag: &str,
        arch: Arch,
        variant: Variant,
    ) -> Result<(), ImageError> {
        let key = record_key(name, tag);
        let store = self.objects.store();
        loop {
            let current = store.get(&key).await.map_err(ObjectError::from)?;
            let (mut record, revision) = match &current {
                Some(kv) => (
                    serde_json::from_slice::<ImageRecord>(&kv.value).map_err(|source| {
                        ObjectError::Corrupt {
                            key: key.clone(),
                            source,
                        }
                    })?,
                    kv.mod_revision,
                ),
                None => (
                    ImageRecord {
                        name: name.to_string(),
                        tag: tag.to_string(),
                        variants: BTreeMap::new(),
                    },
                    0,
                ),
            };
            record.variants.insert(arch, variant.clone());
            let value = serde_json::to_vec(&record).map_err(|source| ObjectError::Encode {
                name: key.clone(),
                source,
            })?;
            let txn = Txn::new()
                .when_mod_revision(key.clone(), revision)
                .put(key.clone(), value);
            if store.txn(txn).await.map_err(ObjectError::from)?.succeeded {
                return Ok(());
            }
        }
    }

    /// Every image record.
    pub async fn list(objects: &Objects) -> Result<Vec<ImageRecord>, ObjectError> {
        let prefix = format!("{KEY_ROOT}images/");
        let range = objects.store().range(&prefix).await?;
        range
            .kvs
            .iter()
            .map(|kv| {
                serde_json::from_slice(&kv.value).map_err(|source| ObjectError::Corrupt {
                    key: kv.key.clone(),
                    source,
                })
            })
            .collect()
    }
}
