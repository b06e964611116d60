//! The simulation's TLS connector: hyper's TCP connector, then a rustls handshake trusting the
//! cluster CA (as a board's agent does), for the shared pooled client in [`super::http`].

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Connects `https://` URIs through TLS with one client config.
#[derive(Clone)]
pub struct TlsConnector {
    http: HttpConnector,
    tls: tokio_rustls::TlsConnector,
}

impl TlsConnector {
    /// A connector over `http` (its timeouts and `nodelay` apply) trusting what `config` trusts.
    pub fn new(mut http: HttpConnector, config: Arc<rustls::ClientConfig>) -> TlsConnector {
        http.enforce_http(false);
        TlsConnector {
            http,
            tls: tokio_rustls::TlsConnector::from(config),
        }
    }
}

impl tower_service::Service<Uri> for TlsConnector {
    type Response = Tls;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Tls, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let host = uri
            .host()
            .unwrap_or_default()
            .trim_matches(|c| c == '[' || c == ']')
            .to_string();
        let connect = self.http.call(uri);
        let tls = self.tls.clone();
        Box::pin(async move {
            let name = ServerName::try_from(host.clone())
                .map_err(|e| format!("{host:?} is not a server name for TLS: {e}"))?;
            let tcp: TcpStream = connect.await?.into_inner();
            let stream = tls.connect(name, tcp).await?;
            Ok(Tls(TokioIo::new(stream)))
        })
    }
}

/// One TLS connection to the controller.
pub struct Tls(TokioIo<TlsStream<TcpStream>>);

impl Connection for Tls {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl Read for Tls {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl Write for Tls {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
