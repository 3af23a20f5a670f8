//! `detcd bench`: etcd's benchmark tool (tools/benchmark) for the `put`, `range`,
//! `watch-latency` and `lease-keepalive` loads, with its flags and its report, driving any etcd
//! v3 endpoint (detcd or etcd) through detcd's own generated gRPC client.
//!
//! Shape, as in etcd's tool: `--conns` gRPC channels, `--clients` concurrent workers sharing
//! them round-robin, one producer filling a bounded request queue with exactly `--total`
//! requests; every finished request (success or error) is one result, and the report is
//! printed when the queue is drained.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use detcd_core::proto::etcdserverpb::{
    watch_request::RequestUnion, LeaseGrantRequest, LeaseKeepAliveRequest, PutRequest,
    RangeRequest, WatchCreateRequest, WatchRequest,
};
use detcd_net::proto::etcdserverpb::kv_client::KvClient;
use detcd_net::proto::etcdserverpb::lease_client::LeaseClient;
use detcd_net::proto::etcdserverpb::watch_client::WatchClient;
use futures::SinkExt;
use tonic::transport::{Channel, Endpoint};

const USAGE: &str = "\
A low-level benchmark tool for etcd v3 endpoints (etcd's tools/benchmark).

Usage:
  detcd bench [global flags] put [--key-size 8] [--val-size 8] [--key-space-size 1] [--sequential-keys] [--total 10000] [--rate 0]
  detcd bench [global flags] range <key> [end-range] [--consistency l|s] [--total 10000] [--rate 0]
  detcd bench [global flags] watch-latency [--put-total 1000] [--put-rate 100] [--key-size 32] [--val-size 32]
  detcd bench [global flags] lease-keepalive [--total 10000]

put --watchers N (detcd's own): N watch streams on every key, spread over the connections and
drained while the puts run, to measure what watchers cost writers.
watch-latency: --clients watchers of one key; each put's latency is from its answer to each
watcher's event (etcd's measure). lease-keepalive: each client grants a lease (TTL 100) and
sends keep-alives one stream at a time, as clientv3's KeepAliveOnce.

Global flags:
      --endpoints string   comma separated gRPC endpoints (default \"127.0.0.1:2379\")
      --clients uint       total number of concurrent clients (default 1)
      --conns uint         total number of gRPC connections (default 1)
      --total int          total number of requests (default 10000)
      --dial-timeout dur   dial timeout, e.g. 5s (default 0: none)
      --precise            use full floating point precision in the report
      --slow dur           print each request slower than this to stderr with its UTC start
                           time, to match against the members' logs (detcd's own; default off)
";

/// The parsed command line of `detcd bench`.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchArgs {
    pub endpoints: Vec<String>,
    pub clients: usize,
    pub conns: usize,
    pub total: usize,
    /// Requests per second the producer may issue; 0 is unlimited.
    pub rate: u64,
    pub precise: bool,
    pub dial_timeout: Option<Duration>,
    /// Requests slower than this are printed to stderr as they finish.
    pub slow: Option<Duration>,
    pub load: Load,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Load {
    Put {
        key_size: usize,
        val_size: usize,
        key_space_size: u64,
        sequential_keys: bool,
        /// Watch streams on every key held open during the run (detcd's extension).
        watchers: usize,
    },
    /// etcd's watch-latency: `--clients` watchers of one key, `put_total` puts at `put_rate`.
    WatchLatency {
        put_total: usize,
        put_rate: u64,
        key_size: usize,
        val_size: usize,
    },
    /// etcd's lease-keepalive: `--total` keep-alives, one stream each.
    LeaseKeepalive,
    Range {
        key: String,
        end: Option<String>,
        serializable: bool,
    },
}

/// What the command line asked for: a run, or the usage text.
#[derive(Debug, PartialEq)]
pub enum Parsed {
    Run(BenchArgs),
    Help,
}

fn num<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
    v.parse::<T>()
        .map_err(|_| format!("invalid argument {v:?} for \"--{flag}\" flag"))
}

fn parse_duration(flag: &str, v: &str) -> Result<Duration, String> {
    let bad = || format!("invalid argument {v:?} for \"--{flag}\" flag");
    let (n, mul) = if let Some(n) = v.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60.0)
    } else {
        return Err(bad());
    };
    let n: f64 = n.parse().map_err(|_| bad())?;
    if !(n >= 0.0 && n.is_finite()) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(n * mul))
}

