//! TLS decisions, pure: which certificate each port serves (files or auto TLS), whether the
//! port asks for client certificates and against which CA, and how a member verifies the peers
//! it dials. detcd-net turns a `TlsPlan` into rustls configurations; the simulated node takes
//! the same decisions and then speaks plaintext.

use crate::config::{Config, Url};

/// One side's TLS flags (etcd's `transport.TLSInfo` plus the auto-TLS switch).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsInfo {
    pub cert_file: String,
    pub key_file: String,
    pub trusted_ca_file: String,
    pub client_cert_auth: bool,
    pub auto_tls: bool,
    /// `--peer-cert-allowed-cn` (peer side only): the CN a peer's client certificate must carry.
    pub allowed_cn: String,
    /// `--client-cert-allowed-hostname` / `--peer-cert-allowed-hostname`: a host name or IP
    /// address the other side's certificate must be valid for.
    pub allowed_hostname: String,
    /// `--client-crl-file` / `--peer-crl-file`: certificates whose serial it lists are refused.
    pub crl_file: String,
    /// `--experimental-peer-skip-client-san-verification` (peer side only).
    pub skip_client_san_verify: bool,
}

impl TlsInfo {
    /// No certificate files given (etcd's `TLSInfo.Empty`).
    pub fn empty(&self) -> bool {
        self.cert_file.is_empty() && self.key_file.is_empty()
    }
}

/// Where a port's own certificate comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertSource {
    /// PEM files, re-read when they change.
    Files { cert: String, key: String },
    /// Self-signed, generated once into `dir` (`cert.pem`, `key.pem`) and reused.
    Auto {
        dir: String,
        /// SANs: IP addresses become IP SANs, anything else DNS SANs.
        hosts: Vec<String>,
        validity_years: u32,
    },
}

/// Which certificates a port accepts beyond the CA check (etcd's `TLSInfo.AllowedCN` and
/// `AllowedHostname`, mutually exclusive there too). etcd 3.5 takes comma-separated lists
/// (`AllowedCNs`, `AllowedHostnames`: one match admits); a 3.4 single value is a list of one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Allowed {
    /// The subject CN must be exactly one of these.
    Cn(Vec<String>),
    /// The certificate must be valid for one of these host names or IP addresses (Go's
    /// `VerifyHostname`).
    Hostname(Vec<String>),
}

/// A comma-separated flag value as etcd 3.5's `flags.StringsFromFlag` gives it.
fn list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .collect()
}

/// Whether a port asks the other side for a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    None,
    /// Handshakes without a certificate from `ca` are refused.
    Require {
        ca: String,
        /// The CN or host name the certificate must carry, if any.
        allowed: Option<Allowed>,
        /// The CRL file (`--client-crl-file` / `--peer-crl-file`), if any: a presented
        /// certificate whose serial it lists is refused.
        crl: Option<String>,
    },
}

/// A listening port's TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerTls {
    pub cert: CertSource,
    pub client_auth: ClientAuth,
    /// etcd's `checkSAN` (the peer listeners, unless
    /// `--experimental-peer-skip-client-san-verification`): a presented certificate with IP or
    /// DNS SANs must be valid for the connection's remote address.
    pub check_san: bool,
}

/// A TLS protocol version detcd (rustls) speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

impl TlsVersion {
    /// etcd 3.5's `tlsutil.GetTLSVersion`: `""` (the default), `TLS1.2` or `TLS1.3`; anything
    /// else (`TLS1.0` and `TLS1.1` too) is refused with etcd's words.
    pub fn parse(s: &str) -> Result<Option<TlsVersion>, String> {
        match s {
            "" => Ok(None),
            "TLS1.2" => Ok(Some(TlsVersion::Tls12)),
            "TLS1.3" => Ok(Some(TlsVersion::Tls13)),
            _ => Err(format!(
                "unexpected TLS version {s:?} (must be one of: TLS1.2, TLS1.3)"
            )),
        }
    }

    /// etcd's name of the version (`TLS1.2`).
    pub fn as_str(self) -> &'static str {
        match self {
            TlsVersion::Tls12 => "TLS1.2",
            TlsVersion::Tls13 => "TLS1.3",
        }
    }
}

/// `--tls-min-version` and `--tls-max-version` (etcd 3.5); `None`: the default (TLS 1.2 at
/// least, the newest the library has at most).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsVersions {
    pub min: Option<TlsVersion>,
    pub max: Option<TlsVersion>,
}

