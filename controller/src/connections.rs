//! The API's accept loop: HTTP/1.1 or HTTP/2 over TLS over TCP with limits, so that a flood of
//! idle or half-open connections cannot starve heartbeats and `/healthz`.
//!
//! Every connection is TLS (tokio-rustls in front of hyper): a plain-HTTP request gets no
//! answer, the handshake fails and the connection closes. The handshake runs in the
//! connection's own task, within the header-read timeout, so a slow one never holds up accepts.
//! ALPN picks the protocol: agents and the CLI speak HTTP/1.1; a browser gets HTTP/2, so the
//! dashboard's several watch streams share one connection instead of using up the six a
//! browser opens to one host (a second tab would wait for a free one).
//!
//! Every connection gets a header-read timeout (a client that does not finish its request head
//! in time is cut off) and an idle timeout between requests. At most `max_connections` are open
//! at once; when a new one arrives at the cap, the loop closes the oldest connection that is not
//! serving a request, preferring ones that never completed a request at all (the half-open ones
//! a slowloris client keeps), so a board that just connected to send its heartbeat gets its turn.
//! The loop itself never waits for a free slot: a full listen backlog would starve everyone.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio_util::sync::CancellationToken;
use tower_service::Service;

/// Limits on the connections the API accepts.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// A request head must arrive within this long of the connection (or the last answer).
    pub header_read_timeout: Duration,
    /// A connection with no request in flight is closed after this long.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// The client's address, in every request's extensions (warp's own is private to warp's server).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// How often idle connections are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Pause after an accept error (out of file descriptors, say) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(5);
/// Most requests in flight on one HTTP/2 connection (a dashboard holds five watches).
const H2_MAX_STREAMS: u32 = 32;
/// Idle connections closed at once when accepting fails for want of descriptors.
const EVICT_ON_ACCEPT_ERROR: usize = 16;

/// The open connections, shared by the accept loop, the connection tasks and response bodies.
#[derive(Default)]
struct Registry {
    inner: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    open: HashMap<u64, Conn>,
}

struct Conn {
    /// Requests being answered (a watch counts until its stream ends).
    busy: usize,
    /// True once the connection has had a request answered.
    served: bool,
    /// When the connection last went quiet (accept time, or the end of its last answer).
    idle_since: Instant,
    close: CancellationToken,
}

impl Registry {
    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a new connection, closing the least useful idle one if the cap is reached.
    /// `None`: every open connection is serving a request; the new one is refused.
    fn admit(&self, cap: usize) -> Option<(u64, CancellationToken)> {
        let mut table = self.table();
        if table.open.len() >= cap {
            let victim = table
                .open
                .iter()
                .filter(|(_, c)| c.busy == 0)
                .min_by_key(|(_, c)| (c.served, c.idle_since))
                .map(|(id, _)| *id);
            let conn = table.open.remove(&victim?)?;
            conn.close.cancel();
        }
        let id = table.next_id;
        table.next_id += 1;
        let close = CancellationToken::new();
        table.open.insert(
            id,
            Conn {
                busy: 0,
                served: false,
                idle_since: Instant::now(),
                close: close.clone(),
            },
        );
        Some((id, close))
    }

    /// Closes the connection that has been quiet longest, to free a file descriptor.
    fn evict_oldest_idle(&self) {
        let mut table = self.table();
        let victim = table
            .open
            .iter()
            .filter(|(_, c)| c.busy == 0)
            .min_by_key(|(_, c)| (c.served, c.idle_since))
            .map(|(id, _)| *id);
        if let Some(conn) = victim.and_then(|id| table.open.remove(&id)) {
            conn.close.cancel();
        }
    }

    /// Closes every connection quiet for longer than `idle`.
    fn sweep(&self, idle: Duration) {
        let now = Instant::now();
        self.table().open.retain(|_, c| {
            let stale = c.busy == 0 && now.duration_since(c.idle_since) > idle;
            if stale {
                c.close.cancel();
            }
            !stale
        });
    }

    fn remove(&self, id: u64) {
        self.table().open.remove(&id);
    }

    fn len(&self) -> usize {
        self.table().open.len()
    }

    fn begin(self: &Arc<Self>, id: u64) -> Busy {
        if let Some(c) = self.table().open.get_mut(&id) {
            c.busy += 1;
        }
        Busy {
            registry: self.clone(),
            id,
        }
    }
}

/// Marks a connection busy from a request's head until its answer's body has been sent.
struct Busy {
    registry: Arc<Registry>,
    id: u64,
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Some(c) = self.registry.table().open.get_mut(&self.id) {
            c.busy = c.busy.saturating_sub(1);
            c.served = true;
            if c.busy == 0 {
                c.idle_since = Instant::now();
            }
        }
    }
}

/// A response body that keeps its connection marked busy while it streams.
struct Tracked<B> {
    inner: B,
    _busy: Busy,
}