/// Parses the arguments after `bench`, cobra style: `--flag value`, `--flag=value`, boolean
/// flags alone or as `--flag=true|false`, single or double dashes, flags before or after the
/// subcommand and its positional arguments.
pub fn parse_args(args: &[String]) -> Result<Parsed, String> {
    let mut endpoints = "127.0.0.1:2379".to_string();
    let mut clients = 1usize;
    let mut conns = 1usize;
    let mut total = 10000usize;
    let mut rate = 0u64;
    let mut precise = false;
    let mut dial_timeout = None;
    let mut slow = None;
    let mut key_size: Option<usize> = None;
    let mut val_size: Option<usize> = None;
    let mut put_total = 1000usize;
    let mut put_rate = 100u64;
    let mut watchers = 0usize;
    let mut key_space_size = 1u64;
    let mut sequential_keys = false;
    let mut consistency = "l".to_string();
    let mut positional: Vec<String> = Vec::new();

    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if arg == "--" {
            positional.extend(args[i..].iter().cloned());
            break;
        }
        let Some(stripped) = arg
            .strip_prefix("--")
            .or_else(|| arg.strip_prefix('-').filter(|s| !s.is_empty()))
        else {
            positional.push(arg.clone());
            continue;
        };
        let (name, inline) = match stripped.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (stripped, None),
        };
        let is_bool = matches!(name, "sequential-keys" | "precise" | "help" | "h");
        let value = if is_bool {
            match inline.as_deref() {
                None | Some("true") => "true".to_string(),
                Some("false") => "false".to_string(),
                Some(v) => return Err(format!("invalid argument {v:?} for \"--{name}\" flag")),
            }
        } else if let Some(v) = inline {
            v
        } else if i < args.len() {
            i += 1;
            args[i - 1].clone()
        } else {
            return Err(format!("flag needs an argument: --{name}"));
        };
        let on = value == "true";
        match name {
            "help" | "h" => {
                if on {
                    return Ok(Parsed::Help);
                }
            }
            "endpoints" => endpoints = value,
            "clients" => clients = num(name, &value)?,
            "conns" => conns = num(name, &value)?,
            "total" => total = num(name, &value)?,
            "rate" => rate = num(name, &value)?,
            "precise" => precise = on,
            "dial-timeout" => dial_timeout = Some(parse_duration(name, &value)?),
            "slow" => slow = Some(parse_duration(name, &value)?),
            "key-size" => key_size = Some(num(name, &value)?),
            "val-size" => val_size = Some(num(name, &value)?),
            "put-total" => put_total = num(name, &value)?,
            "put-rate" => put_rate = num(name, &value)?,
            "watchers" => watchers = num(name, &value)?,
            "key-space-size" => key_space_size = num(name, &value)?,
            "sequential-keys" => sequential_keys = on,
            "consistency" => consistency = value,
            _ => return Err(format!("unknown flag: --{name}")),
        }
    }

    if clients == 0 || conns == 0 {
        return Err("--clients and --conns must be at least 1".into());
    }
    let endpoints: Vec<String> = endpoints
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if endpoints.is_empty() {
        return Err("--endpoints is empty".into());
    }
    let mut pos = positional.into_iter();
    let load = match pos.next().as_deref() {
        Some("put") => {
            if let Some(extra) = pos.next() {
                return Err(format!("put takes no arguments (got {extra:?})"));
            }
            if key_space_size == 0 {
                return Err("expected positive --key-space-size, got (0)".into());
            }
            let key_size = key_size.unwrap_or(8);
            if key_size < 1 {
                return Err("expected positive --key-size".into());
            }
            Load::Put {
                key_size,
                val_size: val_size.unwrap_or(8),
                key_space_size,
                sequential_keys,
                watchers,
            }
        }
        Some("watch-latency") => {
            if let Some(extra) = pos.next() {
                return Err(format!("watch-latency takes no arguments (got {extra:?})"));
            }
            if put_rate == 0 {
                return Err("expected positive --put-rate".into());
            }
            Load::WatchLatency {
                put_total,
                put_rate,
                key_size: key_size.unwrap_or(32).max(1),
                val_size: val_size.unwrap_or(32),
            }
        }
        Some("lease-keepalive") => {
            if let Some(extra) = pos.next() {
                return Err(format!(
                    "lease-keepalive takes no arguments (got {extra:?})"
                ));
            }
            Load::LeaseKeepalive
        }
        Some("range") => {
            let Some(key) = pos.next() else {
                return Err("range command needs arguments: range <key> [end-range]".into());
            };
            let end = pos.next();
            if let Some(extra) = pos.next() {
                return Err(format!("range takes at most two arguments (got {extra:?})"));
            }
            let serializable = match consistency.as_str() {
                "l" => false,
                "s" => true,
                other => return Err(format!("unknown consistency flag {other:?}")),
            };
            Load::Range {
                key,
                end,
                serializable,
            }
        }
        Some(other) => {
            return Err(format!(
                "unknown command {other:?} (available: put, range, watch-latency, lease-keepalive)"
            ))
        }
        None => return Ok(Parsed::Help),
    };
    Ok(Parsed::Run(BenchArgs {
        endpoints,
        clients,
        conns,
        total,
        rate,
        precise,
        dial_timeout,
        slow,
        load,
    }))
}

