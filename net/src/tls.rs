//! TLS with rustls for the client and peer ports: turns detcd-core's `TlsPlan` into rustls
//! configurations. Certificates are checked at start-up (errors name the file), re-read from
//! disk for new connections when the files change (rotation without restart), and generated
//! for auto TLS (`<data-dir>/fixtures/{client,peer}/{cert,key}.pem`, reused when present).
//! Not compiled under madsim: the simulated node takes the same decisions and speaks plaintext.

use detcd_core::tls::{
    Allowed, CertSource, ClientAuth, PeerVerify, ServerTls, TlsPlan, TlsVersion, TlsVersions,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// A start-up TLS problem, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsSetupError(pub String);

fn err(s: impl Into<String>) -> TlsSetupError {
    TlsSetupError(s.into())
}

/// The member's TLS, ready to use.
pub struct Tls {
    pub client: Option<TlsAcceptor>,
    pub peer: Option<TlsAcceptor>,
    /// For dialing `https://` peers.
    pub peer_dial: Arc<ClientConfig>,
    /// Every file above that is re-read when it changes (dialers refresh them first).
    pub files: TlsFiles,
}

/// A TLS file (a certificate and key, CA certificates, a CRL) cached in memory and re-read
/// when it changes. The checks inside a handshake read only the cache.
trait Reload: Send + Sync {
    /// Re-reads the file if its modification time changed. Disk I/O: not on an async worker.
    fn refresh(&self);
}

/// The reloading TLS files of a member. [`TlsFiles::refresh`] runs before every handshake,
/// so a new connection sees the files as they are (etcd re-reads them for every connection)
/// while the disk is touched on a blocking thread, never on an async worker.
#[derive(Clone, Default)]
pub struct TlsFiles(Arc<Vec<Arc<dyn Reload>>>);

impl TlsFiles {
    /// Looks at every file (a `stat` each; a read of those that changed) off the async
    /// workers, and waits for that.
    pub async fn refresh(&self) {
        if self.0.is_empty() {
            return;
        }
        let files = self.0.clone();
        let _ = tokio::task::spawn_blocking(move || files.iter().for_each(|f| f.refresh())).await;
    }
}

fn provider(cipher_suites: &[String]) -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    if !cipher_suites.is_empty() {
        let wanted: Vec<String> = cipher_suites
            .iter()
            .map(|n| {
                if n.ends_with("CHACHA20_POLY1305") {
                    format!("{n}_SHA256")
                } else {
                    n.clone()
                }
            })
            .collect();
        p.cipher_suites.retain(|s| match s {
            rustls::SupportedCipherSuite::Tls13(_) => true,
            _ => wanted.contains(&format!("{:?}", s.suite())),
        });
    }
    Arc::new(p)
}

/// TLS 1.2 is the minimum (rustls implements nothing older).
const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The rustls versions of `--tls-min-version`/`--tls-max-version` (etcd 3.5 sets them on the
/// client and peer listeners and on the peer dialer alike).
fn protocol_versions(v: &TlsVersions) -> Vec<&'static rustls::SupportedProtocolVersion> {
    v.enabled()
        .into_iter()
        .map(|v| match v {
            TlsVersion::Tls12 => &rustls::version::TLS12,
            TlsVersion::Tls13 => &rustls::version::TLS13,
        })
        .collect()
}

impl Tls {
    /// Generates auto-TLS certificates, loads and checks every file of `plan`.
    pub fn setup(plan: &TlsPlan) -> Result<Tls, TlsSetupError> {
        let provider = provider(&plan.cipher_suites);
        for w in &plan.warnings {
            tracing::warn!("{w}");
        }
        let mut files: Vec<Arc<dyn Reload>> = Vec::new();
        let mut peer_cert = None;
        let client = match &plan.client {
            Some(s) => Some(
                server_acceptor(
                    s,
                    &provider,
                    &plan.versions,
                    &[b"h2".to_vec(), b"http/1.1".to_vec()],
                    "client",
                    &mut files,
                )?
                .0,
            ),
            None => None,
        };
        let peer = match &plan.peer {
            Some(s) => {
                let (acceptor, cert) = server_acceptor(
                    s,
                    &provider,
                    &plan.versions,
                    &[b"h2".to_vec()],
                    "peer",
                    &mut files,
                )?;
                peer_cert = Some(cert);
                Some(acceptor)
            }
            None => None,
        };
        if peer_cert.is_none() {
            if let Some(src) = &plan.peer_dial.cert {
                let cert = Arc::new(ReloadingCert::open(src, &provider)?);
                files.push(cert.clone());
                peer_cert = Some(cert);
            }
        }
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&protocol_versions(&plan.versions))
            .map_err(|e| err(format!("TLS configuration: {e}")))?;
        let builder = match &plan.peer_dial.verify {
            PeerVerify::Ca(ca) => {
                let p = provider.clone();
                let inner = Arc::new(CaReloader::new(
                    ca,
                    "--peer-trusted-ca-file",
                    Box::new(move |roots| {
                        rustls::client::WebPkiServerVerifier::builder_with_provider(
                            Arc::new(roots),
                            p.clone(),
                        )
                        .build()
                        .map(|v| v as Arc<dyn ServerCertVerifier>)
                        .map_err(|e| e.to_string())
                    }),
                )?);
                files.push(inner.clone());
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(PeerServerVerifier(
                        inner,
                        plan.peer_dial.allowed.clone(),
                    )))
            }
            PeerVerify::SkipVerify => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(SkipVerify(provider.clone()))),
            PeerVerify::Unconfigured => builder.with_root_certificates(RootCertStore::empty()),
            PeerVerify::SystemRoots { .. } => builder.with_root_certificates(system_roots()?),
        };
        let mut dial = match peer_cert {
            Some(c) => builder.with_client_cert_resolver(c),
            None => builder.with_no_client_auth(),
        };
        dial.alpn_protocols = vec![b"h2".to_vec()];
        // Full handshakes only (Go's etcd sets no ClientSessionCache): a rotated peer
        // certificate is presented on the next connection.
        dial.resumption = rustls::client::Resumption::disabled();
        let files = TlsFiles(Arc::new(files));
        let with_files = |a: Option<TlsAcceptor>| {
            a.map(|a| TlsAcceptor {
                files: files.clone(),
                ..a
            })
        };
        Ok(Tls {
            client: with_files(client),
            peer: with_files(peer),
            peer_dial: Arc::new(dial),
            files,
        })
    }
}

