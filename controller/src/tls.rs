//! The cluster's certificates: a CA made on first start and kept in the data dir for years, and
//! the controller's server certificate, signed by it, naming every address the controller
//! listens on and its hostname, renewed well before it expires (or when its addresses change).
//!
//! Validity starts a year in the past: boards without a clock battery boot with a date that
//! lags, and a certificate "not valid yet" would lock them out until NTP answers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use sha2::Digest;
use time::OffsetDateTime;

/// The cluster CA's certificate (PEM) inside the data dir: what clients and Prometheus trust.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The cluster CA's private key (PEM, mode 0600).
pub const CA_KEY_FILE: &str = "ca.key";
/// The controller's current server certificate (PEM), for reference.
pub const SERVER_CERT_FILE: &str = "server.pem";
/// The controller's current server key (PEM, mode 0600).
pub const SERVER_KEY_FILE: &str = "server.key";

/// How long the CA is valid from its creation.
const CA_LIFETIME: time::Duration = time::Duration::days(3650);
/// How long a server certificate is valid from its issue.
const SERVER_LIFETIME: time::Duration = time::Duration::days(365);
/// How far in the past validity starts (boards whose clock lags).
const BACKDATE: time::Duration = time::Duration::days(365);
/// A server certificate is renewed when less than this is left.
const RENEW_BEFORE: time::Duration = time::Duration::days(30);
/// How often the renewal loop looks at the certificate and the addresses.
pub const RENEW_CHECK_EVERY: Duration = Duration::from_secs(600);
/// The CA's common name; it is rebuilt from this to sign with a stored key.
const CA_NAME: &str = "texu cluster CA";

/// What can go wrong making or loading the cluster's certificates.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a usable key or certificate: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: rcgen::Error,
    },
    #[error("{path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("cannot make a certificate: {0}")]
    Generate(#[source] rcgen::Error),
    #[error("the TLS library refused the server key or settings: {0}")]
    Rustls(#[source] rustls::Error),
}

/// A result of this module.
pub type Result<T, E = TlsError> = std::result::Result<T, E>;

/// The cluster CA: its certificate as stored (what clients pin) and what signs with it.
struct Ca {
    key: KeyPair,
    /// Rebuilt from the stored key and [`CA_NAME`]: signing needs only its name and key.
    issuer: Certificate,
    der: CertificateDer<'static>,
    pem: String,
}

/// The controller's TLS material; serves the current server certificate to every handshake.
pub struct Tls {
    ca: Ca,
    data_dir: PathBuf,
    listen: SocketAddr,
    current: RwLock<Issued>,
}

#[derive(Clone)]
struct Issued {
    key: Arc<CertifiedKey>,
    names: Vec<SanType>,
    not_after: OffsetDateTime,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("ca_hash", &self.ca_hash())
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Loads the CA from `data_dir` (making it on first start) and issues a server certificate
    /// for the addresses behind `listen`.
    pub fn load_or_create(data_dir: &Path, listen: SocketAddr) -> Result<Arc<Tls>> {
        let ca = load_or_create_ca(data_dir)?;
        let issued = issue(
            &ca,
            data_dir,
            server_names(listen),
            OffsetDateTime::now_utc(),
        )?;
        Ok(Arc::new(Tls {
            ca,
            data_dir: data_dir.to_path_buf(),
            listen,
            current: RwLock::new(issued),
        }))
    }

    /// The hex SHA-256 of the CA certificate's DER: what a join token carries.
    pub fn ca_hash(&self) -> String {
        ca_hash(&self.ca.der)
    }

    /// The CA certificate in PEM, for client configs.
    pub fn ca_pem(&self) -> &str {
        &self.ca.pem
    }

    /// The CA certificate's DER.
    pub fn ca_der(&self) -> &CertificateDer<'static> {
        &self.ca.der
    }

    /// When the server certificate in use expires.
    pub fn server_not_after(&self) -> OffsetDateTime {
        self.issued().not_after
    }

    /// The rustls settings for the API: HTTP/2 for clients that offer it (browsers), else
    /// HTTP/1.1; the current certificate on every handshake.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Rustls)?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// Issues a new server certificate when the current one nears its end or the addresses
    /// behind the listen address changed; true when it did.
    pub fn renew_if_due(&self, now: OffsetDateTime) -> Result<bool> {
        let names = server_names(self.listen);
        let current = self.issued();
        if !needs_renewal(current.not_after, &current.names, &names, now) {
            return Ok(false);
        }
        let issued = issue(&self.ca, &self.data_dir, names, now)?;
        tracing::info!(not_after = %issued.not_after, "renewed the server certificate");
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = issued;
        Ok(true)
    }

    /// Checks for renewal every [`RENEW_CHECK_EVERY`] until `stop` flips.
    pub async fn renew_loop(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(RENEW_CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                return;
            }
            if let Err(e) = self.renew_if_due(OffsetDateTime::now_utc()) {
                tracing::error!(error = %e, "cannot renew the server certificate; retrying");
            }
        }
    }

    fn issued(&self) -> Issued {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl rustls::server::ResolvesServerCert for Tls {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.issued().key)
    }
}

