//! Trusting the controller: the cluster CA pinned from the join token, like k3s.
//!
//! On its first start a board knows only the join token, `K10<sha256 of the CA>::<secret>`.
//! It opens a TLS connection and accepts the controller only if the certificate chain it is
//! shown holds a CA whose hash is the token's and that CA signed the server's certificate for
//! the address dialled; all of this happens inside the handshake, before a single byte of a
//! request (let alone the secret) is sent. The CA is then kept in the data dir and every later
//! connection trusts it alone.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use sha2::Digest;

use super::Config;

/// The pinned cluster CA (DER) inside the agent's data dir.
pub const CA_FILE: &str = "cluster-ca.der";

/// When this agent was built (seconds since the epoch); a clock before it is surely wrong.
pub const BUILD_EPOCH: &str = env!("TEXU_BUILD_EPOCH");

/// Why the agent does not trust the controller, or cannot yet.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("the join token cannot be used: {0}")]
    Token(#[source] texu_api::JoinTokenError),
    #[error("the controller at {server} shows a CA whose hash is not the join token's: a man in the middle, or a join token from another cluster (or from before the controller's CA was made again). Nothing secret was sent. Hashes presented: {presented}")]
    CaMismatch { server: String, presented: String },
    #[error("this board's clock says {now}, before this texu binary was built ({built}): the clock is wrong (a board without a clock battery before NTP answered?); set the time, then start the agent again")]
    ClockBeforeBuild { now: String, built: String },
    #[error("the controller's certificate is {why} by this board's clock ({now}): check the clock (NTP) before anything else")]
    ClockOutsideValidity { why: &'static str, now: String },
    #[error("the controller URL {server} is not https://: the controller speaks only TLS")]
    NotHttps { server: String },
    #[error("this node has no pinned CA ({path}) and no join token to pin one from")]
    NoJoinToken { path: PathBuf },
    #[error("cannot use the pinned CA {path}: {source}")]
    PinFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the pinned CA {path} is not a certificate the TLS library accepts")]
    BadPin { path: PathBuf },
}

/// The rustls settings for talking to a controller whose CA is `ca` (DER), and only that CA.
pub fn pinned_config(ca: &CertificateDer<'static>) -> Option<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).ok()?;
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Some(Arc::new(config))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The TLS settings for this agent: the CA pinned in the data dir, or, on the first start, the
/// CA the join token names, fetched, checked and pinned now. Retries while the controller
/// cannot be reached; any other failure is final.
pub async fn tls_for(config: &Config) -> Result<Arc<rustls::ClientConfig>, TrustError> {
    // `--server` may list several controllers, comma separated: all share the cluster CA.
    let servers: Vec<String> = config
        .server
        .split(',')
        .map(|s| s.trim().trim_end_matches('/').to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if let Some(plain) = servers.iter().find(|s| !s.starts_with("https://")) {
        return Err(TrustError::NotHttps {
            server: plain.clone(),
        });
    }
    let path = config.data_dir.join(CA_FILE);
    match std::fs::read(&path) {
        Ok(der) => {
            let der = CertificateDer::from(der);
            return pinned_config(&der).ok_or(TrustError::BadPin { path });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(TrustError::PinFile { path, source }),
    }
    let token = config
        .join_token
        .as_ref()
        .and_then(super::JoinToken::get)
        .ok_or_else(|| TrustError::NoJoinToken { path: path.clone() })?;
    let want = texu_api::parse_join_token(&token.0)
        .map_err(TrustError::Token)?
        .ca_hash;
    check_clock(SystemTime::now())?;
    let mut backoff = Duration::from_millis(200);
    let mut attempt = 0usize;
    loop {
        attempt = attempt.wrapping_add(1);
        let server = servers
            .get(attempt % servers.len().max(1))
            .cloned()
            .unwrap_or_default();
        let dial = server.clone();
        let fetched = tokio::task::spawn_blocking(move || fetch_ca(&dial, want))
            .await
            .unwrap_or_else(|e| Err(Fetch::Unreachable(format!("CA fetch task failed: {e}"))));
        match fetched {
            Ok(der) => {
                pin(&path, &der)?;
                tracing::info!(path = %path.display(), "pinned the cluster CA from the join token");
                return pinned_config(&der).ok_or(TrustError::BadPin { path });
            }
            Err(Fetch::Refused(e)) => return Err(e),
            Err(Fetch::Unreachable(message)) => {
                tracing::warn!(%server, %message, "cannot reach the controller to check its CA; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// A clock before the build date is wrong, and TLS would fail for reasons that do not say so.
pub fn check_clock(now: SystemTime) -> Result<(), TrustError> {
    let built: u64 = BUILD_EPOCH.parse().unwrap_or(0);
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    if secs < built {
        return Err(TrustError::ClockBeforeBuild {
            now: since_epoch(now),
            built: since_epoch(UNIX_EPOCH + Duration::from_secs(built)),
        });
    }
    Ok(())
}

/// A time as seconds and days since 1970 (no calendar code in the agent).
fn since_epoch(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    format!("{secs} s after 1970-01-01, day {}", secs / 86_400)
}

fn pin(path: &Path, der: &CertificateDer<'static>) -> Result<(), TrustError> {
    let err = |source| TrustError::PinFile {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, der.as_ref()).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

enum Fetch {
    Refused(TrustError),
    Unreachable(String),
}

/// Connects to `server`, accepting only a chain with the CA `want` hashes to, and reads
/// `/healthz` (no credential); returns that CA.
fn fetch_ca(server: &str, want: [u8; 32]) -> Result<CertificateDer<'static>, Fetch> {
    let verifier = Arc::new(PinByHash {
        want,
        provider: provider(),
        seen: Mutex::new(Seen::Nothing),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Fetch::Unreachable(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(3))
        .timeout(Duration::from_secs(10))
        .tls_config(Arc::new(config))
        .build();
    let result = agent
        .get(&format!("{}/healthz", server.trim_end_matches('/')))
        .call();
    let seen = std::mem::replace(
        &mut *verifier.seen.lock().unwrap_or_else(PoisonError::into_inner),
        Seen::Nothing,
    );
    match (seen, result) {
        (Seen::Mismatch(presented), _) => Err(Fetch::Refused(TrustError::CaMismatch {
            server: server.to_string(),
            presented,
        })),
        (Seen::Clock(why), _) => Err(Fetch::Refused(TrustError::ClockOutsideValidity {
            why,
            now: since_epoch(SystemTime::now()),
        })),
        (Seen::Matched(der), Ok(_)) => Ok(der),
        (_, Ok(_)) => Err(Fetch::Unreachable("the handshake did not show a CA".into())),
        (_, Err(e)) => Err(Fetch::Unreachable(e.to_string())),
    }
}

/// What the verifier saw in the handshake.
#[derive(Debug)]
enum Seen {
    Nothing,
    Matched(CertificateDer<'static>),
    /// Hex hashes of the certificates presented, none of them the token's.
    Mismatch(String),
    Clock(&'static str),
}

/// Accepts a server whose chain holds the CA with hash `want`, verified as the only root.
#[derive(Debug)]
struct PinByHash {
    want: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
    seen: Mutex<Seen>,
}

impl PinByHash {
    fn record(&self, seen: Seen) {
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) = seen;
    }
}

impl ServerCertVerifier for PinByHash {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let hash = |c: &CertificateDer<'_>| -> [u8; 32] { sha2::Sha256::digest(c.as_ref()).into() };
        let Some(ca) = intermediates.iter().find(|c| hash(c) == self.want) else {
            let presented = std::iter::once(end_entity)
                .chain(intermediates)
                .map(|c| hex(&hash(c)))
                .collect::<Vec<_>>()
                .join(", ");
            self.record(Seen::Mismatch(presented));
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        };
        let ca = ca.clone().into_owned();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(ca.clone())
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Ok(verified) => {
                self.record(Seen::Matched(ca));
                Ok(verified)
            }
            Err(e) => {
                if let rustls::Error::InvalidCertificate(
                    CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
                ) = e
                {
                    self.record(Seen::Clock("not valid yet"));
                } else if let rustls::Error::InvalidCertificate(
                    CertificateError::Expired | CertificateError::ExpiredContext { .. },
                ) = e
                {
                    self.record(Seen::Clock("expired"));
                }
                Err(e)
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_before_the_build_is_named_as_such() {
        let built: u64 = BUILD_EPOCH.parse().unwrap();
        assert!(built > 1_700_000_000, "the build date is recorded");
        let err = check_clock(UNIX_EPOCH + Duration::from_secs(86_400)).unwrap_err();
        assert!(matches!(err, TrustError::ClockBeforeBuild { .. }));
        assert!(err.to_string().contains("clock is wrong"), "{err}");
        check_clock(SystemTime::now()).expect("today is after the build");
    }
}