/// A TLS client configuration verifying servers against the system's CA certificates (what
/// etcd's discovery client uses for an https `--discovery` URL).
pub fn system_client_config() -> Result<Arc<ClientConfig>, TlsSetupError> {
    let config = ClientConfig::builder_with_provider(provider(&[]))
        .with_protocol_versions(VERSIONS)
        .map_err(|e| err(format!("TLS configuration: {e}")))?
        .with_root_certificates(system_roots()?)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The TLS client configuration of etcd 3.6's v3 discovery client: the discovery service is
/// verified against `--discovery-cacert` (else the system's CA certificates), or not at all
/// with `--discovery-insecure-skip-tls-verify`; `--discovery-cert`/`--discovery-key` are
/// presented when the server asks (read once: discovery runs at start-up). ALPN `h2`, as gRPC needs.
pub fn discovery_client_config(
    cacert: &str,
    cert: &str,
    key: &str,
    skip_verify: bool,
) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let provider = provider(&[]);
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| err(format!("TLS configuration: {e}")))?;
    let builder = if skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SkipVerify(provider.clone())))
    } else if !cacert.is_empty() {
        builder.with_root_certificates(load_roots(cacert, "--discovery-cacert")?)
    } else {
        builder.with_root_certificates(system_roots().map_err(|_| {
            err(
                "no system CA certificates found to verify the discovery service with; \
                 give --discovery-cacert (or set SSL_CERT_FILE)",
            )
        })?)
    };
    let mut config = match (cert.is_empty(), key.is_empty()) {
        (true, true) => builder.with_no_client_auth(),
        (false, false) => {
            let src = CertSource::Files {
                cert: cert.to_string(),
                key: key.to_string(),
            };
            builder.with_client_cert_resolver(Arc::new(ReloadingCert::open(&src, &provider)?))
        }
        // Go's TLSInfo.baseConfig wording (etcd 3.6 would ignore the lone file).
        _ => {
            return Err(err(format!(
                "--discovery-key and --discovery-cert must both be present [key: {key:?}, cert: {cert:?}]"
            )))
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The system's CA certificates (rustls-native-certs: `SSL_CERT_FILE`, `SSL_CERT_DIR`, else the
/// platform's store), as Go's crypto/x509 finds them for etcd.
fn system_roots() -> Result<RootCertStore, TlsSetupError> {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!("reading the system's CA certificates: {e}");
    }
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(err(
            "no system CA certificates found to verify peers with (--discovery-srv over https \
             without --peer-trusted-ca-file uses them; set SSL_CERT_FILE or give --peer-trusted-ca-file)",
        ));
    }
    Ok(roots)
}

fn server_acceptor(
    s: &ServerTls,
    provider: &Arc<CryptoProvider>,
    versions: &TlsVersions,
    alpn: &[Vec<u8>],
    side: &'static str,
    files: &mut Vec<Arc<dyn Reload>>,
) -> Result<(TlsAcceptor, Arc<ReloadingCert>), TlsSetupError> {
    let cert = Arc::new(ReloadingCert::open(&s.cert, provider)?);
    files.push(cert.clone());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&protocol_versions(versions))
        .map_err(|e| err(format!("TLS configuration: {e}")))?;
    let builder = match &s.client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Require { ca, allowed, crl } => {
            let flag = if side == "peer" {
                "--peer-trusted-ca-file"
            } else {
                "--trusted-ca-file"
            };
            let crl_flag = if side == "peer" {
                "--peer-crl-file"
            } else {
                "--client-crl-file"
            };
            let crl = match crl {
                Some(path) => Some(Arc::new(CrlFile::open(path, crl_flag)?)),
                None => None,
            };
            if let Some(crl) = &crl {
                files.push(crl.clone());
            }
            let p = provider.clone();
            let inner = Arc::new(CaReloader::new(
                ca,
                flag,
                Box::new(move |roots| {
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), p.clone())
                        .build()
                        .map_err(|e| e.to_string())
                }),
            )?);
            files.push(inner.clone());
            builder.with_client_cert_verifier(Arc::new(CnVerifier {
                inner,
                allowed: allowed.clone(),
                crl,
            }))
        }
    };
    let mut cfg = builder.with_cert_resolver(cert.clone());
    cfg.alpn_protocols = alpn.to_vec();
    // No session resumption: a resumed session skips the client certificate checks (CA, CRL,
    // allowed CN/hostname) and keeps the certificate presented first, so a revoked or replaced
    // certificate would still get in. Every connection is a full handshake, as with etcd's Go
    // clients, which keep no session cache.
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    let acceptor = TlsAcceptor {
        inner: tokio_rustls::TlsAcceptor::from(Arc::new(cfg)),
        side,
        check_san: s.check_san,
        files: TlsFiles::default(),
    };
    Ok((acceptor, cert))
}

fn load_roots(path: &str, flag: &str) -> Result<RootCertStore, TlsSetupError> {
    let certs = read_certs(path, flag)?;
    let mut roots = RootCertStore::empty();
    for c in certs {
        roots
            .add(c)
            .map_err(|e| err(format!("{flag} {path}: not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

fn read_certs(path: &str, flag: &str) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read {flag} {path}: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("{flag} {path}: not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(err(format!(
            "{flag} {path}: no certificate found (expected PEM \"CERTIFICATE\" blocks)"
        )));
    }
    Ok(certs)
}

fn file_mtime(path: &str) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Loads a certificate and its key, checking that they match and that the certificate is valid now.
fn load_certified(
    cert: &str,
    key: &str,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsSetupError> {
    let chain = read_certs(cert, "certificate file")?;
    let key_bytes =
        std::fs::read(key).map_err(|e| err(format!("cannot read key file {key}: {e}")))?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_bytes)
        .map_err(|e| err(format!("key file {key}: no PEM private key found: {e}")))?;
    let signing = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| err(format!("key file {key}: unsupported private key: {e}")))?;
    let ck = CertifiedKey::new(chain, signing);
    if let Err(e) = ck.keys_match() {
        if !matches!(
            e,
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)
        ) {
            return Err(err(format!(
                "certificate file {cert} and key file {key} do not match: {e}"
            )));
        }
    }
    let (_, parsed) = x509_parser::parse_x509_certificate(&ck.cert[0]).map_err(|e| {
        err(format!(
            "certificate file {cert}: cannot parse certificate: {e}"
        ))
    })?;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let v = parsed.validity();
    if now > v.not_after.timestamp() {
        return Err(err(format!(
            "certificate file {cert}: certificate expired at {}",
            v.not_after
        )));
    }
    if now < v.not_before.timestamp() {
        return Err(err(format!(
            "certificate file {cert}: certificate not valid before {}",
            v.not_before
        )));
    }
    Ok(ck)
}

