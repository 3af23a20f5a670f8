//! etcd's discovery protocols as pure, sans-IO state machines: the member asks an existing
//! etcd cluster (the discovery service) who else is bootstrapping with the same token, and
//! builds its `--initial-cluster` from the answers (etcd-facts §5 and §12).
//!
//! - [`v2`]: etcd 3.4's `--discovery <url>` (the v2 keys API over HTTP), copied from etcd 3.4's
//!   `etcdserver/api/v2discovery/discovery.go` and the v2 client it drives (`client/client.go`,
//!   `client/keys.go`).
//! - [`v3`]: etcd 3.6's `--discovery-token` with `--discovery-endpoints` (the v3 KV and Watch
//!   API), copied from etcd 3.6's `server/etcdserver/api/v3discovery/discovery.go`.
//!
//! # The model
//!
//! Like quinn-proto, nothing here performs I/O, reads a clock, sleeps or draws randomness. The
//! caller (the net layer, or the simulator) drives a machine in a loop:
//!
//! ```text
//! loop {
//!     match machine.poll_step() {
//!         Some(Step::Send(request)) => machine.handle_response(perform(request).await),
//!         Some(Step::Sleep { ms, log }) => { emit(log); sleep(ms).await; machine.handle_slept() }
//!         Some(Step::Log(log)) => emit(log),
//!         Some(Step::Done(result)) => break result,
//!         None => unreachable!("every input is answered by a step"),
//!     }
//! }
//! ```
//!
//! At most one request (or, in v3, one watch) is outstanding at a time. Every input from the
//! network is checked; none of it can make a machine panic, and every queue and loop has a
//! bound (see each module's constants).
//!
//! # Logging
//!
//! Machines report what etcd logs as [`Log`] values: etcd 3.4's capnslog line in
//! [`Log::text`] and etcd's zap event (message and fields) in [`Log::msg`] / [`Log::fields`],
//! so the caller prints whichever `--logger` asks for.

pub mod v2;
pub mod v3;

pub use v2::{DiscoveryError, HttpRequest, HttpResponse, Method, Step, Transport, V2Discovery};
pub use v3::{KvReply, KvRequest, V3Discovery, V3DiscoveryError, V3Step, WatchUpdate};

use crate::config::{format_initial_cluster, InitialMember, Url};

/// etcd's `nRetries` (`uint(math.MaxUint32)`, both discovery packages): how many retries a
/// machine makes before it gives up with "discovery: too many retries". Machines take this by
/// default; tests lower it with `with_max_retries`.
pub const ETCD_MAX_RETRIES: u32 = u32::MAX;

/// etcd's `maxExpoentialRetries` (sic; `maxExponentialRetries` in 3.6): the backoff doubles up
/// to the 8th retry (256 s) and stays there.
pub const MAX_EXPONENTIAL_RETRIES: u32 = 8;

/// etcd's `logAndBackoffForRetry`: after the retry counter has been incremented to `retries`,
/// the member sleeps `2^min(retries, 8)` seconds. The first retry therefore waits 2 s, then 4 s,
/// 8 s, ... 256 s, and 256 s from then on (v2discovery/discovery.go `logAndBackoffForRetry`,
/// v3discovery/discovery.go `logAndBackoffForRetry`). Returns milliseconds.
pub fn backoff_ms(retries: u32) -> u64 {
    1000u64 << retries.min(MAX_EXPONENTIAL_RETRIES)
}

/// Go's `time.Duration.String()` for a whole number of milliseconds, as etcd prints backoffs:
/// `2s`, `1m4s`, `4m16s`, `1h0m0s`, `500ms`, `0s`.
pub fn go_duration(ms: u64) -> String {
    if ms == 0 {
        return "0s".to_string();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = ms / 1000;
    let frac = ms % 1000;
    let s = secs % 60;
    let m = (secs / 60) % 60;
    let h = secs / 3600;
    let sec_part = if frac == 0 {
        format!("{s}s")
    } else {
        let f = format!("{frac:03}");
        format!("{s}.{}s", f.trim_end_matches('0'))
    };
    if h > 0 {
        format!("{h}h{m}m{sec_part}")
    } else if m > 0 {
        format!("{m}m{sec_part}")
    } else {
        sec_part
    }
}

/// A log line etcd prints at this point of discovery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Log {
    /// The level of etcd's zap event (etcd 3.5+/detcd's `tracing` level).
    pub level: LogLevel,
    /// The line etcd 3.4's capnslog logger (`--logger capnslog`) prints, without prefix.
    /// v3 discovery exists only in etcd 3.6, which logs through zap alone: there this is the
    /// message followed by its fields as `key=value`.
    pub text: String,
    /// The message of etcd's zap event (`"msg"`).
    pub msg: String,
    /// The fields of etcd's zap event, in etcd's order, values as zap prints them.
    pub fields: Vec<(&'static str, String)>,
}

/// Severity of a [`Log`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    Info,
    Warn,
    Error,
}

