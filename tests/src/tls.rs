//! Certificates made in the test (rcgen), and TLS clients run as processes: curl for the HTTP
//! endpoints, `openssl s_client` to look at a port's handshake, etcdctl's TLS flags.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// What a client presents and trusts.
#[derive(Clone, Debug, Default)]
pub struct ClientFiles {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Skip verifying the server (auto TLS).
    pub insecure: bool,
}

impl ClientFiles {
    /// etcdctl's flags for these files (`--cacert --cert --key`, `--insecure-skip-tls-verify`).
    pub fn etcdctl_args(&self) -> Vec<String> {
        let mut a = Vec::new();
        if let Some(p) = &self.ca {
            a.push(format!("--cacert={}", p.display()));
        }
        if let Some(p) = &self.cert {
            a.push(format!("--cert={}", p.display()));
        }
        if let Some(p) = &self.key {
            a.push(format!("--key={}", p.display()));
        }
        if self.insecure {
            // etcdctl 3.4 ignores --insecure-skip-tls-verify unless --insecure-transport=false.
            a.push("--insecure-transport=false".into());
            a.push("--insecure-skip-tls-verify".into());
        }
        a
    }

    fn curl_args(&self) -> Vec<String> {
        let mut a = Vec::new();
        for (flag, p) in [
            ("--cacert", &self.ca),
            ("--cert", &self.cert),
            ("--key", &self.key),
        ] {
            if let Some(p) = p {
                a.push(flag.to_string());
                a.push(p.display().to_string());
            }
        }
        if self.insecure {
            a.push("--insecure".into());
        }
        a
    }
}

/// `GET url` with curl and `files`: (status, body), or curl's error and exit code.
pub fn curl(url: &str, files: &ClientFiles) -> Result<(u16, String), String> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "3", "-w", "\n%{http_code}"])
        .args(files.curl_args())
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running curl: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "curl {url} exited {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    Ok((code.trim().parse().unwrap_or(0), body.to_string()))
}

/// `openssl s_client -connect addr` with `extra` arguments: whether the handshake succeeded,
/// and everything it printed.
pub fn s_client(addr: &str, extra: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", addr])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("running openssl s_client");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A certificate authority made for one test.
pub struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl Ca {
    pub fn new(cn: &str) -> Ca {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// Writes the CA certificate to `dir/name` and returns the path.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, self.cert.pem()).unwrap();
        p
    }

    /// A leaf for `hosts` (IP or DNS SANs), usable as server and client certificate, with
    /// subject CN `cn`; `expired` makes it valid only in 2000. Returns (cert PEM, key PEM).
    pub fn issue(&self, cn: &str, hosts: &[&str], expired: bool) -> (String, String) {
        self.issue_serial(cn, hosts, expired, None)
    }

    /// `issue` with the serial number `serial` when given (else rcgen's random one).
    pub fn issue_serial(
        &self,
        cn: &str,
        hosts: &[&str],
        expired: bool,
        serial: Option<u64>,
    ) -> (String, String) {
        let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        let mut p = rcgen::CertificateParams::new(hosts).unwrap();
        p.serial_number = serial.map(rcgen::SerialNumber::from);
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::DigitalSignature,
            rcgen::KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        if expired {
            p.not_before = rcgen::date_time_ymd(2000, 1, 1);
            p.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A certificate revocation list signed by this CA listing `serials`, as PEM.
    pub fn crl_pem(&self, serials: &[u64]) -> String {
        rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2024, 1, 1),
            next_update: rcgen::date_time_ymd(2024, 2, 1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from(*s),
                    revocation_time: rcgen::date_time_ymd(2024, 1, 1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&self.cert, &self.key)
        .unwrap()
        .pem()
        .unwrap()
    }

    /// `issue`, written to `dir/<name>.crt` and `dir/<name>.key`.
    pub fn issue_to(
        &self,
        dir: &Path,
        name: &str,
        cn: &str,
        hosts: &[&str],
        expired: bool,
    ) -> ClientFiles {
        let (c, k) = self.issue(cn, hosts, expired);
        write_pair(dir, name, c, k)
    }

    /// `issue_to` with the serial number `serial`.
    pub fn issue_serial_to(
        &self,
        dir: &Path,
        name: &str,
        cn: &str,
        hosts: &[&str],
        serial: u64,
    ) -> ClientFiles {
        let (c, k) = self.issue_serial(cn, hosts, false, Some(serial));
        write_pair(dir, name, c, k)
    }
}

/// Writes a certificate and key to `dir/<name>.crt` and `dir/<name>.key`.
fn write_pair(dir: &Path, name: &str, c: String, k: String) -> ClientFiles {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, c).unwrap();
    std::fs::write(&key, k).unwrap();
    ClientFiles {
        ca: None,
        cert: Some(cert),
        key: Some(key),
        insecure: false,
    }
}