/// A certificate and key that are re-read when their files change, checked on every new
/// connection. A rotated pair that does not load is logged and the previous pair kept.
#[derive(Debug)]
pub struct ReloadingCert {
    cert: String,
    key: String,
    provider: Arc<CryptoProvider>,
    current: Mutex<(Option<SystemTime>, Option<SystemTime>, Arc<CertifiedKey>)>,
}

impl ReloadingCert {
    fn open(
        src: &CertSource,
        provider: &Arc<CryptoProvider>,
    ) -> Result<ReloadingCert, TlsSetupError> {
        let (cert, key) = match src {
            CertSource::Files { cert, key } => (cert.clone(), key.clone()),
            CertSource::Auto {
                dir,
                hosts,
                validity_years,
            } => auto_cert(dir, hosts, *validity_years)?,
        };
        let times = (file_mtime(&cert), file_mtime(&key));
        let ck = load_certified(&cert, &key, provider)?;
        Ok(ReloadingCert {
            cert,
            key,
            provider: provider.clone(),
            current: Mutex::new((times.0, times.1, Arc::new(ck))),
        })
    }

    /// The pair as last loaded (no disk access: see [`TlsFiles`]).
    fn get(&self) -> Arc<CertifiedKey> {
        self.current.lock().unwrap().2.clone()
    }
}

impl Reload for ReloadingCert {
    fn refresh(&self) {
        // The files are looked at without the lock, which handshakes take to read the pair.
        let times = (file_mtime(&self.cert), file_mtime(&self.key));
        let known = {
            let cur = self.current.lock().unwrap();
            (cur.0, cur.1)
        };
        if times == known {
            return;
        }
        match load_certified(&self.cert, &self.key, &self.provider) {
            Ok(ck) => {
                tracing::info!(cert = %self.cert, key = %self.key, "reloaded TLS certificate");
                *self.current.lock().unwrap() = (times.0, times.1, Arc::new(ck));
            }
            // Retry on the next connection (a rotation may be half written).
            Err(e) => tracing::warn!("keeping the previous TLS certificate: {e}"),
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

impl rustls::client::ResolvesClientCert for ReloadingCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// Auto TLS: a self-signed ECDSA certificate for `hosts` in `dir`, generated once and reused.
/// (etcd uses P-521; rustls' ring backend signs with P-256/P-384, so detcd uses P-384.)
pub fn auto_cert(
    dir: &str,
    hosts: &[String],
    validity_years: u32,
) -> Result<(String, String), TlsSetupError> {
    let cert_path = Path::new(dir).join("cert.pem");
    let key_path = Path::new(dir).join("key.pem");
    let (c, k) = (
        cert_path.to_string_lossy().into_owned(),
        key_path.to_string_lossy().into_owned(),
    );
    if cert_path.exists() && key_path.exists() {
        tracing::info!(cert = %c, "using existing auto TLS certificate");
        return Ok((c, k));
    }
    let gen_err = |e: rcgen::Error| err(format!("auto TLS: cannot generate a certificate: {e}"));
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(gen_err)?;
    for h in hosts {
        let san = match h.parse::<std::net::IpAddr>() {
            Ok(ip) => rcgen::SanType::IpAddress(ip),
            Err(_) => rcgen::SanType::DnsName(h.clone().try_into().map_err(|e| {
                err(format!(
                    "auto TLS: host {h:?} cannot be a certificate name: {e}"
                ))
            })?),
        };
        params.subject_alt_names.push(san);
    }
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::OrganizationName, "etcd");
    params.distinguished_name = dn;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(365 * validity_years as i64);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).map_err(gen_err)?;
    let cert = params.self_signed(&key).map_err(gen_err)?;
    let io = |p: &str, e: std::io::Error| err(format!("auto TLS: cannot write {p}: {e}"));
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    std::fs::write(&cert_path, cert.pem()).map_err(|e| io(&c, e))?;
    {
        use std::io::Write;
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            o.mode(0o600);
        }
        let mut f = o.open(&key_path).map_err(|e| io(&k, e))?;
        f.write_all(key.serialize_pem().as_bytes())
            .map_err(|e| io(&k, e))?;
        f.sync_all().map_err(|e| io(&k, e))?;
    }
    tracing::info!(cert = %c, hosts = ?hosts, "generated auto TLS certificate");
    Ok((c, k))
}

/// Auto TLS peers: encryption without authentication (etcd's InsecureSkipVerify), but the
/// handshake signatures are still checked against the presented certificate.
#[derive(Debug)]
struct SkipVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for SkipVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

type BuildVerifier<T> = Box<dyn Fn(RootCertStore) -> Result<Arc<T>, String> + Send + Sync>;

/// A verifier over the CA certificates of a file, rebuilt when the file changes (so a CA
/// rotation needs no restart either). A CA file that does not load is logged and the previous
/// CAs kept.
struct CaReloader<T: ?Sized> {
    path: String,
    flag: &'static str,
    build: BuildVerifier<T>,
    current: Mutex<(Option<SystemTime>, Arc<T>)>,
}

impl<T: ?Sized> std::fmt::Debug for CaReloader<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CaReloader({} {})", self.flag, self.path)
    }
}

impl<T: ?Sized> CaReloader<T> {
    fn new(
        path: &str,
        flag: &'static str,
        build: BuildVerifier<T>,
    ) -> Result<CaReloader<T>, TlsSetupError> {
        let mtime = file_mtime(path);
        let v = build(load_roots(path, flag)?).map_err(|e| err(format!("{flag} {path}: {e}")))?;
        Ok(CaReloader {
            path: path.to_string(),
            flag,
            build,
            current: Mutex::new((mtime, v)),
        })
    }

    /// The verifier over the CAs as last loaded (no disk access: see [`TlsFiles`]).
    fn get(&self) -> Arc<T> {
        self.current.lock().unwrap().1.clone()
    }
}

impl<T: ?Sized + Send + Sync> Reload for CaReloader<T> {
    fn refresh(&self) {
        // The file is looked at without the lock, which handshakes take to read the CAs.
        let mtime = file_mtime(&self.path);
        if mtime == self.current.lock().unwrap().0 {
            return;
        }
        match load_roots(&self.path, self.flag).and_then(|r| {
            (self.build)(r).map_err(|e| err(format!("{} {}: {e}", self.flag, self.path)))
        }) {
            Ok(v) => {
                tracing::info!(file = %self.path, "reloaded {}", self.flag);
                *self.current.lock().unwrap() = (mtime, v);
            }
            Err(e) => tracing::warn!("keeping the previous CA certificates: {e}"),
        }
    }
}