/// `t` as RFC 3339 UTC with microseconds, the members' log format.
pub fn utc(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let (days, secs) = ((d.as_secs() / 86400) as i64, d.as_secs() % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's days_from_civil, inverted).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        d.subsec_micros()
    )
}

/// etcd's report percentiles.
pub const PCTLS: [f64; 8] = [10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9];

/// etcd's `report.percentiles`: over ascending latencies, the first sample whose rank
/// `i*100/n` reaches each percentile (0 where there are too few samples).
pub fn percentiles(sorted: &[f64]) -> [f64; 8] {
    let mut data = [0.0; 8];
    let n = sorted.len();
    let mut j = 0;
    for (i, &v) in sorted.iter().enumerate() {
        if j >= PCTLS.len() {
            break;
        }
        let current = i as f64 * 100.0 / n as f64;
        if current >= PCTLS[j] {
            data[j] = v;
            j += 1;
        }
    }
    data
}

/// One finished request.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub secs: f64,
    pub err: Option<String>,
}

/// The summary statistics etcd's report prints.
#[derive(Clone, Debug, PartialEq)]
pub struct Stats {
    pub total: f64,
    pub fastest: f64,
    pub slowest: f64,
    pub average: f64,
    pub stddev: f64,
    pub rps: f64,
    /// Successful latencies, ascending.
    pub lats: Vec<f64>,
    pub errors: BTreeMap<String, usize>,
}

impl Stats {
    pub fn from_outcomes(outcomes: &[Outcome], total: Duration) -> Stats {
        let mut lats = Vec::with_capacity(outcomes.len());
        let mut errors = BTreeMap::new();
        for o in outcomes {
            match &o.err {
                Some(e) => *errors.entry(e.clone()).or_insert(0) += 1,
                None => lats.push(o.secs),
            }
        }
        lats.sort_by(|a, b| a.total_cmp(b));
        let n = lats.len() as f64;
        let total = total.as_secs_f64();
        let (average, stddev) = if lats.is_empty() {
            (0.0, 0.0)
        } else {
            let avg = lats.iter().sum::<f64>() / n;
            let var = lats.iter().map(|l| (l - avg) * (l - avg)).sum::<f64>() / n;
            (avg, var.sqrt())
        };
        Stats {
            total,
            fastest: lats.first().copied().unwrap_or(0.0),
            slowest: lats.last().copied().unwrap_or(0.0),
            average,
            stddev,
            rps: if total > 0.0 { n / total } else { 0.0 },
            lats,
            errors,
        }
    }

    /// The report, in etcd's layout (`Summary`, histogram, `Latency distribution`, errors).
    pub fn render(&self, precise: bool) -> String {
        let f = |x: f64| {
            if precise {
                format!("{x}")
            } else {
                format!("{x:4.4}")
            }
        };
        let secs = |x: f64| format!("{} secs", f(x));
        let mut s = String::new();
        if !self.lats.is_empty() {
            s += "\nSummary:\n";
            s += &format!("  Total:\t{}.\n", secs(self.total));
            s += &format!("  Slowest:\t{}.\n", secs(self.slowest));
            s += &format!("  Fastest:\t{}.\n", secs(self.fastest));
            s += &format!("  Average:\t{}.\n", secs(self.average));
            s += &format!("  Stddev:\t{}.\n", secs(self.stddev));
            s += &format!("  Requests/sec:\t{}\n", f(self.rps));
            s += &self.histogram(&f);
            s += "\nLatency distribution:\n";
            for (p, v) in PCTLS.iter().zip(percentiles(&self.lats)) {
                if v > 0.0 {
                    s += &format!("  {p}% in {}.\n", secs(v));
                }
            }
        }
        if !self.errors.is_empty() {
            s += "\nError distribution:\n";
            for (e, n) in &self.errors {
                s += &format!("  [{n}]\t{e}\n");
            }
        }
        s
    }