impl TlsVersions {
    /// The versions to offer and accept, newest first (never empty once `plan` has checked
    /// min <= max).
    pub fn enabled(&self) -> Vec<TlsVersion> {
        let min = self.min.unwrap_or(TlsVersion::Tls12);
        let max = self.max.unwrap_or(TlsVersion::Tls13);
        [TlsVersion::Tls13, TlsVersion::Tls12]
            .into_iter()
            .filter(|v| *v >= min && *v <= max)
            .collect()
    }
}

/// How a member checks the peers it dials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerVerify {
    /// The peer's certificate must chain to this CA and name the host dialed.
    Ca(String),
    /// Auto TLS: encrypt without authenticating (etcd's `InsecureSkipVerify` for self-signed).
    SkipVerify,
    /// No peer TLS configured: https peers cannot be verified (connections to them fail).
    Unconfigured,
    /// DNS SRV discovery with peer certificates and no `--peer-trusted-ca-file`: the system's
    /// CA certificates, and every peer must present a certificate for `server_name`, the SRV
    /// domain (etcd sets `PeerTLSInfo.ServerName` to `--discovery-srv`; the guide's "DNS
    /// discovery" note: the domain must be in the certificates' SAN).
    SystemRoots { server_name: String },
}

/// How a member dials `https://` peers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerDial {
    pub verify: PeerVerify,
    /// The certificate presented to peers (the member's peer certificate), if any.
    pub cert: Option<CertSource>,
    /// `--peer-cert-allowed-cn` / `--peer-cert-allowed-hostname`, checked on the certificates
    /// of the members dialed too (etcd's VerifyPeerCertificate sits in baseConfig, which its
    /// client config shares).
    pub allowed: Option<Allowed>,
}

/// Every TLS decision of a member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsPlan {
    /// For the `https://` client listeners (None: TLS not configured on the client side).
    pub client: Option<ServerTls>,
    /// For the `https://` peer listeners.
    pub peer: Option<ServerTls>,
    pub peer_dial: PeerDial,
    /// TLS 1.2 cipher suites by Go name; empty: the defaults. TLS 1.3 suites are always on.
    pub cipher_suites: Vec<String>,
    /// The protocol versions of every listener and peer dial.
    pub versions: TlsVersions,
    /// Warnings to log (e.g. auto TLS ignored because files were given).
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    #[error("TLS key/cert (--cert-file, --key-file) must be provided for client url {0} with HTTPS scheme")]
    ClientCertMissing(String),
    #[error("TLS key/cert (--peer-cert-file, --peer-key-file) must be provided for peer url {0} with HTTPS scheme")]
    PeerCertMissing(String),
    #[error("--{cert_flag} and --{key_flag} must be given together")]
    HalfPair {
        cert_flag: &'static str,
        key_flag: &'static str,
    },
    #[error(
        "--{auth_flag} requires --{ca_flag} (detcd does not use the system's root certificates)"
    )]
    AuthWithoutCa {
        auth_flag: &'static str,
        ca_flag: &'static str,
    },
    #[error("--peer-cert-file without --peer-trusted-ca-file: peers could not be verified (detcd does not use the system's root certificates)")]
    PeerWithoutCa,
    #[error("unexpected TLS cipher suite {name:?}; supported: {}", SUPPORTED_CIPHER_SUITES.join(", "))]
    CipherSuite { name: String },
    #[error("--self-signed-cert-validity must be at least 1 (years)")]
    Validity,
    /// etcd's `TLSInfo.baseConfig` refusal (the listener fails, etcd exits 1).
    #[error(
        "AllowedCN and AllowedHostname are mutually exclusive (cn={cn:?}, hostname={hostname:?})"
    )]
    AllowedCnAndHostname { cn: String, hostname: String },
    /// etcd 3.5's `Config.Validate`.
    #[error("min version ({min}) is greater than max version ({max})")]
    MinAboveMax {
        min: &'static str,
        max: &'static str,
    },
    /// etcd 3.5's `Config.Validate`: Go cannot choose TLS 1.3 suites.
    #[error("cipher suites cannot be configured when only TLS1.3 is enabled")]
    CipherSuitesWithTls13Only,
}

/// The TLS 1.2 suites detcd (rustls) implements, by their Go names.
pub const SUPPORTED_CIPHER_SUITES: &[&str] = &[
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
];

/// Parses `--cipher-suites` (comma separated Go names).
pub fn parse_cipher_suites(s: &str) -> Result<Vec<String>, TlsError> {
    let mut out = Vec::new();
    for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if !SUPPORTED_CIPHER_SUITES.contains(&name) {
            return Err(TlsError::CipherSuite {
                name: name.to_string(),
            });
        }
        out.push(name.to_string());
    }
    Ok(out)
}