/// webpki's check of a dialed peer against `--peer-trusted-ca-file`, re-read when it changes.
#[derive(Debug)]
struct PeerServerVerifier(Arc<CaReloader<dyn ServerCertVerifier>>, Option<Allowed>);

impl ServerCertVerifier for PeerServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ok =
            self.0
                .get()
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        check_allowed(self.1.as_ref(), end_entity)?;
        Ok(ok)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.get().verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.get().verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.get().supported_verify_schemes()
    }
}

/// `--peer-cert-allowed-cn` / `--*-cert-allowed-hostname` on a certificate the other side
/// presented (etcd's VerifyPeerCertificate in baseConfig: on the listener and, for peers,
/// on the members dialed). Refusals are logged in etcd's words; the other side gets
/// bad_certificate.
fn check_allowed(
    allowed: Option<&Allowed>,
    end_entity: &CertificateDer<'_>,
) -> Result<(), rustls::Error> {
    if let Some(Allowed::Hostname(hosts)) = allowed {
        let errors: Vec<String> = hosts
            .iter()
            .filter_map(|h| verify_hostname(end_entity, h).err())
            .collect();
        if hosts.is_empty() || errors.len() == hosts.len() {
            let e = errors.join("; ");
            // etcd's VerifyPeerCertificate error; the other side gets bad_certificate.
            let hosts = hosts.join(",");
            tracing::warn!(
                "client certificate authentication failed: certificate not valid for allowed hostname {hosts:?}: {e}"
            );
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName,
            ));
        }
    }
    if let Some(Allowed::Cn(want)) = allowed {
        let cn = x509_parser::parse_x509_certificate(end_entity)
            .ok()
            .and_then(|(_, c)| {
                c.subject()
                    .iter_common_name()
                    .next()
                    .and_then(|cn| cn.as_str().ok().map(str::to_string))
            })
            .unwrap_or_default();
        if !want.contains(&cn) {
            // etcd's words for the log; the peer gets Go's alert for a refused
            // certificate (bad_certificate), which NotValidForName sends.
            let want = want.join(",");
            tracing::warn!(
                "CommonName authentication failed: certificate CN {cn:?}, --peer-cert-allowed-cn {want:?}"
            );
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName,
            ));
        }
    }
    Ok(())
}

/// The CA check of webpki (CAs re-read when the file changes), plus `--peer-cert-allowed-cn`
/// or `--{client,peer}-cert-allowed-hostname`, and the CRL file.
#[derive(Debug)]
struct CnVerifier {
    inner: Arc<CaReloader<dyn ClientCertVerifier>>,
    allowed: Option<Allowed>,
    crl: Option<Arc<CrlFile>>,
}

impl ClientCertVerifier for CnVerifier {
    /// No CA names are sent (they would be borrowed from a CA list that may be replaced):
    /// clients then offer their certificate whatever its issuer, and the check below decides.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self
            .inner
            .get()
            .verify_client_cert(end_entity, intermediates, now)?;
        if let Some(crl) = &self.crl {
            // etcd's checkCRL: every certificate the other side presented.
            crl.check(std::iter::once(end_entity).chain(intermediates))?;
        }
        check_allowed(self.allowed.as_ref(), end_entity)?;
        Ok(ok)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.get().verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.get().verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.get().supported_verify_schemes()
    }
}

/// A listener's TLS: rustls' handshake, then etcd's post-handshake checks (the SAN check of
/// peer listeners). Every refused connection is logged as etcd logs it (embed's
/// `logTLSHandshakeFailure`: "rejected connection" with `remote-addr`, `server-name` and, when
/// the other side presented a certificate, its `ip-addresses` and `dns-names`).
#[derive(Clone)]
pub struct TlsAcceptor {
    inner: tokio_rustls::TlsAcceptor,
    /// `client` or `peer`, for logs.
    side: &'static str,
    /// etcd's `checkSAN` (see [`check_cert_san`]).
    check_san: bool,
    /// Refreshed before each handshake.
    files: TlsFiles,
}

/// A connection's remote address, for etcd's SAN check and logs.
pub trait RemoteAddr {
    /// The remote IP address and port; `None` where there is none (a unix socket).
    fn remote_addr(&self) -> Option<std::net::SocketAddr>;
}

impl RemoteAddr for tokio::net::TcpStream {
    fn remote_addr(&self) -> Option<std::net::SocketAddr> {
        self.peer_addr().ok()
    }
}

impl RemoteAddr for crate::listener::Conn {
    fn remote_addr(&self) -> Option<std::net::SocketAddr> {
        match self {
            crate::listener::Conn::Tcp(s) => s.peer_addr().ok(),
            crate::listener::Conn::Unix(_) => None,
        }
    }
}

impl TlsAcceptor {
    /// Runs the TLS handshake on `stream`, then the SAN check where etcd makes it. Errors: the
    /// handshake's, or a refused certificate (`PermissionDenied`); either is logged here.
    pub async fn accept<IO>(
        &self,
        stream: IO,
    ) -> std::io::Result<tokio_rustls::server::TlsStream<IO>>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + RemoteAddr,
    {
        let remote = stream.remote_addr();
        self.files.refresh().await;
        let tls = match self.inner.accept(stream).await {
            Ok(tls) => tls,
            Err(e) => {
                // An alert from the other side in Go's words (`remote error: tls: bad
                // certificate`), which etcd's tests and operators look for.
                let text = match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                    Some(rustls::Error::AlertReceived(alert)) => {
                        format!(
                            "remote error: tls: {}",
                            crate::transport::go_alert_text(&format!("{alert:?}"))
                        )
                    }
                    _ => e.to_string(),
                };
                log_rejected(self.side, remote, "", None, &text);
                return Err(e);
            }
        };
        if self.check_san {
            let conn = tls.get_ref().1;
            if let Some(cert) = conn.peer_certificates().and_then(|c| c.first()) {
                if let Err(why) = check_cert_san(cert, remote).await {
                    let name = conn.server_name().unwrap_or("").to_string();
                    log_rejected(self.side, remote, &name, Some(cert), &why);
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::PermissionDenied,
                        why,
                    ));
                }
            }
        }
        Ok(tls)
    }
}