impl<B: http_body::Body + Unpin> http_body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Serves `filter` on `listener` within `limits` until `shutdown` completes, then stops
/// accepting and waits for open connections to finish their requests.
pub async fn serve<F>(
    listener: tokio::net::TcpListener,
    filter: F,
    limits: Limits,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl std::future::Future<Output = ()>,
) where
    F: warp::Filter<Extract = (warp::reply::Response,), Error = warp::Rejection>
        + Clone
        + Send
        + Sync
        + 'static,
{
    let registry = Arc::new(Registry::default());
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            _ = sweep.tick() => {
                registry.sweep(limits.idle_timeout);
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of descriptors (or a connection reset before accept): make room.
                    tracing::warn!(error = %e, open = registry.len(), "accept failed");
                    for _ in 0..EVICT_ON_ACCEPT_ERROR {
                        registry.evict_oldest_idle();
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let Some((id, close)) = registry.admit(limits.max_connections) else {
            tracing::warn!(%peer, "every connection is busy; refusing a new one");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = connection_service(
            warp::service(filter.clone()),
            registry.clone(),
            id,
            PeerAddr(peer),
        );
        let watcher = graceful.watcher();
        let acceptor = acceptor.clone();
        let registry = registry.clone();
        tokio::spawn(async move {
            let serve = async {
                let handshake =
                    tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream));
                let stream = match handshake.await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
                let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
                let io = TokioIo::new(stream);
                let ended = if h2 {
                    let mut http = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                    http.timer(TokioTimer::new())
                        .max_concurrent_streams(H2_MAX_STREAMS)
                        .keep_alive_interval(Some(limits.idle_timeout));
                    watcher.watch(http.serve_connection(io, service)).await
                } else {
                    let mut http = hyper::server::conn::http1::Builder::new();
                    http.timer(TokioTimer::new())
                        .header_read_timeout(limits.header_read_timeout)
                        .keep_alive(true);
                    watcher.watch(http.serve_connection(io, service)).await
                };
                if let Err(e) = ended {
                    tracing::debug!(%peer, error = %e, "connection ended");
                }
            };
            tokio::select! {
                () = serve => {}
                () = close.cancelled() => tracing::debug!(%peer, "connection closed by the limits"),
            }
            registry.remove(id);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Wraps warp's service so each request marks its connection busy until its answer is sent.
fn connection_service<S, B>(
    service: S,
    registry: Arc<Registry>,
    id: u64,
    peer: PeerAddr,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<Tracked<B>>,
    Error = Infallible,
    Future = impl std::future::Future<Output = Result<http::Response<Tracked<B>>, Infallible>>
                 + Send
                 + 'static,
> + Clone
where
    S: Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<B>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: http_body::Body + Unpin + Send + 'static,
{
    hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(peer);
        let busy = registry.begin(id);
        let mut service = service.clone();
        async move {
            let response = service.call(req).await?;
            Ok(response.map(|inner| Tracked { inner, _busy: busy }))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_cap_the_oldest_half_open_connection_goes_first() {
        let registry = Arc::new(Registry::default());
        let (served, served_close) = registry.admit(3).expect("room");
        drop(registry.begin(served)); // answered one request, now idle
        let (_, oldest_close) = registry.admit(3).expect("room");
        let (busy, busy_close) = registry.admit(3).expect("room");
        let _working = registry.begin(busy);
        let (_, newest_close) = registry.admit(3).expect("a half-open one makes room");
        assert!(
            oldest_close.is_cancelled(),
            "the oldest half-open one is closed"
        );
        assert!(!served_close.is_cancelled() && !busy_close.is_cancelled());
        assert!(!newest_close.is_cancelled());
        assert_eq!(registry.len(), 3);
    }

    #[test]
    fn a_busy_connection_is_never_closed_to_make_room() {
        let registry = Arc::new(Registry::default());
        let (a, a_close) = registry.admit(1).expect("room");
        let working = registry.begin(a);
        assert!(
            registry.admit(1).is_none(),
            "refused rather than cutting a request"
        );
        assert!(!a_close.is_cancelled());
        drop(working);
        assert!(registry.admit(1).is_some(), "idle now, so it makes room");
        assert!(a_close.is_cancelled());
    }

    #[test]
    fn sweep_closes_only_idle_connections() {
        let registry = Arc::new(Registry::default());
        let (_, idle_close) = registry.admit(8).expect("room");
        let (busy, busy_close) = registry.admit(8).expect("room");
        let _working = registry.begin(busy);
        registry.sweep(Duration::ZERO);
        std::thread::sleep(Duration::from_millis(2));
        registry.sweep(Duration::ZERO);
        assert!(idle_close.is_cancelled());
        assert!(!busy_close.is_cancelled());
        assert_eq!(registry.len(), 1);
    }
}
