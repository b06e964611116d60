//! Leadership among controllers that share one etcd: who leads, since which revision, and the
//! fence that keeps a deposed leader from writing.
//!
//! Each controller holds an etcd lease ([`LEASE_TTL`]) that it keeps alive, registers its API
//! address under [`MEMBERS_PREFIX`] with it, and campaigns with a transaction that creates
//! [`LEADER_KEY`] only if it is absent, attached to its lease. The revision of that put is the
//! term: while this controller leads, every write of its leader-only work goes through
//! [`FencedStore`], which adds "the leader key's mod revision is still my term" to the
//! transaction. When a leader dies its lease expires and etcd deletes the key, so a follower's
//! next campaign wins. A leader that could not renew its lease for a whole TTL (a stall, a
//! partition from etcd) steps down by itself; if it wakes up before it notices, the fence
//! refuses its writes, since the new leader's put changed the key's revision.
//!
//! A single controller on the embedded store uses [`Leadership::sole`]: always the leader,
//! nothing fenced, no etcd.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare as EtcdCompare, CompareOp, ConnectOptions, GetOptions, PutOptions,
    Txn as EtcdTxn, TxnOp, TxnOpResponse,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::store::{RangeResult, Result, Store, StoreError, Txn, TxnResult, WatchStream};

/// The key the leader holds (with its lease); its mod revision is the leader's term.
pub const LEADER_KEY: &str = "/texu/v1/leader";
/// Every running controller's address, one key each, held by that controller's lease.
pub const MEMBERS_PREFIX: &str = "/texu/v1/controllers/";
/// Seconds a controller's lease lives without a renewal: how long a dead leader keeps the key.
pub const LEASE_TTL: i64 = 2;
/// How often a controller renews its lease and looks at the leader key.
pub const TICK: Duration = Duration::from_millis(400);
/// A leader steps down when it has not renewed its lease for this long (a little under the
/// TTL, so it stops before etcd hands the key to another).
const STEP_DOWN_AFTER: Duration = Duration::from_millis(LEASE_TTL as u64 * 1000 - 300);
/// Deadline for one request to etcd from the election loop.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

/// One controller as the others see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// A name unique per process (host, pid and start time).
    pub id: String,
    /// Its API URL (`http://HOST:PORT`).
    pub address: String,
}

/// What this controller knows about leadership.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// Who leads, if anyone does.
    pub leader: Option<Member>,
    /// `Some(revision of the leader key)` while this controller leads.
    pub term: Option<i64>,
    /// Every controller's API URL, sorted.
    pub controllers: Vec<String>,
}

/// A shared handle on this controller's leadership.
#[derive(Clone)]
pub struct Leadership {
    me: Member,
    view: watch::Receiver<View>,
    /// Only `campaign` sends; kept here so `sole` needs no task.
    sender: Arc<watch::Sender<View>>,
    fenced: bool,
    /// 1 while this controller leads.
    pub leading: Gauge,
    /// Terms this controller won.
    pub elections: Counter,
    /// Writes the fence refused (this controller was no longer the leader).
    pub refused_writes: Counter,
}

impl Leadership {
    /// The only controller (embedded store): leads from the start, writes unfenced.
    pub fn sole(address: &str) -> Self {
        let me = Member {
            id: member_id(),
            address: address.to_string(),
        };
        let view = View {
            leader: Some(me.clone()),
            term: Some(0),
            controllers: vec![address.to_string()],
        };
        let l = Self::with_view(me, view, false);
        l.leading.set(1);
        l.elections.inc();
        l
    }

    /// One of several controllers on etcd: follows until [`campaign`] wins a term.
    pub fn elected(address: &str) -> Self {
        let me = Member {
            id: member_id(),
            address: address.to_string(),
        };
        Self::with_view(me, View::default(), true)
    }

