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

/// Whether a port asks the other side for a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    None,
    /// Handshakes without a certificate from `ca` are refused.
    Require {
        ca: String,
        /// The CN the certificate must carry (`--peer-cert-allowed-cn`), if any.
        allowed_cn: Option<String>,
    },
}

/// A listening port's TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerTls {
    pub cert: CertSource,
    pub client_auth: ClientAuth,
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

fn client_auth(
    info: &TlsInfo,
    flags: (&'static str, &'static str),
) -> Result<ClientAuth, TlsError> {
    if !info.client_cert_auth {
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
        allowed_cn: (!info.allowed_cn.is_empty()).then(|| info.allowed_cn.clone()),
    })
}

/// Takes every TLS decision for `cfg`.
pub fn plan(cfg: &Config) -> Result<TlsPlan, TlsError> {
    if cfg.self_signed_cert_validity == 0 {
        return Err(TlsError::Validity);
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
        },
        cipher_suites: cfg.cipher_suites.clone(),
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
                allowed_cn: None
            }
        );
        let peer = p.peer.unwrap();
        assert_eq!(
            peer.client_auth,
            ClientAuth::Require {
                ca: "ca-peer.crt".into(),
                allowed_cn: Some("etcd".into())
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
}