    fn histogram(&self, f: &dyn Fn(f64) -> String) -> String {
        const BC: usize = 10;
        let mut buckets = [0.0f64; BC + 1];
        let mut counts = [0usize; BC + 1];
        let bs = (self.slowest - self.fastest) / BC as f64;
        for (i, b) in buckets.iter_mut().enumerate().take(BC) {
            *b = self.fastest + bs * i as f64;
        }
        buckets[BC] = self.slowest;
        let mut bi = 0;
        for &l in &self.lats {
            while l > buckets[bi] && bi < BC {
                bi += 1;
            }
            counts[bi] += 1;
        }
        let max = counts.iter().copied().max().unwrap_or(0);
        let mut s = "\nResponse time histogram:\n".to_string();
        for (b, c) in buckets.iter().zip(counts) {
            let bar = (c * 40).checked_div(max).unwrap_or(0);
            s += &format!("  {} [{c}]\t|{}\n", f(*b), "∎".repeat(bar));
        }
        s
    }
}

/// A small deterministic generator (splitmix64) for keys and values; no dependency needed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// etcd's put key: `key_size` bytes holding Go's `binary.PutVarint(n)` at the front.
pub fn put_key(n: u64, key_size: usize) -> Vec<u8> {
    let mut k = vec![0u8; key_size];
    // zig-zag, then LEB128, as Go's PutVarint; truncated if the key is shorter than the varint.
    let mut ux = (n as i64 as u64) << 1;
    if (n as i64) < 0 {
        ux = !ux;
    }
    let mut i = 0;
    while i < key_size {
        if ux < 0x80 {
            k[i] = ux as u8;
            break;
        }
        k[i] = (ux as u8) | 0x80;
        ux >>= 7;
        i += 1;
    }
    k
}

enum Req {
    Put(PutRequest),
    Range(RangeRequest),
}

fn endpoint_uri(ep: &str) -> String {
    if ep.contains("://") {
        ep.to_string()
    } else {
        format!("http://{ep}")
    }
}

async fn connect(args: &BenchArgs) -> Result<Vec<Channel>, String> {
    let mut chans = Vec::with_capacity(args.conns);
    for i in 0..args.conns {
        let uri = endpoint_uri(&args.endpoints[i % args.endpoints.len()]);
        let mut ep = Endpoint::from_shared(uri.clone()).map_err(|e| format!("{uri}: {e}"))?;
        if let Some(t) = args.dial_timeout {
            ep = ep.connect_timeout(t);
        }
        let ch = ep.connect().await.map_err(|e| format!("dial {uri}: {e}"))?;
        chans.push(ch);
    }
    Ok(chans)
}

/// Runs the load and returns one outcome per request plus the wall time from the first request.
async fn drive(args: &BenchArgs) -> Result<(Vec<Outcome>, Duration), String> {
    let chans = connect(args).await?;
    match args.load {
        Load::WatchLatency { .. } => return watch_latency(args, &chans).await,
        Load::LeaseKeepalive => return lease_keepalive(args, &chans).await,
        _ => {}
    }
    let watching = match args.load {
        Load::Put { watchers, .. } if watchers > 0 => {
            eprintln!("opening {watchers} watch streams");
            hold_watchers(&chans, watchers).await?
        }
        _ => Vec::new(),
    };
    let result = drive_kv(args, chans).await;
    for w in watching {
        w.abort();
    }
    result
}

/// A watch stream on `[key, range_end)`; returns once the server has answered `created`,
/// with the sender that keeps the stream open and the stream of responses.
async fn open_watch(
    chan: &Channel,
    key: Vec<u8>,
    range_end: Vec<u8>,
) -> Result<
    (
        futures::channel::mpsc::Sender<WatchRequest>,
        tonic::Streaming<detcd_core::proto::etcdserverpb::WatchResponse>,
    ),
    String,
