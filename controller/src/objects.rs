//! Typed objects over the key-value store: keys, JSON encoding, apply semantics and watches.

use std::sync::Arc;

use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use texu_api::{Container, Kind, Node, ObjectMeta, Role};

use crate::clock;
use crate::events::Events;
use crate::store::{EventKind, KeyValue, Store, StoreError, Txn};

/// Root of every key Texu writes.
pub const KEY_ROOT: &str = "/texu/v1/";

/// How many times an apply retries when another writer changed the object under it.
const APPLY_ATTEMPTS: usize = 8;

/// A result of this module.
pub type Result<T, E = ObjectError> = std::result::Result<T, E>;

/// What can go wrong reading or writing objects.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored value does not decode: a bug or a foreign writer.
    #[error("stored object {key} is corrupt: {source}")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot encode {name}: {source}")]
    Encode {
        name: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("no free {what}")]
    Exhausted { what: String },
    #[error("{kind} {name} not found")]
    NotFound { kind: &'static str, name: String },
    /// Another writer changed the object since it was read.
    #[error("{kind} {name} was changed by someone else")]
    Stale { kind: &'static str, name: String },
    #[error("{kind} {name} kept changing while it was being applied; try again")]
    Conflict { kind: &'static str, name: String },
}

/// An API object stored under `KEY_ROOT/{plural}/{name}`.
pub trait Object: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    /// Its kind.
    const KIND: Kind;
    /// Its metadata.
    fn meta(&self) -> &ObjectMeta;
    /// Its metadata, mutably.
    fn meta_mut(&mut self) -> &mut ObjectMeta;
}

macro_rules! impl_object {
    ($t:ty, $kind:expr) => {
        impl Object for $t {
            const KIND: Kind = $kind;
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}
impl_object!(Role, Kind::Role);
impl_object!(Node, Kind::Node);
impl_object!(Container, Kind::Container);

/// The key prefix of one kind, e.g. `/texu/v1/roles/`.
pub fn kind_prefix(kind: Kind) -> String {
    format!("{KEY_ROOT}{}/", kind.plural())
}

/// The key of one object.
pub fn object_key(kind: Kind, name: &str) -> String {
    format!("{}{name}", kind_prefix(kind))
}

/// What an apply did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyOutcome {
    Created,
    Configured,
    Unchanged,
}

impl ApplyOutcome {
    /// The word the CLI prints: `created`, `configured`, `unchanged`.
    pub fn as_str(self) -> &'static str {
        match self {
            ApplyOutcome::Created => "created",
            ApplyOutcome::Configured => "configured",
            ApplyOutcome::Unchanged => "unchanged",
        }
    }
}

/// One change to an object, as a watch delivers it.
#[derive(Debug, Clone, Serialize)]
pub struct WatchEvent {
    /// `ADDED`, `MODIFIED` or `DELETED`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The store revision of the change.
    pub revision: i64,
    /// The object after the change; for `DELETED`, its kind and name.
    pub object: serde_json::Value,
}

/// Typed access to the objects in a store, and the event log of the decisions taken on them.
#[derive(Clone)]
pub struct Objects {
    store: Arc<dyn Store>,
    events: Events,
}

impl Objects {
    /// Wraps a store, with an empty event log.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Objects {
            store,
            events: Events::new(),
        }
    }

    /// The same event log over another store (the leader's fenced one).
    pub fn with_store(&self, store: Arc<dyn Store>) -> Self {
        Objects {
            store,
            events: self.events.clone(),
        }
    }

    /// The store underneath.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The event log: `objects.events().record(...)` for every decision.
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// Reads one object.
    pub async fn get<T: Object>(&self, name: &str) -> Result<Option<T>> {
        match self.store.get(&object_key(T::KIND, name)).await? {
            Some(kv) => Ok(Some(decode(&kv)?)),
            None => Ok(None),
        }
    }

    /// Lists every object of a kind, sorted by name, and the revision of the read.
    pub async fn list<T: Object>(&self) -> Result<(Vec<T>, i64)> {
        self.list_containing(&[]).await
    }

    /// The objects of a kind whose stored JSON contains every one of `needles` (a superset
    /// for the caller to filter exactly), with the revision they were read at; only those are
    /// copied out of the store and decoded.
    pub async fn list_containing<T: Object>(&self, needles: &[Vec<u8>]) -> Result<(Vec<T>, i64)> {
        let range = self
            .store
            .range_containing(&kind_prefix(T::KIND), needles)
            .await?;
        let items = range.kvs.iter().map(decode).collect::<Result<Vec<T>>>()?;
        Ok((items, range.revision))
    }

    /// Counts the objects of a kind.
    pub async fn count(&self, kind: Kind) -> Result<usize> {
        Ok(self.store.range(&kind_prefix(kind)).await?.kvs.len())
    }

    /// Creates or updates a role from an operator's manifest.
    ///
    /// An identical spec and labels change nothing; a changed spec bumps `metadata.generation`.
    /// Status and creation time are kept from the stored object. With `dry_run` nothing is written.
    pub async fn apply_role(&self, mut role: Role, dry_run: bool) -> Result<(ApplyOutcome, Role)> {
        let key = object_key(Kind::Role, &role.metadata.name);
        for _ in 0..APPLY_ATTEMPTS {
            let existing = self.store.get(&key).await?;
            let (outcome, expected_revision) = match &existing {
                None => {
                    role.metadata.generation = 1;
                    role.metadata.created = Some(clock::now_rfc3339());
                    role.status = None;
                    (ApplyOutcome::Created, 0)
                }
                Some(kv) => {
                    let old: Role = decode(kv)?;
                    if old.spec == role.spec && old.metadata.labels == role.metadata.labels {
                        return Ok((ApplyOutcome::Unchanged, old));
                    }
                    role.metadata.generation =
                        old.metadata.generation + i64::from(old.spec != role.spec);
                    role.metadata.created = old.metadata.created.clone();
                    role.status = old.status.clone();
                    (ApplyOutcome::Configured, kv.mod_revision)
                }
            };
            if dry_run {
                return Ok((outcome, role));
            }
            role.metadata.revision = 0;
            let txn = Txn::new()
                .when_mod_revision(key.clone(), expected_revision)
                .put(key.clone(), encode(&role)?);
            let result = self.store.txn(txn).await?;
            if result.succeeded {
                role.metadata.revision = result.revision;
                return Ok((outcome, role));
            }
        }
        Err(ObjectError::Conflict {
            kind: Kind::Role.as_str(),
            name: role.metadata.name,
        })
    }

    /// Writes an object read earlier, if nobody changed it since (its `metadata.revision`);
    /// a revision of 0 creates it only if it does not exist. Returns the new revision.
    pub async fn replace<T: Object>(&self, obj: &T) -> Result<i64> {
        let result = self.store.txn(replace_txn(obj)?).await?;
        if result.succeeded {
            Ok(result.revision)
        } else {
            Err(stale(obj))
        }
    }

    /// [`Objects::replace`] for several objects at once, as one store batch (the embedded
    /// store commits it with one sync): each is written only if nobody changed it since it was
    /// read, and fails alone (`Stale`) otherwise. One answer per object, in order.
    pub async fn replace_all<T: Object>(&self, objs: &[T]) -> Result<Vec<Result<i64>>> {
        let txns = objs.iter().map(replace_txn).collect::<Result<Vec<_>>>()?;
        let answers = self.store.txn_batch(txns).await?;
        Ok(answers
            .into_iter()
            .zip(objs)
            .map(|(answer, obj)| match answer {
                Ok(r) if r.succeeded => Ok(r.revision),
                Ok(_) => Err(stale(obj)),
                Err(e) => Err(e.into()),
            })
            .collect())
    }

    /// [`Objects::delete_at`] for several objects of a kind at once, as one store batch. One
    /// answer per `(name, revision)`, in order: true when it was deleted.
    pub async fn delete_all_at(&self, kind: Kind, at: &[(&str, i64)]) -> Result<Vec<Result<bool>>> {
        let txns = at
            .iter()
            .map(|(name, revision)| {
                let key = object_key(kind, name);
                Txn::new()
                    .when_mod_revision(key.clone(), *revision)
                    .delete(key)
            })
            .collect();
        let answers = self.store.txn_batch(txns).await?;
        Ok(answers
            .into_iter()
            .map(|a| a.map(|r| r.succeeded).map_err(ObjectError::from))
            .collect())
    }

    /// Deletes an object if it is still at `revision`.
    pub async fn delete_at(&self, kind: Kind, name: &str, revision: i64) -> Result<bool> {
        let key = object_key(kind, name);
        let txn = Txn::new()
            .when_mod_revision(key.clone(), revision)
            .delete(key);
        Ok(self.store.txn(txn).await?.succeeded)
    }

    /// Deletes an object; false when it did not exist.
    pub async fn delete(&self, kind: Kind, name: &str) -> Result<bool> {
        let key = object_key(kind, name);
        for _ in 0..APPLY_ATTEMPTS {
            let Some(kv) = self.store.get(&key).await? else {
                return Ok(false);
            };
            if self.delete_at(kind, name, kv.mod_revision).await? {
                return Ok(true);
            }
        }
        Err(ObjectError::Conflict {
            kind: kind.as_str(),
            name: name.to_string(),
        })
    }

    /// Follows every change to objects of `kind` after revision `after` (0: from now on).
    pub async fn watch(
        &self,
        kind: Kind,
        after: i64,
    ) -> Result<impl futures::Stream<Item = Result<Vec<WatchEvent>>> + Send + 'static> {
        self.watch_where(kind, after, |_, _| true).await
    }

    /// [`Objects::watch`], passing over every change `keep` refuses before it is decoded
    /// (`keep` sees the changes in order, with the stored bytes): a watch filtered on one
    /// board among a thousand decodes only what may concern that board. A batch may come
    /// out empty.
    pub async fn watch_where<F>(
        &self,
        kind: Kind,
        after: i64,
        mut keep: F,
    ) -> Result<impl futures::Stream<Item = Result<Vec<WatchEvent>>> + Send + 'static>
    where
        F: FnMut(EventKind, &KeyValue) -> bool + Send + 'static,
    {
        let from = if after > 0 { after + 1 } else { 0 };
        let stream = self.store.watch(&kind_prefix(kind), from).await?;
        Ok(stream.map(move |batch| {
            let batch = batch?;
            batch
                .into_iter()
                .filter(|ev| keep(ev.kind, &ev.kv))
                .map(|ev| watch_event(kind, ev.kind, &ev.kv))
                .collect()
        }))
    }
}