/// etcd's "rejected connection" warning.
fn log_rejected(
    side: &str,
    remote: Option<std::net::SocketAddr>,
    server_name: &str,
    cert: Option<&CertificateDer<'_>>,
    error: &str,
) {
    let remote = remote.map(|a| a.to_string()).unwrap_or_default();
    match cert.map(|c| cert_sans(c)) {
        Some((ips, dns)) => tracing::warn!(
            "remote-addr" = %remote,
            "server-name" = %server_name,
            "ip-addresses" = ?ips,
            "dns-names" = ?dns,
            error = %error,
            listener = side,
            "rejected connection"
        ),
        None => tracing::warn!(
            "remote-addr" = %remote,
            "server-name" = %server_name,
            error = %error,
            listener = side,
            "rejected connection"
        ),
    }
}

/// A certificate's IP and DNS SANs, as text (Go's `cert.IPAddresses`, `cert.DNSNames`).
fn cert_sans(cert: &CertificateDer<'_>) -> (Vec<String>, Vec<String>) {
    use x509_parser::extensions::GeneralName;
    let (mut ips, mut dns) = (Vec::new(), Vec::new());
    if let Ok((_, c)) = x509_parser::parse_x509_certificate(cert) {
        if let Ok(Some(san)) = c.subject_alternative_name() {
            for n in &san.value.general_names {
                match n {
                    GeneralName::DNSName(d) => dns.push(d.to_string()),
                    GeneralName::IPAddress(b) => match b.len() {
                        4 => ips.push(
                            std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*b).unwrap_or_default())
                                .to_string(),
                        ),
                        16 => ips.push(
                            std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*b).unwrap_or_default())
                                .to_string(),
                        ),
                        _ => {}
                    },
                    _ => {}
                }
            }
        }
    }
    (ips, dns)
}

/// Go's `cert.VerifyHostname(host)`: an IP address must be one of the IP SANs, a name must
/// match a DNS SAN (wildcards for one label); the subject CN is not consulted. The matching is
/// webpki's. Errors: Go's `x509.HostnameError` text.
fn verify_hostname(cert: &CertificateDer<'_>, host: &str) -> Result<(), String> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let matched = ServerName::try_from(bare.to_string())
        .ok()
        .zip(rustls::server::ParsedCertificate::try_from(cert).ok())
        .is_some_and(|(name, parsed)| rustls::client::verify_server_name(&parsed, &name).is_ok());
    if matched {
        return Ok(());
    }
    let (ips, dns) = cert_sans(cert);
    let valid = if bare.parse::<std::net::IpAddr>().is_ok() {
        if ips.is_empty() {
            return Err(format!(
                "x509: cannot validate certificate for {bare} because it doesn't contain any IP SANs"
            ));
        }
        ips.join(", ")
    } else {
        dns.join(", ")
    };
    if valid.is_empty() {
        return Err(format!(
            "x509: certificate is not valid for any names, but wanted to match {bare}"
        ));
    }
    Err(format!(
        "x509: certificate is valid for {valid}, not {bare}"
    ))
}

/// etcd's `checkCertSAN` (pkg/transport/listener_tls.go), run on the peer listeners after the
/// handshake: a certificate without IP or DNS SANs passes; otherwise the remote IP address must
/// be one of its IP SANs, or one of its DNS SANs must name it: the address's reverse lookup
/// gives the name (wildcard SANs match a suffix), or the name's forward lookup gives the
/// address. Errors: Go's texts.
pub async fn check_cert_san(
    cert: &CertificateDer<'_>,
    remote: Option<std::net::SocketAddr>,
) -> Result<(), String> {
    let (ips, dns) = cert_sans(cert);
    if ips.is_empty() && dns.is_empty() {
        return Ok(());
    }
    // Go's net.SplitHostPort of a unix socket's remote address.
    let Some(remote) = remote else {
        return Err("missing port in address".to_string());
    };
    let host = remote.ip().to_canonical().to_string();
    if !ips.is_empty() {
        match verify_hostname(cert, &host) {
            Ok(()) => return Ok(()),
            Err(e) if dns.is_empty() => return Err(e),
            Err(_) => {}
        }
    }
    let (ok, lookup_err) = is_host_in_dns(remote.ip().to_canonical(), &dns).await;
    if ok {
        return Ok(());
    }
    let why = lookup_err.map(|e| format!(" ({e})")).unwrap_or_default();
    Err(format!(
        "tls: {host:?} does not match any of DNSNames {dns:?}{why}"
    ))
}

/// etcd's `isHostInDNS`: the reverse lookup of `ip` against the SANs (wildcards as suffixes),
/// then each plain SAN's forward lookup (the system resolver, /etc/hosts first, as Go's).
/// Returns whether one matched and the last lookup error.
async fn is_host_in_dns(ip: std::net::IpAddr, dns_names: &[String]) -> (bool, Option<String>) {
    let (wildcards, names): (Vec<&String>, Vec<&String>) =
        dns_names.iter().partition(|d| d.starts_with("*."));
    let mut last_err = None;
    match reverse_lookup(ip).await {
        Ok(found) => {
            for name in found {
                let name = name.trim_end_matches('.');
                if wildcards.iter().any(|w| name.ends_with(&w[1..]))
                    || names.iter().any(|n| n.as_str() == name)
                {
                    return (true, None);
                }
            }
        }
        Err(e) => last_err = Some(e),
    }
    for name in names {
        match tokio::net::lookup_host((name.as_str(), 0)).await {
            Ok(addrs) => {
                if addrs.into_iter().any(|a| a.ip().to_canonical() == ip) {
                    return (true, None);
                }
            }
            Err(e) => last_err = Some(format!("lookup {name}: {e}")),
        }
    }
    (false, last_err)
}

/// The PTR names of `ip` through the system resolver configuration, read for each lookup as
/// Go's resolver re-reads it (hickory-resolver consults /etc/hosts too, and answers
/// `localhost` for loopback addresses itself).
async fn reverse_lookup(ip: std::net::IpAddr) -> Result<Vec<String>, String> {
    use hickory_resolver::net::runtime::TokioRuntimeProvider;
    // Reading /etc/resolv.conf is file I/O: off the async workers.
    let (config, opts) =
        tokio::task::spawn_blocking(hickory_resolver::system_conf::read_system_conf)
            .await
            .map_err(|e| format!("lookup {ip}: {e}"))?
            .map_err(|e| format!("lookup {ip}: {e}"))?;
    let mut b =
        hickory_resolver::Resolver::builder_with_config(config, TokioRuntimeProvider::default());
    *b.options_mut() = opts;
    let resolver = b.build().map_err(|e| format!("lookup {ip}: {e}"))?;
    let answer = resolver
        .reverse_lookup(ip)
        .await
        .map_err(|e| format!("lookup {ip}: {e}"))?;
    Ok(answer
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            hickory_resolver::proto::rr::RData::PTR(p) => Some(p.0.to_string()),
            _ => None,
        })
        .collect())
}