> {
    let (mut tx, rx) = futures::channel::mpsc::channel(1);
    tx.send(WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key,
            range_end,
            ..Default::default()
        })),
    })
    .await
    .map_err(|e| e.to_string())?;
    let mut stream = WatchClient::new(chan.clone())
        .watch(rx)
        .await
        .map_err(|e| format!("watch: {e}"))?
        .into_inner();
    match stream.message().await {
        Ok(Some(r)) if r.created => Ok((tx, stream)),
        other => Err(format!("watch was not created: {other:?}")),
    }
}

/// Opens `n` watch streams on every key over `chans`, each drained by a task of its own.
async fn hold_watchers(
    chans: &[Channel],
    n: usize,
) -> Result<Vec<tokio::task::JoinHandle<()>>, String> {
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let (tx, mut stream) = open_watch(&chans[i % chans.len()], vec![0], vec![0]).await?;
        tasks.push(tokio::spawn(async move {
            let _keep_open = tx;
            while let Ok(Some(_)) = stream.message().await {}
        }));
    }
    Ok(tasks)
}

/// etcd's watch-latency: `--clients` watchers of one key (one stream each, over the
/// connections); `put_total` puts at `put_rate` a second from one more connection; each
/// watcher's latency is from the put's answer to its event.
async fn watch_latency(
    args: &BenchArgs,
    chans: &[Channel],
) -> Result<(Vec<Outcome>, Duration), String> {
    let Load::WatchLatency {
        put_total,
        put_rate,
        key_size,
        val_size,
    } = args.load
    else {
        unreachable!("watch_latency runs the watch-latency load");
    };
    let mut rng = Rng(0x5eed ^ u64::from(std::process::id()) << 32);
    let key: Vec<u8> = (0..key_size)
        .map(|_| b'a' + (rng.next() % 26) as u8)
        .collect();
    let value: Vec<u8> = (0..val_size).map(|_| rng.next() as u8).collect();
    let mut streams = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        streams.push(open_watch(&chans[i % chans.len()], key.clone(), Vec::new()).await?);
    }
    let mut put = KvClient::new(
        connect(&BenchArgs {
            conns: 1,
            ..args.clone()
        })
        .await?
        .remove(0),
    );
    let start = Instant::now();
    let mut outcomes = Vec::with_capacity(put_total * streams.len());
    for i in 0..put_total {
        let due = start + Duration::from_secs_f64(i as f64 / put_rate as f64);
        tokio::time::sleep_until(due.into()).await;
        let req = PutRequest {
            key: key.clone(),
            value: value.clone(),
            ..Default::default()
        };
        put.put(req)
            .await
            .map_err(|e| format!("Failed to Put for watch latency benchmark: {e}"))?;
        let acked = Instant::now();
        // Every watcher's next event, read concurrently.
        let waits = streams.iter_mut().map(|(_, s)| async move {
            loop {
                match s.message().await {
                    Ok(Some(r)) if !r.events.is_empty() => return Ok(acked.elapsed()),
                    Ok(Some(_)) => continue,
                    Ok(None) => return Err("watch stream ended".to_string()),
                    Err(e) => return Err(format!("watch: {e}")),
                }
            }
        });
        for r in futures::future::join_all(waits).await {
            outcomes.push(match r {
                Ok(d) => Outcome {
                    secs: d.as_secs_f64(),
                    err: None,
                },
                Err(e) => return Err(e),
            });
        }
        if (i + 1) % (put_total / 10).max(1) == 0 {
            eprint!("\r{} / {} puts", i + 1, put_total);
        }
    }
    eprintln!();
    Ok((outcomes, start.elapsed()))
}