    fn with_view(me: Member, view: View, fenced: bool) -> Self {
        let (sender, receiver) = watch::channel(view);
        Leadership {
            me,
            view: receiver,
            sender: Arc::new(sender),
            fenced,
            leading: Gauge::default(),
            elections: Counter::default(),
            refused_writes: Counter::default(),
        }
    }

    /// This controller.
    pub fn me(&self) -> &Member {
        &self.me
    }

    /// What it knows now.
    pub fn view(&self) -> View {
        self.view.borrow().clone()
    }

    /// Follows changes of the view.
    pub fn changes(&self) -> watch::Receiver<View> {
        self.view.clone()
    }

    /// True while this controller leads.
    pub fn is_leader(&self) -> bool {
        self.view.borrow().term.is_some()
    }

    /// The leader's API URL when another controller leads.
    pub fn leader_elsewhere(&self) -> Option<String> {
        let view = self.view.borrow();
        view.leader
            .as_ref()
            .filter(|m| m.id != self.me.id)
            .map(|m| m.address.clone())
    }

    /// `store`, with every write fenced by this controller's term (unchanged for `sole`).
    pub fn fence(&self, store: Arc<dyn Store>) -> Arc<dyn Store> {
        if !self.fenced {
            return store;
        }
        Arc::new(FencedStore {
            inner: store,
            leadership: self.clone(),
        })
    }

    fn set(&self, change: impl FnOnce(&mut View)) {
        self.sender.send_if_modified(|v| {
            let before = v.clone();
            change(v);
            *v != before
        });
        self.leading.set(i64::from(self.is_leader()));
    }
}

fn member_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{host}-{}-{nanos}", std::process::id())
}

/// A store whose writes land only while this controller's term lasts.
pub struct FencedStore {
    inner: Arc<dyn Store>,
    leadership: Leadership,
}

#[async_trait]
impl Store for FencedStore {
    async fn get(&self, key: &str) -> Result<Option<crate::store::KeyValue>> {
        self.inner.get(key).await
    }
    async fn range(&self, prefix: &str) -> Result<RangeResult> {
        self.inner.range(prefix).await
    }
    async fn range_containing(&self, prefix: &str, needles: &[Vec<u8>]) -> Result<RangeResult> {
        self.inner.range_containing(prefix, needles).await
    }
    async fn txn(&self, txn: Txn) -> Result<TxnResult> {
        let Some(term) = self.leadership.view.borrow().term else {
            self.leadership.refused_writes.inc();
            return Err(StoreError::NotLeader);
        };
        let result = self
            .inner
            .txn(txn.when_mod_revision(LEADER_KEY, term))
            .await?;
        if !result.succeeded {
            // Either the caller's own compare failed or the term is over: the key tells.
            let current = self.inner.get(LEADER_KEY).await?;
            if current.is_none_or(|kv| kv.mod_revision != term) {
                self.leadership.refused_writes.inc();
                tracing::warn!(term, "write refused: this controller no longer leads");
                self.leadership.set(|v| v.term = None);
                return Err(StoreError::NotLeader);
            }
        }
        Ok(result)
    }
    async fn watch(&self, prefix: &str, from_revision: i64) -> Result<WatchStream> {
        self.inner.watch(prefix, from_revision).await
    }
    async fn compact(&self, revision: i64) -> Result<()> {
        if !self.leadership.is_leader() {
            return Err(StoreError::NotLeader);
        }
        self.inner.compact(revision).await
    }
    async fn revision(&self) -> Result<i64> {
        self.inner.revision().await
    }
    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

/// Why one round of the election loop failed (logged; the loop retries).
#[derive(Debug, thiserror::Error)]
enum ElectionError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("etcd did not answer within {REQUEST_TIMEOUT:?}")]
    Timeout,
    #[error("the lease expired")]
    LeaseLost,
}

async fn timed<T>(
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, ElectionError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, f).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(ElectionError::Timeout),
    }
}