/// Hosts of `urls`, deduplicated in order (etcd's SelfCert host list).
pub fn san_hosts(urls: &[Url]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for u in urls {
        if !out.contains(&u.host) {
            out.push(u.host.clone());
        }
    }
    out
}

fn join(dir: &str, sub: &str) -> String {
    std::path::Path::new(dir)
        .join("fixtures")
        .join(sub)
        .to_string_lossy()
        .into_owned()
}

/// A side's certificate: files win over auto TLS; auto TLS generates into
/// `<data-dir>/fixtures/<sub>` for the hosts of `listen`.
fn cert_source(
    info: &TlsInfo,
    cfg: &Config,
    sub: &str,
    listen: &[Url],
    flags: (&'static str, &'static str, &'static str),
    warnings: &mut Vec<String>,
) -> Result<Option<CertSource>, TlsError> {
    if info.cert_file.is_empty() != info.key_file.is_empty() {
        return Err(TlsError::HalfPair {
            cert_flag: flags.0,
            key_flag: flags.1,
        });
    }
    if !info.empty() {
        if info.auto_tls {
            warnings.push(format!(
                "ignoring --{} since --{} and --{} are given",
                flags.2, flags.0, flags.1
            ));
        }
        return Ok(Some(CertSource::Files {
            cert: info.cert_file.clone(),
            key: info.key_file.clone(),
        }));
    }
    if info.auto_tls {
        return Ok(Some(CertSource::Auto {
            dir: join(&cfg.data_dir, sub),
            hosts: san_hosts(listen),
            validity_years: cfg.self_signed_cert_validity,
        }));
    }
    Ok(None)
}

/// The allowed CNs or host names of one side (both set is refused by [`client_auth`]). An
/// empty list (also `","`) checks nothing, as etcd 3.5's len() tests.
fn allowed_names(info: &TlsInfo) -> Option<Allowed> {
    let (cns, hostnames) = (list(&info.allowed_cn), list(&info.allowed_hostname));
    match (cns.is_empty(), hostnames.is_empty()) {
        (false, _) => Some(Allowed::Cn(cns)),
        (true, false) => Some(Allowed::Hostname(hostnames)),
        (true, true) => None,
    }
}

fn client_auth(
    info: &TlsInfo,
    flags: (&'static str, &'static str),
) -> Result<ClientAuth, TlsError> {
    if !list(&info.allowed_cn).is_empty() && !list(&info.allowed_hostname).is_empty() {
        return Err(TlsError::AllowedCnAndHostname {
            cn: info.allowed_cn.clone(),
            hostname: info.allowed_hostname.clone(),
        });
    }
    let allowed = allowed_names(info);
    // etcd's ServerConfig (pkg/transport/listener.go): a trusted CA file alone already
    // requires a verified client certificate (etcd issue 11124 kept it so).
    if !info.client_cert_auth && info.trusted_ca_file.is_empty() {
        return Ok(ClientAuth::None);
    }
    if info.trusted_ca_file.is_empty() {
        return Err(TlsError::AuthWithoutCa {
            auth_flag: flags.0,
            ca_flag: flags.1,
        });
    }
    Ok(ClientAuth::Require {
        ca: info.trusted_ca_file.clone(),
        allowed,
        crl: (!info.crl_file.is_empty()).then(|| info.crl_file.clone()),
    })
}

/// Takes every TLS decision for `cfg`.
pub fn plan(cfg: &Config) -> Result<TlsPlan, TlsError> {
    if cfg.self_signed_cert_validity == 0 {
        return Err(TlsError::Validity);
    }
    // etcd 3.5's Config.Validate.
    if let (Some(min), Some(max)) = (cfg.tls_versions.min, cfg.tls_versions.max) {
        if min > max {
            return Err(TlsError::MinAboveMax {
                min: min.as_str(),
                max: max.as_str(),
            });
        }
    }
    if cfg.tls_versions.min == Some(TlsVersion::Tls13) && !cfg.cipher_suites.is_empty() {
        return Err(TlsError::CipherSuitesWithTls13Only);
    }
    let mut warnings = Vec::new();
    let client_cert = cert_source(
        &cfg.client_tls,
        cfg,
        "client",
        &cfg.listen_client_urls,
        ("cert-file", "key-file", "auto-tls"),
        &mut warnings,
    )?;
    let peer_cert = cert_source(
        &cfg.peer_tls,
        cfg,
        "peer",
        &cfg.listen_peer_urls,
        ("peer-cert-file", "peer-key-file", "peer-auto-tls"),
        &mut warnings,
    )?;
    let https = |urls: &[Url]| urls.iter().find(|u| u.scheme.is_tls()).cloned();
    let client = match (&client_cert, https(&cfg.listen_client_urls)) {
        (None, Some(u)) => return Err(TlsError::ClientCertMissing(u.to_string())),
        (None, None) => None,
        (Some(cert), _) => Some(ServerTls {
            cert: cert.clone(),
            client_auth: client_auth(&cfg.client_tls, ("client-cert-auth", "trusted-ca-file"))?,
            // etcd 3.4 and 3.5 serve clients through NewTLSListener, without checkSAN.
            check_san: false,
        }),
    };
    let peer = match (&peer_cert, https(&cfg.listen_peer_urls)) {
        (None, Some(u)) => return Err(TlsError::PeerCertMissing(u.to_string())),
        (None, None) => None,
        (Some(cert), _) => Some(ServerTls {
            cert: cert.clone(),
            client_auth: client_auth(
                &cfg.peer_tls,
                ("peer-client-cert-auth", "peer-trusted-ca-file"),
            )?,
            // rafthttp.NewListener → transport.wrapTLS: checkSAN unless skipped.
            check_san: !cfg.peer_tls.skip_client_san_verify,
        }),
    };
    let verify = match &peer_cert {
        Some(CertSource::Auto { .. }) => PeerVerify::SkipVerify,
        Some(CertSource::Files { .. })
            if cfg.peer_tls.trusted_ca_file.is_empty() && !cfg.srv.domain.is_empty() =>
        {
            PeerVerify::SystemRoots {
                server_name: cfg.srv.domain.clone(),
            }
        }
        Some(CertSource::Files { .. }) if cfg.peer_tls.trusted_ca_file.is_empty() => {
            return Err(TlsError::PeerWithoutCa)
        }
        Some(CertSource::Files { .. }) => PeerVerify::Ca(cfg.peer_tls.trusted_ca_file.clone()),
        None if !cfg.peer_tls.trusted_ca_file.is_empty() => {
            PeerVerify::Ca(cfg.peer_tls.trusted_ca_file.clone())
        }
        None => PeerVerify::Unconfigured,
    };
    Ok(TlsPlan {
        client,
        peer,
        peer_dial: PeerDial {
            verify,
            cert: peer_cert,
            allowed: allowed_names(&cfg.peer_tls),
        },
        cipher_suites: cfg.cipher_suites.clone(),
        versions: cfg.tls_versions,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_urls;

    fn cfg(client: &str, peer: &str) -> Config {
        Config {
            data_dir: "/d".into(),
            listen_client_urls: parse_urls(client).unwrap(),
            listen_peer_urls: parse_urls(peer).unwrap(),
            ..Config::default()
        }
    }

    #[test]
    fn srv_without_peer_ca_expects_the_domain() {
        let mut c = cfg("http://127.0.0.1:2379", "https://127.0.0.1:2380");
        c.peer_tls = TlsInfo {
            cert_file: "p.crt".into(),
            key_file: "p.key".into(),
            ..TlsInfo::default()
        };
        assert_eq!(plan(&c), Err(TlsError::PeerWithoutCa));
        c.srv.domain = "example.com".into();
        assert_eq!(
            plan(&c).unwrap().peer_dial.verify,
            PeerVerify::SystemRoots {
                server_name: "example.com".into()
            }
        );
        c.peer_tls.trusted_ca_file = "ca.crt".into();
        assert_eq!(
            plan(&c).unwrap().peer_dial.verify,
            PeerVerify::Ca("ca.crt".into())
        );
    }

    /// etcd's ServerConfig: a trusted CA file requires a verified client certificate even
    /// without `--client-cert-auth` (on both ports), so its CRL and allowed names apply.
    #[test]
    fn a_trusted_ca_alone_requires_client_certificates() {
        let mut c = cfg("https://127.0.0.1:2379", "https://127.0.0.1:2380");
        for tls in [&mut c.client_tls, &mut c.peer_tls] {
            *tls = TlsInfo {
                cert_file: "s.crt".into(),
                key_file: "s.key".into(),
                trusted_ca_file: "ca.crt".into(),
                crl_file: "r.crl".into(),
                ..TlsInfo::default()
            };
        }
        let p = plan(&c).unwrap();
        for side in [p.client.unwrap(), p.peer.unwrap()] {
            assert!(
                matches!(&side.client_auth, ClientAuth::Require { ca, crl: Some(_), .. } if ca == "ca.crt"),
                "{:?}",
                side.client_auth
            );
        }
        // An allowed list of nothing but commas checks nothing (etcd 3.5).
        c.client_tls.allowed_cn = ",".into();
        assert!(matches!(
            plan(&c).unwrap().client.unwrap().client_auth,
            ClientAuth::Require { allowed: None, .. }
        ));
        c.client_tls.trusted_ca_file.clear();
        c.client_tls.allowed_cn.clear();
        assert_eq!(
            plan(&c).unwrap().client.unwrap().client_auth,
            ClientAuth::None
        );
    }

    #[test]
    fn plaintext_by_default() {
        let p = plan(&Config::default()).unwrap();
        assert_eq!(p.client, None);
        assert_eq!(p.peer, None);
        assert_eq!(p.peer_dial.verify, PeerVerify::Unconfigured);
    }

    #[test]
    fn https_needs_a_certificate() {
        let c = cfg("https://127.0.0.1:2379", "http://127.0.0.1:2380");
        assert_eq!(
            plan(&c).unwrap_err().to_string(),
            "TLS key/cert (--cert-file, --key-file) must be provided for client url https://127.0.0.1:2379 with HTTPS scheme"
        );
        let c = cfg("http://127.0.0.1:2379", "https://127.0.0.1:2380");
        assert!(matches!(plan(&c), Err(TlsError::PeerCertMissing(_))));
    }

    #[test]
    fn guide_self_signed() {
        let mut c = cfg(
            "https://10.0.1.10:2379,https://127.0.0.1:2379",
            "https://10.0.1.10:2380",
        );
        c.client_tls = TlsInfo {
            cert_file: "c.crt".into(),
            key_file: "c.key".into(),
            trusted_ca_file: "ca.crt".into(),
            client_cert_auth: true,
            ..TlsInfo::default()
        };
        c.peer_tls = TlsInfo {
            cert_file: "p.crt".into(),
            key_file: "p.key".into(),
            trusted_ca_file: "ca-peer.crt".into(),
            client_cert_auth: true,
            allowed_cn: "etcd".into(),
            ..TlsInfo::default()
        };
        let p = plan(&c).unwrap();
        let client = p.client.unwrap();
        assert_eq!(
            client.cert,
            CertSource::Files {
                cert: "c.crt".into(),
                key: "c.key".into()
            }
        );
        assert_eq!(
            client.client_auth,
            ClientAuth::Require {
                ca: "ca.crt".into(),
                allowed: None,
                crl: None
            }
        );
        let peer = p.peer.unwrap();
        assert_eq!(
            peer.client_auth,
            ClientAuth::Require {
                ca: "ca-peer.crt".into(),
                allowed: Some(Allowed::Cn(vec!["etcd".into()])),
                crl: None
            }
        );
        assert_eq!(p.peer_dial.verify, PeerVerify::Ca("ca-peer.crt".into()));
        assert_eq!(
            p.peer_dial.cert,
            Some(CertSource::Files {
                cert: "p.crt".into(),
                key: "p.key".into()
            })
        );
    }

    #[test]
    fn auto_tls() {
        let mut c = cfg(
            "https://10.0.1.10:2379,https://127.0.0.1:2379",
            "https://10.0.1.10:2380",
        );
        c.client_tls.auto_tls = true;
        c.peer_tls.auto_tls = true;
        let p = plan(&c).unwrap();
        assert_eq!(
            p.client.unwrap().cert,
            CertSource::Auto {
                dir: "/d/fixtures/client".into(),
                hosts: vec!["10.0.1.10".into(), "127.0.0.1".into()],
                validity_years: 1
            }
        );
        assert_eq!(
            p.peer.unwrap().cert,
            CertSource::Auto {
                dir: "/d/fixtures/peer".into(),
                hosts: vec!["10.0.1.10".into()],
                validity_years: 1
            }
        );
        assert_eq!(p.peer_dial.verify, PeerVerify::SkipVerify);
    }

    #[test]
    fn files_win_over_auto_tls() {
        let mut c = cfg("https://127.0.0.1:2379", "https://127.0.0.1:2380");
        c.client_tls = TlsInfo {
            cert_file: "c".into(),
            key_file: "k".into(),
            auto_tls: true,
            ..Default::default()
        };
        c.peer_tls = TlsInfo {
            cert_file: "pc".into(),
            key_file: "pk".into(),
            trusted_ca_file: "ca".into(),
            auto_tls: true,
            ..Default::default()
        };
        let p = plan(&c).unwrap();
        assert_eq!(
            p.client.unwrap().cert,
            CertSource::Files {
                cert: "c".into(),
                key: "k".into()
            }
        );
        assert_eq!(p.peer_dial.verify, PeerVerify::Ca("ca".into()));
        assert_eq!(p.warnings.len(), 2);
    }

    #[test]
    fn refusals() {
        let mut c = cfg("https://127.0.0.1:2379", "http://127.0.0.1:2380");
        c.client_tls = TlsInfo {
            cert_file: "c".into(),
            ..Default::default()
        };
        assert!(matches!(plan(&c), Err(TlsError::HalfPair { .. })));
        c.client_tls.key_file = "k".into();
        c.client_tls.client_cert_auth = true;
        assert!(matches!(plan(&c), Err(TlsError::AuthWithoutCa { .. })));
        assert!(parse_cipher_suites("TLS_RSA_WITH_RC4_128_SHA").is_err());
        assert_eq!(
            parse_cipher_suites(
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"
            )
            .unwrap()
            .len(),
            2
        );
    }

    #[test]
    fn crl_allowed_hostname_and_san_check() {
        let mut c = cfg("https://127.0.0.1:2379", "https://127.0.0.1:2380");
        for (info, cert) in [(&mut c.client_tls, "c"), (&mut c.peer_tls, "p")] {
            *info = TlsInfo {
                cert_file: cert.into(),
                key_file: format!("{cert}.key"),
                trusted_ca_file: "ca".into(),
                client_cert_auth: true,
                crl_file: format!("{cert}.crl"),
                ..Default::default()
            };
        }
        c.client_tls.allowed_hostname = "client.example, 10.0.0.1".into();
        let p = plan(&c).unwrap();
        let (client, peer) = (p.client.unwrap(), p.peer.unwrap());
        assert_eq!(
            client.client_auth,
            ClientAuth::Require {
                ca: "ca".into(),
                allowed: Some(Allowed::Hostname(vec![
                    "client.example".into(),
                    "10.0.0.1".into()
                ])),
                crl: Some("c.crl".into())
            }
        );
        assert!(!client.check_san, "etcd checks SANs on peer listeners only");
        assert!(peer.check_san);
        assert!(matches!(
            peer.client_auth,
            ClientAuth::Require { crl: Some(ref f), allowed: None, .. } if f == "p.crl"
        ));
        c.peer_tls.skip_client_san_verify = true;
        assert!(!plan(&c).unwrap().peer.unwrap().check_san);
        c.peer_tls.allowed_cn = "etcd".into();
        c.peer_tls.allowed_hostname = "h".into();
        assert_eq!(
            plan(&c).unwrap_err().to_string(),
            "AllowedCN and AllowedHostname are mutually exclusive (cn=\"etcd\", hostname=\"h\")"
        );
    }

    #[test]
    fn tls_versions() {
        assert_eq!(TlsVersion::parse(""), Ok(None));
        assert_eq!(TlsVersion::parse("TLS1.3"), Ok(Some(TlsVersion::Tls13)));
        assert_eq!(
            TlsVersion::parse("TLS1.1").unwrap_err(),
            "unexpected TLS version \"TLS1.1\" (must be one of: TLS1.2, TLS1.3)"
        );
        let mut c = Config::default();
        assert_eq!(
            plan(&c).unwrap().versions.enabled(),
            vec![TlsVersion::Tls13, TlsVersion::Tls12]
        );
        c.tls_versions = TlsVersions {
            min: Some(TlsVersion::Tls13),
            max: Some(TlsVersion::Tls12),
        };
        assert_eq!(
            plan(&c).unwrap_err().to_string(),
            "min version (TLS1.3) is greater than max version (TLS1.2)"
        );
        c.tls_versions.max = None;
        assert_eq!(
            plan(&c).unwrap().versions.enabled(),
            vec![TlsVersion::Tls13]
        );
        c.cipher_suites = vec!["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256".into()];
        assert_eq!(plan(&c), Err(TlsError::CipherSuitesWithTls13Only));
        c.tls_versions = TlsVersions {
            min: None,
            max: Some(TlsVersion::Tls12),
        };
        assert_eq!(
            plan(&c).unwrap().versions.enabled(),
            vec![TlsVersion::Tls12]
        );
    }
}