/// A CRL file (`--client-crl-file`, `--peer-crl-file`): the serials it revokes, re-read when
/// the file changes (etcd reads it for every connection). PEM (`X509 CRL`) or DER, as Go's
/// `x509.ParseCRL`. As etcd's `checkCRL`, only serials are compared: the list's signature and
/// dates are not checked.
#[derive(Debug)]
struct CrlFile {
    path: String,
    flag: &'static str,
    /// (mtime, revoked serials or why the file is unusable).
    current: Mutex<(Option<SystemTime>, Result<Revoked, String>)>,
}

/// The serials a CRL lists (as [`serial_key`] gives them).
type Revoked = Arc<std::collections::HashSet<Vec<u8>>>;

/// A serial's magnitude bytes (Go's `big.Int.Bytes()`: no leading zero bytes).
fn serial_key(raw: &[u8]) -> Vec<u8> {
    let start = raw.iter().position(|b| *b != 0).unwrap_or(raw.len());
    raw[start..].to_vec()
}

fn read_crl(path: &str, flag: &str) -> Result<std::collections::HashSet<Vec<u8>>, String> {
    use rustls_pki_types::CertificateRevocationListDer;
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {flag} {path}: {e}"))?;
    let der: Vec<u8> = if bytes.starts_with(b"-----BEGIN X509 CRL") {
        CertificateRevocationListDer::from_pem_slice(&bytes)
            .map_err(|e| format!("{flag} {path}: not a PEM certificate revocation list: {e}"))?
            .as_ref()
            .to_vec()
    } else {
        bytes
    };
    let (_, crl) = x509_parser::parse_x509_crl(&der)
        .map_err(|e| format!("{flag} {path}: not a certificate revocation list: {e}"))?;
    Ok(crl
        .iter_revoked_certificates()
        .map(|r| serial_key(r.raw_serial()))
        .collect())
}

impl Reload for CrlFile {
    fn refresh(&self) {
        // The file is read without the lock, which handshakes take to check serials.
        let lock = || self.current.lock().unwrap_or_else(|p| p.into_inner());
        let mtime = file_mtime(&self.path);
        if mtime == lock().0 {
            return;
        }
        let next = read_crl(&self.path, self.flag).map(Arc::new);
        match &next {
            Ok(_) => tracing::info!(file = %self.path, "reloaded {}", self.flag),
            Err(e) => tracing::warn!("{e}; refusing certificates until it is fixed"),
        }
        *lock() = (mtime, next);
    }
}

impl CrlFile {
    /// Reads `path`. Errors (start-up): unreadable, or not a CRL; the message names `flag`.
    fn open(path: &str, flag: &'static str) -> Result<CrlFile, TlsSetupError> {
        let mtime = file_mtime(path);
        let serials = read_crl(path, flag).map_err(err)?;
        Ok(CrlFile {
            path: path.to_string(),
            flag,
            current: Mutex::new((mtime, Ok(Arc::new(serials)))),
        })
    }

    /// etcd's `checkCRL`: refuses (`Revoked`) when one of `certs` has a listed serial, or when
    /// the file became unusable (as etcd, whose per-connection read then fails).
    fn check<'a>(
        &self,
        certs: impl Iterator<Item = &'a CertificateDer<'a>>,
    ) -> Result<(), rustls::Error> {
        // The list as last read (no disk access: see [`TlsFiles`]).
        let serials = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone();
        let serials = serials.map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownRevocationStatus)
        })?;
        for c in certs {
            let Ok((_, parsed)) = x509_parser::parse_x509_certificate(c) else {
                continue;
            };
            let serial = serial_key(parsed.raw_serial());
            if serials.contains(&serial) {
                let hex: String = serial.iter().map(|b| format!("{b:02x}")).collect();
                tracing::warn!(
                    "transport: certificate serial {hex} revoked ({} {})",
                    self.flag,
                    self.path
                );
                return Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::Revoked,
                ));
            }
        }
        Ok(())
    }
}

/// Dials `host:port` and opens TLS with `cfg`, naming `host` (an IP or a DNS name).
pub async fn connect(
    cfg: Arc<ClientConfig>,
    host: &str,
    port: u16,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    connect_named(cfg, host, port, None, None).await
}

/// [`connect`], dialing `addr` when given (a name already resolved) and expecting the
/// certificate to name `server_name` when given (the SRV domain) instead of `host`.
pub async fn connect_named(
    cfg: Arc<ClientConfig>,
    host: &str,
    port: u16,
    addr: Option<std::net::IpAddr>,
    server_name: Option<&str>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = match addr {
        Some(ip) => tokio::net::TcpStream::connect((ip, port)).await?,
        None => tokio::net::TcpStream::connect((host, port)).await?,
    };
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(server_name.unwrap_or(host).to_string())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
}

/// A peer-port TLS connection (over TCP or a unix socket) as tonic's server takes it.
pub struct ServerIo(pub tokio_rustls::server::TlsStream<crate::listener::Conn>);