/// etcd's lease-keepalive: each client grants a lease (TTL 100), then the clients share
/// `--total` keep-alives, each on a stream of its own (clientv3's KeepAliveOnce).
async fn lease_keepalive(
    args: &BenchArgs,
    chans: &[Channel],
) -> Result<(Vec<Outcome>, Duration), String> {
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (otx, mut orx) = tokio::sync::mpsc::unbounded_channel::<Outcome>();
    let mut leases = Vec::with_capacity(args.clients);
    for c in 0..args.clients {
        let mut client = LeaseClient::new(chans[c % chans.len()].clone());
        let id = client
            .lease_grant(LeaseGrantRequest { ttl: 100, id: 0 })
            .await
            .map_err(|e| format!("lease grant: {e}"))?
            .into_inner()
            .id;
        leases.push((client, id));
    }
    let start = Instant::now();
    let total = args.total;
    let mut workers = Vec::with_capacity(leases.len());
    for (mut client, id) in leases {
        let (next, otx) = (next.clone(), otx.clone());
        workers.push(tokio::spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total {
                let t = Instant::now();
                let res = async {
                    let once = futures::stream::iter([LeaseKeepAliveRequest { id }]);
                    let mut s = client.lease_keep_alive(once).await?.into_inner();
                    match s.message().await? {
                        Some(r) if r.ttl > 0 => Ok(()),
                        _ => Err(tonic::Status::not_found(
                            "etcdserver: requested lease not found",
                        )),
                    }
                }
                .await;
                let err = res
                    .err()
                    .map(|s| format!("rpc error: code = {:?} desc = {}", s.code(), s.message()));
                let outcome = Outcome {
                    secs: t.elapsed().as_secs_f64(),
                    err,
                };
                if otx.send(outcome).is_err() {
                    break;
                }
            }
        }));
    }
    drop(otx);
    let mut outcomes = Vec::with_capacity(total);
    while let Some(o) = orx.recv().await {
        outcomes.push(o);
    }
    let elapsed = start.elapsed();
    for w in workers {
        let _ = w.await;
    }
    Ok((outcomes, elapsed))
}

/// The put and range loads.
async fn drive_kv(
    args: &BenchArgs,
    chans: Vec<Channel>,
) -> Result<(Vec<Outcome>, Duration), String> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Req>(args.clients.max(1));
    let rx = std::sync::Arc::new(tokio::sync::Mutex::new(rx));
    let (otx, mut orx) = tokio::sync::mpsc::unbounded_channel::<Outcome>();

    let start = Instant::now();
    let mut workers = Vec::with_capacity(args.clients);
    let slow = args.slow;
    for c in 0..args.clients {
        let mut kv = KvClient::new(chans[c % chans.len()].clone());
        let rx = rx.clone();
        let otx = otx.clone();
        workers.push(tokio::spawn(async move {
            loop {
                let req = { rx.lock().await.recv().await };
                let Some(req) = req else { break };
                let (t, wall) = (Instant::now(), std::time::SystemTime::now());
                let res = match req {
                    Req::Put(r) => kv.put(r).await.map(|_| ()),
                    Req::Range(r) => kv.range(r).await.map(|_| ()),
                };
                let took = t.elapsed();
                if slow.is_some_and(|s| took > s) {
                    eprintln!(
                        "slow request: started {} took {:.1} ms",
                        utc(wall),
                        took.as_secs_f64() * 1000.0
                    );
                }
                let secs = took.as_secs_f64();
                let err = res
                    .err()
                    .map(|s| format!("rpc error: code = {:?} desc = {}", s.code(), s.message()));
                if otx.send(Outcome { secs, err }).is_err() {
                    break;
                }
            }
        }));
    }
    drop(otx);

    let load = args.load.clone();
    let total = args.total;
    let rate = args.rate;
    let producer = tokio::spawn(async move {
        let mut rng =
            Rng(0x5eed ^ (std::process::id() as u64) << 32 ^ start.elapsed().as_nanos() as u64);
        let val: Vec<u8> = match &load {
            Load::Put { val_size, .. } => (0..*val_size).map(|_| rng.next() as u8).collect(),
            _ => Vec::new(),
        };
        for i in 0..total {
            if rate > 0 {
                let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
                tokio::time::sleep_until(due.into()).await;
            }
            let req = match &load {
                Load::Put {
                    key_size,
                    key_space_size,
                    sequential_keys,
                    ..
                } => {
                    let n = if *sequential_keys {
                        i as u64 % key_space_size
                    } else {
                        rng.next() % key_space_size
                    };
                    Req::Put(PutRequest {
                        key: put_key(n, *key_size),
                        value: val.clone(),
                        ..Default::default()
                    })
                }
                Load::WatchLatency { .. } | Load::LeaseKeepalive => {
                    unreachable!("not a KV load")
                }
                Load::Range {
                    key,
                    end,
                    serializable,
                } => Req::Range(RangeRequest {
                    key: key.as_bytes().to_vec(),
                    range_end: end
                        .as_ref()
                        .map(|e| e.as_bytes().to_vec())
                        .unwrap_or_default(),
                    serializable: *serializable,
                    ..Default::default()
                }),
            };
            if tx.send(req).await.is_err() {
                break;
            }
        }
    });

    let mut outcomes = Vec::with_capacity(total);
    let progress_every = (total / 10).max(1);
    while let Some(o) = orx.recv().await {
        outcomes.push(o);
        if outcomes.len() % progress_every == 0 {
            eprint!("\r{} / {} requests", outcomes.len(), total);
        }
    }
    let elapsed = start.elapsed();
    eprintln!();
    let _ = producer.await;
    for w in workers {
        let _ = w.await;
    }
    Ok((outcomes, elapsed))
}