/// Campaigns for leadership on etcd at `endpoints` until `stop`, keeping `leadership`'s view
/// current; on `stop` a leader gives the key up at once, so another takes over without
/// waiting for the lease to expire.
pub async fn campaign(endpoints: Vec<String>, leadership: Leadership, stop: CancellationToken) {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(1));
    let mut backoff = Duration::from_millis(100);
    loop {
        let connected = tokio::select! {
            () = stop.cancelled() => return,
            c = Client::connect(&endpoints, Some(options.clone())) => c,
        };
        let client = match connected {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "election cannot reach etcd; retrying in {backoff:?}");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        let mut round = Round {
            client,
            leadership: &leadership,
            lease: 0,
            renewed: Instant::now(),
        };
        match round.run(&stop).await {
            Ok(()) => return,
            Err(e) => {
                leadership.set(|v| {
                    if v.term.is_some() {
                        tracing::warn!(error = %e, "stepping down");
                    }
                    v.term = None;
                    v.leader = None;
                });
                tracing::warn!(error = %e, "election round ended; starting another");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(TICK) => {}
                }
            }
        }
    }
}

/// One lease's life: renew it, campaign, watch the leader key.
struct Round<'a> {
    client: Client,
    leadership: &'a Leadership,
    lease: i64,
    /// When the last renewal that etcd confirmed was sent.
    renewed: Instant,
}