impl tonic::transport::server::Connected for ServerIo {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl tokio::io::AsyncRead for ServerIo {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for ServerIo {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(label: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("detcd-tls-unit-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    struct Ca(rcgen::Certificate, rcgen::KeyPair);

    fn ca() -> Ca {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "unit CA");
        let k = rcgen::KeyPair::generate().unwrap();
        Ca(p.self_signed(&k).unwrap(), k)
    }

    fn leaf(ca: &Ca, cn: &str, expired: bool) -> (String, String) {
        let mut p = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        if expired {
            p.not_before = rcgen::date_time_ymd(2000, 1, 1);
            p.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let k = rcgen::KeyPair::generate().unwrap();
        (
            p.signed_by(&k, &ca.0, &ca.1).unwrap().pem(),
            k.serialize_pem(),
        )
    }

    fn write(dir: &Path, name: &str, text: &str) -> String {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().into_owned()
    }

    fn provider() -> Arc<CryptoProvider> {
        super::provider(&[])
    }

    #[test]
    fn auto_cert_is_generated_once_with_a_private_key() {
        let d = tmp("auto");
        let dir = d
            .join("fixtures")
            .join("peer")
            .to_string_lossy()
            .into_owned();
        let hosts = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        let (c, k) = auto_cert(&dir, &hosts, 2).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&k).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let first = std::fs::read(&c).unwrap();
        let ck = load_certified(&c, &k, &provider()).unwrap();
        let (_, x) = x509_parser::parse_x509_certificate(&ck.cert[0]).unwrap();
        assert!(
            x.subject().to_string().contains("O=etcd"),
            "{}",
            x.subject()
        );
        let years = (x.validity().not_after.timestamp() - x.validity().not_before.timestamp())
            / (365 * 86400);
        assert_eq!(years, 2);
        let san = x
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .len();
        assert_eq!(san, 2);
        auto_cert(&dir, &hosts, 2).unwrap();
        assert_eq!(first, std::fs::read(&c).unwrap(), "reused, not regenerated");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn bad_files_are_named() {
        let d = tmp("bad");
        let ca = ca();
        let (c1, k1) = leaf(&ca, "one", false);
        let (_, k2) = leaf(&ca, "two", false);
        let (c3, k3) = leaf(&ca, "old", true);
        let (c1, k1, k2) = (
            write(&d, "c1", &c1),
            write(&d, "k1", &k1),
            write(&d, "k2", &k2),
        );
        let (c3, k3) = (write(&d, "c3", &c3), write(&d, "k3", &k3));
        let p = provider();
        assert!(load_certified(&c1, &k1, &p).is_ok());
        let e = load_certified(&c1, &k2, &p).unwrap_err().0;
        assert!(
            e.contains("do not match") && e.contains(&c1) && e.contains(&k2),
            "{e}"
        );
        let e = load_certified(&c3, &k3, &p).unwrap_err().0;
        assert!(e.contains("expired") && e.contains(&c3), "{e}");
        let missing = d.join("nope").to_string_lossy().into_owned();
        let e = load_certified(&missing, &k1, &p).unwrap_err().0;
        assert!(e.contains(&missing), "{e}");
        let e = load_certified(&c1, &c1, &p).unwrap_err().0;
        assert!(e.contains("key file") && e.contains(&c1), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn rotated_files_are_served_to_new_connections() {
        let d = tmp("rotate");
        let ca = ca();
        let (c, k) = leaf(&ca, "one", false);
        let (c, k) = (write(&d, "c", &c), write(&d, "k", &k));
        let r = ReloadingCert::open(
            &CertSource::Files {
                cert: c.clone(),
                key: k.clone(),
            },
            &provider(),
        )
        .unwrap();
        let first = r.get().cert[0].clone();
        r.refresh();
        assert_eq!(r.get().cert[0], first);
        // A half-written rotation (new cert, old key) keeps the old pair.
        let (c2, k2) = leaf(&ca, "two", false);
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&c, &c2).unwrap();
        r.refresh();
        assert_eq!(r.get().cert[0], first);
        std::fs::write(&k, &k2).unwrap();
        assert_eq!(r.get().cert[0], first, "read only on refresh");
        r.refresh();
        assert_ne!(r.get().cert[0], first);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn allowed_cn() {
        let d = tmp("cn");
        let ca = ca();
        let ca_path = write(&d, "ca", &ca.0.pem());
        let p = provider();
        let verifier = |cn: Option<&str>| {
            let p2 = p.clone();
            CnVerifier {
                inner: Arc::new(
                    CaReloader::new(
                        &ca_path,
                        "--peer-trusted-ca-file",
                        Box::new(move |roots| {
                            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), p2.clone())
                                .build()
                                .map_err(|e| e.to_string())
                        }),
                    )
                    .unwrap(),
                ),
                allowed: cn.map(|c| Allowed::Cn(vec![c.to_string()])),
                crl: None,
            }
        };
        let der = |pem: &str| CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let (etcd, _) = leaf(&ca, "etcd", false);
        let (other, _) = leaf(&ca, "other", false);
        let (stranger, _) = leaf(&super::tests::ca(), "etcd", false);
        let now = UnixTime::now();
        let v = verifier(Some("etcd"));
        assert!(v.verify_client_cert(&der(&etcd), &[], now).is_ok());
        // Refused with the error rustls answers with Go's bad_certificate alert.
        let e = v.verify_client_cert(&der(&other), &[], now).unwrap_err();
        assert_eq!(
            e,
            rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
        );
        assert!(v.verify_client_cert(&der(&stranger), &[], now).is_err());
        assert!(verifier(None)
            .verify_client_cert(&der(&other), &[], now)
            .is_ok());
        // CA rotation: a new CA file is picked up by the running verifier.
        let new_ca = super::tests::ca();
        let (rotated, _) = leaf(&new_ca, "etcd", false);
        assert!(v.verify_client_cert(&der(&rotated), &[], now).is_err());
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&ca_path, format!("{}{}", ca.0.pem(), new_ca.0.pem())).unwrap();
        assert!(
            v.verify_client_cert(&der(&rotated), &[], now).is_err(),
            "read only on refresh"
        );
        v.inner.refresh();
        assert!(v.verify_client_cert(&der(&rotated), &[], now).is_ok());
        assert!(v.verify_client_cert(&der(&etcd), &[], now).is_ok());
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A leaf for `hosts` with the given serial, as (DER, PEM).
    fn leaf_serial(ca: &Ca, hosts: &[&str], serial: u64) -> (CertificateDer<'static>, String) {
        let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        let mut p = rcgen::CertificateParams::new(hosts).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, "leaf");
        p.serial_number = Some(rcgen::SerialNumber::from(serial));
        p.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let k = rcgen::KeyPair::generate().unwrap();
        let c = p.signed_by(&k, &ca.0, &ca.1).unwrap();
        (c.der().clone(), c.pem())
    }

    /// A CRL from `ca` revoking `serials`.
    fn crl(ca: &Ca, serials: &[u64]) -> rcgen::CertificateRevocationList {
        rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2020, 1, 1),
            next_update: rcgen::date_time_ymd(2020, 2, 1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from(*s),
                    revocation_time: rcgen::date_time_ymd(2020, 1, 1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&ca.0, &ca.1)
        .unwrap()
    }

    /// etcd's checkCRL: a listed serial is refused at the handshake, others pass; PEM and DER
    /// files; a damaged file stops the start naming the flag and file, and a file damaged
    /// later refuses every certificate (etcd's per-connection read fails the same way).
    #[test]
    fn crl_refuses_listed_serials() {
        let d = tmp("crl");
        let ca = ca();
        let ca_path = write(&d, "ca", &ca.0.pem());
        let (revoked, _) = leaf_serial(&ca, &["127.0.0.1"], 0x4a3c);
        let (good, _) = leaf_serial(&ca, &["127.0.0.1"], 0x99);
        let crl_pem = write(&d, "crl.pem", &crl(&ca, &[0x4a3c]).pem().unwrap());
        let crl_der = d.join("crl.der");
        std::fs::write(&crl_der, crl(&ca, &[0x4a3c]).der().as_ref()).unwrap();
        let crl_der = crl_der.to_string_lossy().into_owned();
        let p = provider();
        let verifier = |crl_path: &str| {
            let p2 = p.clone();
            CnVerifier {
                inner: Arc::new(
                    CaReloader::new(
                        &ca_path,
                        "--trusted-ca-file",
                        Box::new(move |roots| {
                            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), p2.clone())
                                .build()
                                .map_err(|e| e.to_string())
                        }),
                    )
                    .unwrap(),
                ),
                allowed: None,
                crl: Some(Arc::new(
                    CrlFile::open(crl_path, "--client-crl-file").unwrap(),
                )),
            }
        };
        let now = UnixTime::now();
        for path in [&crl_pem, &crl_der] {
            let v = verifier(path);
            assert_eq!(
                v.verify_client_cert(&revoked, &[], now).unwrap_err(),
                rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)
            );
            assert!(v.verify_client_cert(&good, &[], now).is_ok());
        }
        // Damaged at start-up: named.
        let bad = write(
            &d,
            "bad.crl",
            "-----BEGIN X509 CRL-----\nnot base64\n-----END X509 CRL-----\n",
        );
        let e = CrlFile::open(&bad, "--peer-crl-file").unwrap_err().0;
        assert!(e.starts_with("--peer-crl-file ") && e.contains(&bad), "{e}");
        let junk = write(&d, "junk.crl", "junk");
        let e = CrlFile::open(&junk, "--peer-crl-file").unwrap_err().0;
        assert!(
            e.contains("not a certificate revocation list") && e.contains(&junk),
            "{e}"
        );
        let missing = d.join("missing.crl").to_string_lossy().into_owned();
        let e = CrlFile::open(&missing, "--client-crl-file").unwrap_err().0;
        assert!(
            e.starts_with("cannot read --client-crl-file ") && e.contains(&missing),
            "{e}"
        );
        // Rotation: a new list is picked up; a damaged one refuses everyone.
        let v = verifier(&crl_pem);
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&crl_pem, crl(&ca, &[0x99]).pem().unwrap()).unwrap();
        assert!(
            v.verify_client_cert(&good, &[], now).is_ok(),
            "read only on refresh"
        );
        v.crl.as_ref().unwrap().refresh();
        assert!(v.verify_client_cert(&revoked, &[], now).is_ok());
        assert!(v.verify_client_cert(&good, &[], now).is_err());
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&crl_pem, "junk").unwrap();
        v.crl.as_ref().unwrap().refresh();
        assert!(v.verify_client_cert(&revoked, &[], now).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }

    /// Go's VerifyHostname, for --{client,peer}-cert-allowed-hostname.
    #[test]
    fn allowed_hostname() {
        let ca = ca();
        let (cert, _) = leaf_serial(&ca, &["127.0.0.1", "peer.example", "*.wild.example"], 1);
        assert_eq!(verify_hostname(&cert, "127.0.0.1"), Ok(()));
        assert_eq!(verify_hostname(&cert, "peer.example"), Ok(()));
        assert_eq!(verify_hostname(&cert, "a.wild.example"), Ok(()));
        assert_eq!(
            verify_hostname(&cert, "127.0.0.2").unwrap_err(),
            "x509: certificate is valid for 127.0.0.1, not 127.0.0.2"
        );
        assert_eq!(
            verify_hostname(&cert, "other.example").unwrap_err(),
            "x509: certificate is valid for peer.example, *.wild.example, not other.example"
        );
        let (names_only, _) = leaf_serial(&ca, &["peer.example"], 2);
        assert_eq!(
            verify_hostname(&names_only, "10.0.0.1").unwrap_err(),
            "x509: cannot validate certificate for 10.0.0.1 because it doesn't contain any IP SANs"
        );
        let d = tmp("hostname");
        let ca_path = write(&d, "ca", &ca.0.pem());
        let p = provider();
        let v = CnVerifier {
            inner: Arc::new(
                CaReloader::new(
                    &ca_path,
                    "--peer-trusted-ca-file",
                    Box::new(move |roots| {
                        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), p.clone())
                            .build()
                            .map_err(|e| e.to_string())
                    }),
                )
                .unwrap(),
            ),
            allowed: Some(Allowed::Hostname(vec![
                "10.9.9.9".into(),
                "peer.example".into(),
            ])),
            crl: None,
        };
        let now = UnixTime::now();
        assert!(v.verify_client_cert(&cert, &[], now).is_ok());
        let (other, _) = leaf_serial(&ca, &["127.0.0.1", "other.example"], 3);
        assert_eq!(
            v.verify_client_cert(&other, &[], now).unwrap_err(),
            rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    /// etcd's checkCertSAN on the peer listeners.
    #[tokio::test]
    async fn cert_san_must_name_the_remote_address() {
        let ca = ca();
        let at = |ip: &str| Some(format!("{ip}:40000").parse().unwrap());
        let (ip_only, _) = leaf_serial(&ca, &["127.0.0.1"], 1);
        assert_eq!(check_cert_san(&ip_only, at("127.0.0.1")).await, Ok(()));
        assert_eq!(
            check_cert_san(&ip_only, at("127.0.0.2")).await.unwrap_err(),
            "x509: certificate is valid for 127.0.0.1, not 127.0.0.2"
        );
        // An IPv4 peer seen through a dual-stack socket.
        assert_eq!(
            check_cert_san(&ip_only, at("[::ffff:127.0.0.1]")).await,
            Ok(())
        );
        // No IP or DNS SANs: nothing to check.
        let (none, _) = leaf_serial(&ca, &[], 2);
        assert_eq!(check_cert_san(&none, at("10.1.2.3")).await, Ok(()));
        // A DNS SAN whose forward lookup gives the address (/etc/hosts' localhost).
        let (dns, _) = leaf_serial(&ca, &["localhost"], 3);
        assert_eq!(check_cert_san(&dns, at("127.0.0.1")).await, Ok(()));
        let (elsewhere, _) = leaf_serial(&ca, &["peer.invalid"], 4);
        let e = check_cert_san(&elsewhere, at("127.0.0.1"))
            .await
            .unwrap_err();
        assert!(
            e.starts_with("tls: \"127.0.0.1\" does not match any of DNSNames [\"peer.invalid\"]"),
            "{e}"
        );
        // A unix socket's peer has no address to match.
        assert!(check_cert_san(&ip_only, None).await.is_err());
    }
}