/// The hex SHA-256 of a certificate's DER.
pub fn ca_hash(der: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(der))
}

/// True when a certificate valid until `not_after` for `had` should be replaced now.
fn needs_renewal(
    not_after: OffsetDateTime,
    had: &[SanType],
    want: &[SanType],
    now: OffsetDateTime,
) -> bool {
    not_after - now < RENEW_BEFORE || want.iter().any(|n| !had.contains(n))
}

fn ca_params(now: OffsetDateTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, CA_NAME);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = now - BACKDATE;
    params.not_after = now + CA_LIFETIME;
    params
}

fn load_or_create_ca(dir: &Path) -> Result<Ca> {
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    let now = OffsetDateTime::now_utc();
    let (key, pem) = match std::fs::read_to_string(&key_path) {
        Ok(key_pem) => {
            let key = KeyPair::from_pem(&key_pem).map_err(|source| TlsError::Parse {
                path: key_path.clone(),
                source,
            })?;
            let pem = std::fs::read_to_string(&cert_path).map_err(|source| TlsError::Read {
                path: cert_path.clone(),
                source,
            })?;
            (key, pem)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = KeyPair::generate().map_err(TlsError::Generate)?;
            let cert = ca_params(now)
                .self_signed(&key)
                .map_err(TlsError::Generate)?;
            write_private(&key_path, &key.serialize_pem())?;
            write_public(&cert_path, &cert.pem())?;
            tracing::info!(path = %cert_path.display(), "made the cluster CA");
            (key, cert.pem())
        }
        Err(source) => {
            return Err(TlsError::Read {
                path: key_path,
                source,
            })
        }
    };
    let der = first_certificate(&pem).ok_or(TlsError::NoCertificate { path: cert_path })?;
    let issuer = ca_params(now)
        .self_signed(&key)
        .map_err(TlsError::Generate)?;
    Ok(Ca {
        key,
        issuer,
        der,
        pem,
    })
}

/// The SHA-256 of the CA's public key (SubjectPublicKeyInfo DER) kept in `data_dir`: what a
/// browser pins with `--ignore-certificate-errors-spki-list`.
pub fn ca_spki_sha256(data_dir: &Path) -> Option<[u8; 32]> {
    let pem = std::fs::read_to_string(data_dir.join(CA_KEY_FILE)).ok()?;
    let key = KeyPair::from_pem(&pem).ok()?;
    Some(sha2::Sha256::digest(key.public_key_der()).into())
}

/// The first certificate in a PEM text.
pub fn first_certificate(pem: &str) -> Option<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes()).next()?.ok()
}

/// Issues a server certificate for `names`, writes it to the data dir, and makes it servable.
fn issue(ca: &Ca, dir: &Path, names: Vec<SanType>, now: OffsetDateTime) -> Result<Issued> {
    let key = KeyPair::generate().map_err(TlsError::Generate)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "texu controller");
    params.distinguished_name = dn;
    params.subject_alt_names = names.clone();
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - BACKDATE;
    params.not_after = now + SERVER_LIFETIME;
    let not_after = params.not_after;
    let cert = params
        .signed_by(&key, &ca.issuer, &ca.key)
        .map_err(TlsError::Generate)?;
    write_private(&dir.join(SERVER_KEY_FILE), &key.serialize_pem())?;
    write_public(&dir.join(SERVER_CERT_FILE), &cert.pem())?;
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing =
        rustls::crypto::ring::sign::any_supported_type(&private).map_err(TlsError::Rustls)?;
    let chain = vec![cert.der().clone(), ca.der.clone()];
    Ok(Issued {
        key: Arc::new(CertifiedKey::new(chain, signing)),
        names,
        not_after,
    })
}