impl Round<'_> {
    async fn run(&mut self, stop: &CancellationToken) -> Result<(), ElectionError> {
        let mut lease = self.client.lease_client();
        self.renewed = Instant::now();
        self.lease = timed(lease.grant(LEASE_TTL, None)).await?.id();
        let (mut keeper, mut answers) = timed(lease.keep_alive(self.lease)).await?;
        let me = self.leadership.me.clone();
        let member_key = format!("{MEMBERS_PREFIX}{}", me.id);
        let value = serde_json::to_vec(&me).unwrap_or_default();
        let put = PutOptions::new().with_lease(self.lease);
        timed(
            self.client
                .kv_client()
                .put(member_key.clone(), value.clone(), Some(put.clone())),
        )
        .await?;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => {
                    self.resign(&member_key).await;
                    return Ok(());
                }
                _ = tick.tick() => {}
            }
            // A stalled process (SIGSTOP, swapping) wakes here: judge the lease first.
            if self.renewed.elapsed() >= STEP_DOWN_AFTER && self.leadership.is_leader() {
                self.leadership.set(|v| v.term = None);
                return Err(ElectionError::LeaseLost);
            }
            let sent = Instant::now();
            timed(keeper.keep_alive()).await?;
            match timed(answers.message()).await? {
                Some(answer) if answer.ttl() > 0 => self.renewed = sent,
                _ => return Err(ElectionError::LeaseLost),
            }
            self.observe(&value, &put).await?;
        }
    }

    /// Campaigns when nobody leads, checks the term when this controller leads, and reads
    /// the leader and the members.
    async fn observe(&mut self, value: &[u8], put: &PutOptions) -> Result<(), ElectionError> {
        let mut kv = self.client.kv_client();
        let txn = EtcdTxn::new()
            .when([EtcdCompare::create_revision(
                LEADER_KEY,
                CompareOp::Equal,
                0,
            )])
            .and_then([TxnOp::put(LEADER_KEY, value.to_vec(), Some(put.clone()))])
            .or_else([TxnOp::get(LEADER_KEY, None)]);
        let answer = timed(kv.txn(txn)).await?;
        let (leader, term) = if answer.succeeded() {
            let term = answer.header().map_or(0, |h| h.revision());
            self.leadership.elections.inc();
            tracing::info!(term, "this controller leads now");
            (Some(self.leadership.me.clone()), Some(term))
        } else {
            let held = answer.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Get(g) => g.kvs().first().cloned(),
                _ => None,
            });
            match held {
                Some(kv) => {
                    let member = serde_json::from_slice::<Member>(kv.value()).ok();
                    let mine = kv.lease() == self.lease;
                    (member, mine.then(|| kv.mod_revision()))
                }
                None => (None, None),
            }
        };
        let members = timed(kv.get(MEMBERS_PREFIX, Some(GetOptions::new().with_prefix()))).await?;
        let mut controllers: Vec<String> = members
            .kvs()
            .iter()
            .filter_map(|kv| serde_json::from_slice::<Member>(kv.value()).ok())
            .map(|m| m.address)
            .collect();
        controllers.sort();
        controllers.dedup();
        let was = self.leadership.view().term;
        if was.is_some() && term != was {
            tracing::warn!(term = ?was, "the leader key changed hands: stepping down");
        }
        self.leadership.set(|v| {
            v.leader = leader;
            v.term = term;
            v.controllers = controllers;
        });
        Ok(())
    }

    /// Gives leadership and membership up at once (the lease goes with them).
    async fn resign(&mut self, member_key: &str) {
        let term = self.leadership.view().term;
        self.leadership.set(|v| v.term = None);
        let mut kv = self.client.kv_client();
        if let Some(term) = term {
            let txn = EtcdTxn::new()
                .when([EtcdCompare::mod_revision(
                    LEADER_KEY,
                    CompareOp::Equal,
                    term,
                )])
                .and_then([TxnOp::delete(LEADER_KEY, None)]);
            if let Err(e) = timed(kv.txn(txn)).await {
                tracing::warn!(error = %e, "cannot give the leader key up; it expires with the lease");
            }
        }
        let _ = timed(kv.delete(member_key, None)).await;
        let _ = timed(self.client.lease_client().revoke(self.lease)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::embedded::EmbeddedStore;

    #[tokio::test]
    async fn a_deposed_leaders_write_is_refused_and_lands_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(EmbeddedStore::open(&dir.path().join("state.redb")).unwrap());
        let term = store.put(LEADER_KEY, b"a".to_vec()).await.unwrap();
        let a = Leadership::elected("http://a");
        a.set(|v| v.term = Some(term));
        let fenced = a.fence(store.clone());
        assert!(
            fenced
                .txn(Txn::new().put("/k", "1"))
                .await
                .unwrap()
                .succeeded
        );
        // Another controller takes the key over (A's lease expired while it was frozen).
        store.put(LEADER_KEY, b"b".to_vec()).await.unwrap();
        let before = store.revision().await.unwrap();
        assert!(matches!(
            fenced.txn(Txn::new().put("/k", "2")).await,
            Err(StoreError::NotLeader)
        ));
        assert_eq!(store.revision().await.unwrap(), before, "nothing written");
        assert_eq!(store.get("/k").await.unwrap().unwrap().value, b"1");
        assert!(!a.is_leader(), "a refused write ends the term");
        assert!(matches!(
            fenced.txn(Txn::new().put("/k", "3")).await,
            Err(StoreError::NotLeader)
        ));
        assert_eq!(a.refused_writes.get(), 2);
    }

    #[tokio::test]
    async fn a_callers_own_failed_compare_is_not_a_lost_term() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(EmbeddedStore::open(&dir.path().join("state.redb")).unwrap());
        let term = store.put(LEADER_KEY, b"a".to_vec()).await.unwrap();
        let a = Leadership::elected("http://a");
        a.set(|v| v.term = Some(term));
        let fenced = a.fence(store.clone());
        let stale = Txn::new().when_mod_revision("/k", 99).put("/k", "x");
        assert!(!fenced.txn(stale).await.unwrap().succeeded);
        assert!(a.is_leader());
    }

    #[test]
    fn the_only_controller_leads_and_is_not_fenced() {
        let sole = Leadership::sole("http://127.0.0.1:7080");
        assert!(sole.is_leader());
        assert_eq!(sole.leader_elsewhere(), None);
        assert_eq!(sole.leading.get(), 1);
    }
}
