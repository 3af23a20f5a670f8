//! `--config-file`: etcd's YAML configuration file (etcd.conf.yml.sample), read into the same
//! flag-name → text pairs the command line gives, so one parser checks both.
//!
//! etcd (embed/config.go `configFromFile`) unmarshals the file into its Config with the
//! flags' names as keys, plus two nested sections, `client-transport-security` and
//! `peer-transport-security`. Like etcd, unknown keys do not stop the start (here each gets a
//! warning). Where etcd's JSON decoding is stricter than needed, this is lenient: a number
//! may be quoted or not, and a duration may be Go's duration text (`5s`) as well as the
//! integer nanoseconds etcd's `time.Duration` fields take.

use std::collections::BTreeMap;
use yaml_rust2::{Yaml, YamlLoader};

/// The file's settings: flag name → value in the flag's syntax.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ConfigFile {
    pub values: BTreeMap<String, String>,
    /// Keys that are not etcd settings, one line each.
    pub warnings: Vec<String>,
}

/// Keys of the two TLS sections → the flags they set (client, peer). etcd 3.4 has the first
/// five; 3.5 added the rest.
const SECURITY_KEYS: &[(&str, &str, &str)] = &[
    ("cert-file", "cert-file", "peer-cert-file"),
    ("key-file", "key-file", "peer-key-file"),
    (
        "client-cert-auth",
        "client-cert-auth",
        "peer-client-cert-auth",
    ),
    ("trusted-ca-file", "trusted-ca-file", "peer-trusted-ca-file"),
    ("auto-tls", "auto-tls", "peer-auto-tls"),
    ("crl-file", "client-crl-file", "peer-crl-file"),
    (
        "client-cert-file",
        "client-cert-file",
        "peer-client-cert-file",
    ),
    ("client-key-file", "client-key-file", "peer-client-key-file"),
    ("allowed-cn", "", "peer-cert-allowed-cn"),
    (
        "allowed-hostname",
        "client-cert-allowed-hostname",
        "peer-cert-allowed-hostname",
    ),
    (
        "skip-client-san-verify",
        "",
        "experimental-peer-skip-client-san-verification",
    ),
];

/// Parses `text`. `is_flag(name)` says whether a top-level key is a setting detcd knows;
/// `is_duration(name)` whether its value is a Go duration (an integer there is nanoseconds).
/// Errors: YAML syntax, a top level that is not a mapping, a section or value of the wrong
/// shape; each names the key.
pub fn parse(
    text: &str,
    is_flag: &dyn Fn(&str) -> bool,
    is_duration: &dyn Fn(&str) -> bool,
) -> Result<ConfigFile, String> {
    let docs = YamlLoader::load_from_str(text).map_err(|e| format!("invalid YAML: {e}"))?;
    let mut out = ConfigFile::default();
    let root = match docs.into_iter().next() {
        None | Some(Yaml::Null) => return Ok(out),
        Some(Yaml::Hash(h)) => h,
        Some(_) => return Err("the top level must be a mapping of settings".to_string()),
    };
    let mut deprecated_log_output = None;
    for (key, value) in root {
        let Yaml::String(key) = key else {
            return Err(format!("keys must be strings, got {key:?}"));
        };
        match key.as_str() {
            "client-transport-security" | "peer-transport-security" => {
                let peer = key.starts_with("peer");
                let section = match value {
                    Yaml::Null => continue,
                    Yaml::Hash(h) => h,
                    _ => return Err(format!("{key} must be a mapping")),
                };
                for (sub, v) in section {
                    let Yaml::String(sub) = sub else {
                        return Err(format!("{key}: keys must be strings, got {sub:?}"));
                    };
                    let flag = SECURITY_KEYS
                        .iter()
                        .find(|(k, _, _)| *k == sub)
                        .map(|(_, client, peer_flag)| if peer { *peer_flag } else { *client })
                        .filter(|f| !f.is_empty());
                    match flag {
                        Some(flag) => {
                            if let Some(v) = scalar(&format!("{key}.{sub}"), &v, false)? {
                                out.values.insert(flag.to_string(), v);
                            }
                        }
                        None => out
                            .warnings
                            .push(format!("unrecognized key {key}.{sub} in the config file")),
                    }
                }
            }
            // etcd 3.4's deprecated spelling of log-outputs.
            "log-output" => deprecated_log_output = scalar(&key, &value, false)?,
            "config-file" => {}
            k if is_flag(k) => {
                if let Some(v) = scalar(k, &value, is_duration(k))? {
                    out.values.insert(k.to_string(), v);
                }
            }
            k => out
                .warnings
                .push(format!("unrecognized key {k} in the config file")),
        }
    }
    if let Some(v) = deprecated_log_output {
        out.values.entry("log-outputs".to_string()).or_insert(v);
    }
    Ok(out)
}