fn watch_event(kind: Kind, event: EventKind, kv: &KeyValue) -> Result<WatchEvent> {
    let name = kv.key.rsplit('/').next().unwrap_or_default();
    let (type_, object) = match event {
        EventKind::Delete => (
            "DELETED",
            serde_json::json!({
                "apiVersion": texu_api::API_VERSION,
                "kind": kind.as_str(),
                "metadata": { "name": name },
            }),
        ),
        EventKind::Put => {
            let mut value: serde_json::Value =
                serde_json::from_slice(&kv.value).map_err(|source| ObjectError::Corrupt {
                    key: kv.key.clone(),
                    source,
                })?;
            if let Some(meta) = value.get_mut("metadata").and_then(|m| m.as_object_mut()) {
                meta.insert("revision".into(), kv.mod_revision.into());
            }
            let type_ = if kv.version == 1 { "ADDED" } else { "MODIFIED" };
            (type_, value)
        }
    };
    Ok(WatchEvent {
        kind: type_,
        revision: kv.mod_revision,
        object,
    })
}

/// The guarded write of [`Objects::replace`].
fn replace_txn<T: Object>(obj: &T) -> Result<Txn> {
    let key = object_key(T::KIND, &obj.meta().name);
    let expected = obj.meta().revision;
    let mut stored = obj.clone();
    stored.meta_mut().revision = 0;
    if expected == 0 && stored.meta().created.is_none() {
        // A revision of 0 creates the object: this is its birth (a container's AGE).
        stored.meta_mut().created = Some(clock::now_rfc3339());
    }
    Ok(Txn::new()
        .when_mod_revision(key.clone(), expected)
        .put(key, encode(&stored)?))
}

fn stale<T: Object>(obj: &T) -> ObjectError {
    ObjectError::Stale {
        kind: T::KIND.as_str(),
        name: obj.meta().name.clone(),
    }
}

fn decode<T: Object>(kv: &KeyValue) -> Result<T> {
    let mut obj: T = serde_json::from_slice(&kv.value).map_err(|source| ObjectError::Corrupt {
        key: kv.key.clone(),
        source,
    })?;
    obj.meta_mut().revision = kv.mod_revision;
    Ok(obj)
}

fn encode<T: Object>(obj: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(obj).map_err(|source| ObjectError::Encode {
        name: obj.meta().name.clone(),
        source,
    })
}