/// The names a server certificate for `listen` carries: the address itself (every interface's
/// address when it is unspecified), loopback, `localhost` and the hostname.
pub fn server_names(listen: SocketAddr) -> Vec<SanType> {
    let mut ips: Vec<IpAddr> = vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()];
    if listen.ip().is_unspecified() {
        ips.extend(interface_addresses());
    } else {
        ips.push(listen.ip());
    }
    ips.sort();
    ips.dedup();
    let mut names: Vec<SanType> = ips.into_iter().map(SanType::IpAddress).collect();
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    for dns in ["localhost", hostname.trim()] {
        if let Ok(name) = dns.try_into() {
            let san = SanType::DnsName(name);
            if !dns.is_empty() && !names.contains(&san) {
                names.push(san);
            }
        }
    }
    names
}

fn interface_addresses() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter_map(|a| a.address)
        .filter_map(|a| {
            if let Some(v4) = a.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .collect()
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    crate::auth::write_secret_file(path, text).map_err(|source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a certificate readable by everyone (Prometheus, the CLI of another user).
fn write_public(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(err)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// A rustls client config trusting only the CA certificates in `pem` (a bundle may hold several).
pub fn client_config(pem: &str) -> Option<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        roots.add(cert.ok()?).ok()?;
    }
    if roots.is_empty() {
        return None;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Some(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{ServerName, UnixTime};

    fn verify(tls: &Tls, name: &str, at: OffsetDateTime) -> std::result::Result<(), rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(tls.ca_der().clone()).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let key = tls.issued().key;
        let when = UnixTime::since_unix_epoch(Duration::from_secs(at.unix_timestamp() as u64));
        verifier
            .verify_server_cert(
                &key.cert[0],
                &key.cert[1..],
                &ServerName::try_from(name.to_string()).unwrap(),
                &[],
                when,
            )
            .map(|_| ())
    }

    #[test]
    fn the_ca_is_kept_and_the_server_certificate_verifies_against_it() {
        let dir = tempfile::tempdir().unwrap();
        let listen: SocketAddr = "198.18.7.1:7080".parse().unwrap();
        let first = Tls::load_or_create(dir.path(), listen).unwrap();
        let again = Tls::load_or_create(dir.path(), listen).unwrap();
        assert_eq!(
            first.ca_hash(),
            again.ca_hash(),
            "the CA survives a restart"
        );
        let now = OffsetDateTime::now_utc();
        verify(&again, "198.18.7.1", now).expect("the listen address is named");
        verify(&again, "127.0.0.1", now).expect("loopback is named");
        verify(&again, "localhost", now).expect("localhost is named");
        assert!(
            verify(&again, "198.18.7.2", now).is_err(),
            "another address"
        );
        // A board whose clock lags by months still accepts it.
        verify(&again, "198.18.7.1", now - time::Duration::days(200)).expect("backdated");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(CA_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_certificate_near_its_end_is_renewed_and_the_new_one_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let tls = Tls::load_or_create(dir.path(), "127.0.0.1:0".parse().unwrap()).unwrap();
        let now = OffsetDateTime::now_utc();
        assert!(!tls.renew_if_due(now).unwrap(), "fresh: nothing to do");
        let old_end = tls.server_not_after();
        let later = old_end - time::Duration::days(10);
        assert!(tls.renew_if_due(later).unwrap(), "ten days left: renewed");
        assert!(tls.server_not_after() > old_end);
        verify(&tls, "127.0.0.1", later).expect("the renewed one verifies");
        assert!(
            verify(&tls, "127.0.0.1", old_end + time::Duration::days(1)).is_ok(),
            "valid past the old one's end"
        );
    }

    #[test]
    fn new_addresses_ask_for_a_new_certificate() {
        let a = server_names("198.18.0.1:1".parse().unwrap());
        let b = server_names("198.18.0.2:1".parse().unwrap());
        let now = OffsetDateTime::now_utc();
        let end = now + SERVER_LIFETIME;
        assert!(!needs_renewal(end, &a, &a, now));
        assert!(needs_renewal(end, &a, &b, now));
    }
}