/// One setting's value as flag text; None for null or an empty string (unset). Lists become
/// comma-separated, as the flags take them.
fn scalar(key: &str, value: &Yaml, duration: bool) -> Result<Option<String>, String> {
    let text = match value {
        Yaml::Null => return Ok(None),
        Yaml::String(s) => s.clone(),
        Yaml::Integer(n) if duration => format!("{n}ns"),
        Yaml::Integer(n) => n.to_string(),
        Yaml::Real(r) => r.clone(),
        Yaml::Boolean(b) => b.to_string(),
        Yaml::Array(items) => {
            let mut parts = Vec::with_capacity(items.len());
            for item in items {
                match scalar(key, item, duration)? {
                    Some(p) => parts.push(p),
                    None => return Err(format!("{key}: a list item is empty")),
                }
            }
            parts.join(",")
        }
        Yaml::Hash(_) => return Err(format!("{key} must be a value, not a mapping")),
        Yaml::Alias(_) | Yaml::BadValue => return Err(format!("{key}: unsupported YAML value")),
    };
    Ok((!text.is_empty()).then_some(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(text: &str) -> Result<ConfigFile, String> {
        parse(text, &|k| !k.starts_with("bogus"), &|k| {
            k.ends_with("interval")
        })
    }

    #[test]
    fn scalars_lists_sections_and_nulls() {
        let f = parse_all(
            "name: 'infra0'\nsnapshot-count: 10000\nstrict-reconfig-check: false\n\
             data-dir:\nlog-outputs: [stderr, /tmp/x.log]\nwatch-interval: 5000000000\n\
             client-transport-security:\n  cert-file: /c.crt\n  client-cert-auth: true\n\
             peer-transport-security:\n  trusted-ca-file: /ca.crt\n  allowed-cn: etcd\n\
             bogus-key: 1\n",
        )
        .unwrap();
        let v = |k: &str| f.values.get(k).map(String::as_str);
        assert_eq!(v("name"), Some("infra0"));
        assert_eq!(v("snapshot-count"), Some("10000"));
        assert_eq!(v("strict-reconfig-check"), Some("false"));
        assert_eq!(v("data-dir"), None);
        assert_eq!(v("log-outputs"), Some("stderr,/tmp/x.log"));
        assert_eq!(v("watch-interval"), Some("5000000000ns"));
        assert_eq!(v("cert-file"), Some("/c.crt"));
        assert_eq!(v("client-cert-auth"), Some("true"));
        assert_eq!(v("peer-trusted-ca-file"), Some("/ca.crt"));
        assert_eq!(v("peer-cert-allowed-cn"), Some("etcd"));
        assert_eq!(
            f.warnings,
            vec!["unrecognized key bogus-key in the config file"]
        );
    }

    #[test]
    fn malformed_files_are_refused_naming_the_problem() {
        assert!(parse_all("name: [unclosed")
            .unwrap_err()
            .starts_with("invalid YAML"));
        assert!(parse_all("- a\n- b\n").unwrap_err().contains("mapping"));
        assert!(parse_all("name:\n  nested: 1\n")
            .unwrap_err()
            .contains("name must be a value"));
        assert!(parse_all("client-transport-security: 3\n")
            .unwrap_err()
            .contains("client-transport-security must be a mapping"));
        assert_eq!(parse_all("").unwrap(), ConfigFile::default());
        assert_eq!(
            parse_all("# only a comment\n").unwrap(),
            ConfigFile::default()
        );
    }

    #[test]
    fn deprecated_log_output_fills_log_outputs_only_when_unset() {
        let f = parse_all("log-output: stdout\n").unwrap();
        assert_eq!(f.values.get("log-outputs").unwrap(), "stdout");
        let f = parse_all("log-output: stdout\nlog-outputs: [stderr]\n").unwrap();
        assert_eq!(f.values.get("log-outputs").unwrap(), "stderr");
    }
}