impl Log {
    /// A zap-only event (etcd 3.6): the text is the message and its fields.
    pub(crate) fn zap(level: LogLevel, msg: &str, fields: Vec<(&'static str, String)>) -> Log {
        let mut text = msg.to_string();
        for (k, v) in &fields {
            text.push_str(&format!(" {k}={v}"));
        }
        Log {
            level,
            text,
            msg: msg.to_string(),
            fields,
        }
    }
}

/// The `config` string discovery registers for this member (etcd passes
/// `cfg.InitialPeerURLsMap.String()`, etcdserver/server.go): `name=url` for each advertised
/// peer URL, sorted, joined by `,`.
pub fn local_value(name: &str, advertised_peer_urls: &[Url]) -> String {
    format_initial_cluster(&[InitialMember {
        name: name.to_string(),
        peer_urls: advertised_peer_urls.to_vec(),
    }])
}

/// The member ID a member bootstrapping through v2 discovery registers under: etcd hashes its
/// advertised peer URLs with the whole discovery URL as the token (embed/config.go
/// `PeerURLsMapAndToken`: `token = cfg.Durl`; etcd-facts §1).
pub fn member_id_v2(advertised_peer_urls: &[Url], discovery_url: &str) -> u64 {
    crate::ids::member_id(advertised_peer_urls, discovery_url, None)
}

/// The member ID for v3 discovery: etcd 3.6 hashes the peer URLs with `--discovery-token`
/// (server/embed/config.go `PeerURLsMapAndToken`: `token = cfg.DiscoveryCfg.Token`).
pub fn member_id_v3(advertised_peer_urls: &[Url], discovery_token: &str) -> u64 {
    crate::ids::member_id(advertised_peer_urls, discovery_token, None)
}

// ---------------------------------------------------------------------------------------------
// Go's path and URL helpers, as the discovery code uses them.
// ---------------------------------------------------------------------------------------------

/// Go's `path.Clean`: the shortest equivalent slash-separated path (`//`, `.` and `..`
/// resolved lexically; `""` becomes `"."`).
pub(crate) fn path_clean(p: &str) -> String {
    if p.is_empty() {
        return ".".to_string();
    }
    let b = p.as_bytes();
    let n = b.len();
    let rooted = b[0] == b'/';
    let mut out: Vec<u8> = Vec::with_capacity(n);
    let (mut r, mut dotdot) = (0usize, 0usize);
    if rooted {
        out.push(b'/');
        r = 1;
        dotdot = 1;
    }
    while r < n {
        if b[r] == b'/' || (b[r] == b'.' && (r + 1 == n || b[r + 1] == b'/')) {
            // empty element or `.`
            r += 1;
        } else if b[r] == b'.' && b.get(r + 1) == Some(&b'.') && (r + 2 == n || b[r + 2] == b'/') {
            r += 2;
            if out.len() > dotdot {
                let mut w = out.len() - 1;
                while w > dotdot && out[w] != b'/' {
                    w -= 1;
                }
                out.truncate(w);
            } else if !rooted {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(b"..");
                dotdot = out.len();
            }
        } else {
            if (rooted && out.len() != 1) || (!rooted && !out.is_empty()) {
                out.push(b'/');
            }
            while r < n && b[r] != b'/' {
                out.push(b[r]);
                r += 1;
            }
        }
    }
    if out.is_empty() {
        return ".".to_string();
    }
    // Only whole ASCII '/' and '.' runs were removed: the bytes stay valid UTF-8.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Go's `path.Join`: the non-empty elements joined by `/`, cleaned; `""` if all are empty.
pub(crate) fn path_join(parts: &[&str]) -> String {
    let joined = parts
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("/");
    if joined.is_empty() {
        return String::new();
    }
    path_clean(&joined)
}

/// Go's `path.Base`: the last element (trailing slashes dropped); `"."` for `""`, `"/"` for
/// slashes only.
pub(crate) fn path_base(p: &str) -> &str {
    if p.is_empty() {
        return ".";
    }
    let t = p.trim_end_matches('/');
    if t.is_empty() {
        return "/";
    }
    match t.rfind('/') {
        Some(i) => &t[i + 1..],
        None => t,
    }
}

/// etcd's `pathutil.CanonicalURLPath` (pkg/pathutil/path.go): rooted, cleaned, with a trailing
/// slash kept.
pub(crate) fn canonical_url_path(p: &str) -> String {
    if p.is_empty() {
        return "/".to_string();
    }
    let p = if p.starts_with('/') {
        p.to_string()
    } else {
        format!("/{p}")
    };
    let mut np = path_clean(&p);
    if p.ends_with('/') && np != "/" {
        np.push('/');
    }
    np
}

/// Go's `url.QueryEscape` (as `url.Values.Encode` applies it): unreserved bytes kept, space as
/// `+`, everything else `%XX` in upper case.
pub(crate) fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The names that more than one registered value claims (`a=u1` and `a=u2` from two members),
/// in order of first appearance. A name repeated inside one value (a member with two peer URLs)
/// is not a duplicate.
pub(crate) fn duplicated_names<'a>(values: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut seen: Vec<(String, usize)> = Vec::new();
    for (i, v) in values.enumerate() {
        for entry in v.split(',').filter(|e| !e.is_empty()) {
            let name = entry.split_once('=').map_or(entry, |(n, _)| n);
            match seen.iter_mut().find(|(n, _)| n == name) {
                Some((_, owner)) if *owner != i => *owner = usize::MAX,
                Some(_) => {}
                None => seen.push((name.to_string(), i)),
            }
        }
    }
    seen.into_iter()
        .filter(|(_, owner)| *owner == usize::MAX)
        .map(|(n, _)| n)
        .collect()
}

/// The sentence detcd adds to etcd's "found duplicate name" (etcd-facts §9: members all left
/// at `--name default` is the usual cause).
pub(crate) fn duplicate_name_help(duplicated: &[String], cluster: &str, size: u64) -> String {
    if duplicated.is_empty() {
        return format!(
            ": the registered members ({cluster}) have fewer than {size} distinct names; \
             each member needs a unique --name"
        );
    }
    let names = duplicated
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let default_hint = if duplicated.iter().any(|n| n == "default") {
        " (a member started without --name is named \"default\")"
    } else {
        ""
    };
    format!(
        ": more than one member registered as {names} ({cluster}); each member needs a unique \
         --name{default_hint}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_two_seconds_and_caps_at_256() {
        let got: Vec<u64> = (1..=10).map(backoff_ms).collect();
        assert_eq!(
            got,
            vec![2000, 4000, 8000, 16000, 32000, 64000, 128000, 256000, 256000, 256000]
        );
        assert_eq!(backoff_ms(u32::MAX), 256_000);
        assert_eq!(go_duration(2000), "2s");
        assert_eq!(go_duration(64000), "1m4s");
        assert_eq!(go_duration(256000), "4m16s");
        assert_eq!(go_duration(3_600_000), "1h0m0s");
        assert_eq!(go_duration(1500), "1.5s");
        assert_eq!(go_duration(5), "5ms");
    }

    #[test]
    fn go_paths() {
        for (input, want) in [
            ("", "."),
            ("/", "/"),
            ("//a//b/", "/a/b"),
            ("/a/./b/../c", "/a/c"),
            ("/../a", "/a"),
            ("a/../..", ".."),
            ("../../x", "../../x"),
            ("a/b/../../..", ".."),
            ("/v2/keys/discovery/tok", "/v2/keys/discovery/tok"),
        ] {
            assert_eq!(path_clean(input), want, "clean({input:?})");
        }
        assert_eq!(path_join(&["/", "/tok", "_config"]), "/tok/_config");
        assert_eq!(path_join(&["/", "tok/", "1a"]), "/tok/1a");
        assert_eq!(path_join(&["", ""]), "");
        assert_eq!(path_base("/a/b/"), "b");
        assert_eq!(path_base("/"), "/");
        assert_eq!(path_base(""), ".");
        assert_eq!(path_base("x"), "x");
        assert_eq!(canonical_url_path("a//b/"), "/a/b/");
        assert_eq!(canonical_url_path(""), "/");
        assert_eq!(
            query_escape("infra0=http://10.0.1.10:2380,a b"),
            "infra0%3Dhttp%3A%2F%2F10.0.1.10%3A2380%2Ca+b"
        );
    }

    proptest::proptest! {
        #[test]
        fn go_paths_never_panic_and_clean_is_idempotent(p in ".{0,24}", q in "[./a]{0,12}") {
            for s in [p.as_str(), q.as_str()] {
                let c = path_clean(s);
                proptest::prop_assert_eq!(path_clean(&c), c.clone());
                let _ = (path_base(s), canonical_url_path(s), path_join(&["/", s, "x"]));
                let _ = query_escape(s);
            }
        }
    }

    #[test]
    fn duplicate_names_are_across_members_only() {
        let vals = [
            "default=http://a:1",
            "x=http://b:1,x=http://c:1",
            "default=http://d:1",
        ];
        assert_eq!(duplicated_names(vals.iter().copied()), vec!["default"]);
        let help = duplicate_name_help(&["default".into()], "c", 3);
        assert!(help.contains("unique --name"), "{help}");
        assert!(help.contains("named \"default\""), "{help}");
    }

    #[test]
    fn local_value_and_ids() {
        let urls =
            crate::config::parse_urls("http://10.0.1.11:2380,http://10.0.1.10:2380").unwrap();
        assert_eq!(
            local_value("infra0", &urls),
            "infra0=http://10.0.1.10:2380,infra0=http://10.0.1.11:2380"
        );
        let d = "https://discovery.etcd.io/3e86b59982e49066c5d813af1c2e2579cbf573de";
        assert_eq!(
            member_id_v2(&urls, d),
            crate::ids::member_id(&urls, d, None)
        );
    }
}