/// Runs `detcd bench <args>` and returns the process exit code.
pub async fn run(args: Vec<String>) -> u8 {
    let parsed = match parse_args(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("detcd bench: {e}");
            eprint!("{USAGE}");
            return 2;
        }
    };
    let args = match parsed {
        Parsed::Help => {
            print!("{USAGE}");
            return 0;
        }
        Parsed::Run(a) => a,
    };
    match drive(&args).await {
        Ok((outcomes, elapsed)) => {
            let stats = Stats::from_outcomes(&outcomes, elapsed);
            print!("{}", stats.render(args.precise));
            if stats.lats.is_empty() && args.total > 0 {
                1
            } else {
                0
            }
        }
        Err(e) => {
            eprintln!("detcd bench: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Parsed, String> {
        parse_args(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }
    fn run_args(args: &[&str]) -> BenchArgs {
        match p(args).unwrap() {
            Parsed::Run(a) => a,
            Parsed::Help => panic!("help"),
        }
    }

    #[test]
    fn slow_requests_are_dated_in_utc() {
        let a = run_args(&["--slow", "50ms", "put"]);
        assert_eq!(a.slow, Some(Duration::from_millis(50)));
        assert_eq!(run_args(&["put"]).slow, None);
        let t = std::time::UNIX_EPOCH + Duration::from_micros(1_764_480_000_123_456);
        assert_eq!(utc(t), "2025-11-30T05:20:00.123456Z");
        assert_eq!(utc(std::time::UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let leap = std::time::UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(utc(leap), "2000-02-29T00:00:00.000000Z");
    }

    #[test]
    fn put_defaults_are_etcds() {
        let a = run_args(&["put"]);
        assert_eq!(a.endpoints, vec!["127.0.0.1:2379"]);
        assert_eq!((a.clients, a.conns, a.total, a.rate), (1, 1, 10000, 0));
        assert_eq!(
            a.load,
            Load::Put {
                key_size: 8,
                val_size: 8,
                key_space_size: 1,
                sequential_keys: false,
                watchers: 0
            }
        );
    }

    #[test]
    fn watch_latency_and_lease_keepalive_take_etcds_flags_and_defaults() {
        let a = run_args(&["watch-latency"]);
        assert_eq!(
            a.load,
            Load::WatchLatency {
                put_total: 1000,
                put_rate: 100,
                key_size: 32,
                val_size: 32
            }
        );
        let a = run_args(&[
            "--clients=100",
            "watch-latency",
            "--put-total=50",
            "--put-rate",
            "20",
            "--val-size=8",
        ]);
        assert_eq!(a.clients, 100);
        assert_eq!(
            a.load,
            Load::WatchLatency {
                put_total: 50,
                put_rate: 20,
                key_size: 32,
                val_size: 8
            }
        );
        assert!(p(&["watch-latency", "--put-rate=0"]).is_err());
        let a = run_args(&["lease-keepalive", "--total", "300"]);
        assert_eq!((a.load, a.total), (Load::LeaseKeepalive, 300));
        let a = run_args(&["put", "--watchers", "1000"]);
        assert!(matches!(a.load, Load::Put { watchers: 1000, .. }));
    }

    #[test]
    fn global_and_subcommand_flags_in_any_position_and_form() {
        let a = run_args(&[
            "--endpoints=127.0.0.1:1,127.0.0.2:1",
            "--clients",
            "64",
            "-conns=8",
            "put",
            "--key-size",
            "16",
            "--val-size=256",
            "--key-space-size",
            "100000",
            "--sequential-keys",
            "--total",
            "500",
        ]);
        assert_eq!(a.endpoints, vec!["127.0.0.1:1", "127.0.0.2:1"]);
        assert_eq!((a.clients, a.conns, a.total), (64, 8, 500));
        assert_eq!(
            a.load,
            Load::Put {
                key_size: 16,
                val_size: 256,
                key_space_size: 100000,
                sequential_keys: true,
                watchers: 0
            }
        );
    }

    #[test]
    fn range_key_end_and_consistency() {
        let a = run_args(&["range", "foo", "--consistency", "s", "fop", "--total=7"]);
        assert_eq!(a.total, 7);
        assert_eq!(
            a.load,
            Load::Range {
                key: "foo".into(),
                end: Some("fop".into()),
                serializable: true
            }
        );
        let a = run_args(&["--consistency=l", "range", "k"]);
        assert_eq!(
            a.load,
            Load::Range {
                key: "k".into(),
                end: None,
                serializable: false
            }
        );
    }

    #[test]
    fn bad_arguments_are_errors_not_panics() {
        assert!(p(&["range"]).is_err());
        assert!(p(&["range", "k", "--consistency", "x"]).is_err());
        assert!(p(&["put", "--total"]).is_err());
        assert!(p(&["put", "--total", "ten"]).is_err());
        assert!(p(&["put", "--clients", "0"]).is_err());
        assert!(p(&["put", "--key-space-size", "0"]).is_err());
        assert!(p(&["put", "--bogus", "1"]).is_err());
        assert!(p(&["txn"]).is_err());
        assert!(p(&["put", "extra"]).is_err());
        assert!(p(&["put", "--sequential-keys=maybe"]).is_err());
        assert_eq!(p(&[]).unwrap(), Parsed::Help);
        assert_eq!(p(&["put", "--help"]).unwrap(), Parsed::Help);
        let a = run_args(&["put", "--sequential-keys=false", "--dial-timeout", "500ms"]);
        assert!(matches!(
            a.load,
            Load::Put {
                sequential_keys: false,
                ..
            }
        ));
        assert_eq!(a.dial_timeout, Some(Duration::from_millis(500)));
    }

    #[test]
    fn percentiles_match_etcds_rank_rule() {
        let lats: Vec<f64> = (1..=1000).map(|i| i as f64).collect();
        // rank i*100/n >= p first at i = p*n/100, i.e. sample number i+1.
        assert_eq!(
            percentiles(&lats),
            [101.0, 251.0, 501.0, 751.0, 901.0, 951.0, 991.0, 1000.0]
        );
        let lats: Vec<f64> = (1..=10).map(|i| i as f64).collect();
        // 99.9 needs rank >= 99.9, never reached with 10 samples: left 0 (and not printed).
        let d = percentiles(&lats);
        assert_eq!(d[..7], [2.0, 4.0, 6.0, 9.0, 10.0, 0.0, 0.0]);
        assert_eq!(percentiles(&[]), [0.0; 8]);
        // etcd's rule skips the first sample (rank 0 < 10): one sample gives no percentiles.
        assert_eq!(percentiles(&[5.0]), [0.0; 8]);
    }

    #[test]
    fn stats_summary_and_errors() {
        let mut o: Vec<Outcome> = [0.1, 0.3, 0.2, 0.4]
            .iter()
            .map(|&secs| Outcome { secs, err: None })
            .collect();
        o.push(Outcome {
            secs: 9.0,
            err: Some("boom".into()),
        });
        let s = Stats::from_outcomes(&o, Duration::from_secs(2));
        assert_eq!(s.lats, vec![0.1, 0.2, 0.3, 0.4]);
        assert_eq!((s.fastest, s.slowest), (0.1, 0.4));
        assert!((s.average - 0.25).abs() < 1e-12);
        assert!((s.stddev - 0.0125f64.sqrt()).abs() < 1e-12);
        assert_eq!(s.rps, 2.0);
        assert_eq!(s.errors.get("boom"), Some(&1));
        let r = s.render(false);
        assert!(r.contains("  Requests/sec:\t2.0000\n"), "{r}");
        assert!(r.contains("  Slowest:\t0.4000 secs.\n"), "{r}");
        assert!(r.contains("Latency distribution:\n  10% in 0.2000 secs.\n  25% in 0.3000 secs.\n  50% in 0.4000 secs.\n\n"), "{r}");
        assert!(r.contains("Error distribution:\n  [1]\tboom\n"), "{r}");
        assert!(r.contains("Response time histogram:"), "{r}");
        let none = Stats::from_outcomes(&[], Duration::from_secs(1)).render(false);
        assert_eq!(none, "");
    }

    #[test]
    fn put_keys_are_gos_varint_padded() {
        assert_eq!(put_key(0, 8), vec![0; 8]);
        assert_eq!(put_key(1, 8), vec![2, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(put_key(64, 4), vec![0x80, 0x01, 0, 0]);
        assert_eq!(put_key(300, 1).len(), 1);
    }
}
