//! Auto compaction (`--auto-compaction-mode`, `--auto-compaction-retention`), as etcd's
//! etcdserver/api/v3compactor runs it: on the leader only, through an ordinary Compaction
//! request (replicated by raft like a client's).
//!
//! - Periodic: the current revision is sampled every tenth of the retention (at least every
//!   second); once per compaction interval (the retention, at most one hour: etcd 3.4's
//!   periodic.go) the store is compacted to the newest sample at least one retention old, so
//!   every revision of the last retention period stays readable.
//! - Revision: every 5 minutes the store is compacted to the current revision minus the
//!   retention, when that moved (etcd's revision.go).
//!
//! The decisions are pure ([`Periodic`], [`revision_target`]); [`run`] feeds them time and
//! revisions and sends the requests.

use crate::api::Api;
use crate::proto::etcdserverpb::kv_server::Kv;
use detcd_core::config::AutoCompaction;
use detcd_core::proto::etcdserverpb::CompactionRequest;
use std::collections::VecDeque;
use std::time::Duration;

/// etcd's revision compactor period (v3compactor/revision.go).
const REVISION_CHECK_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// Samples a periodic compactor keeps: one retention's worth at a tenth of it each, plus the
/// sample at its start.
const PERIODIC_SAMPLES: usize = 11;

/// The periodic compactor's state. Times are milliseconds on any monotonic clock.
#[derive(Debug)]
pub struct Periodic {
    retention_ms: u64,
    /// (time, revision) samples, oldest first, at most PERIODIC_SAMPLES.
    samples: VecDeque<(u64, i64)>,
    last_compaction_ms: u64,
    compacted: i64,
}

impl Periodic {
    /// Starts counting at `now_ms` (a new leader waits a whole interval, as etcd's does).
    pub fn new(retention_ms: u64, now_ms: u64) -> Periodic {
        Periodic {
            retention_ms: retention_ms.max(1),
            samples: VecDeque::with_capacity(PERIODIC_SAMPLES + 1),
            last_compaction_ms: now_ms,
            compacted: 0,
        }
    }

    /// How often to call [`Periodic::sample`].
    pub fn sample_interval(&self) -> Duration {
        Duration::from_millis((self.retention_ms / 10).max(1000))
    }

    fn compaction_interval_ms(&self) -> u64 {
        self.retention_ms.min(3_600_000)
    }

    /// Records `revision` at `now_ms`; returns the revision to compact to, if one is due.
    pub fn sample(&mut self, now_ms: u64, revision: i64) -> Option<i64> {
        self.samples.push_back((now_ms, revision));
        while self.samples.len() > PERIODIC_SAMPLES + 1 {
            self.samples.pop_front();
        }
        // Nothing can be a retention old yet.
        let cutoff = now_ms.checked_sub(self.retention_ms)?;
        // Keep the newest sample that is at least one retention old, and everything after it.
        while self.samples.len() > 1 && self.samples[1].0 <= cutoff {
            self.samples.pop_front();
        }
        if now_ms.saturating_sub(self.last_compaction_ms) < self.compaction_interval_ms() {
            return None;
        }
        let &(at, rev) = self.samples.front()?;
        if at > cutoff || rev <= self.compacted {
            return None;
        }
        self.last_compaction_ms = now_ms;
        Some(rev)
    }

    /// A compaction to `rev` went through (or was already done).
    pub fn compacted(&mut self, rev: i64) {
        self.compacted = self.compacted.max(rev);
    }
}

/// The revision compactor's target: `current - retention`, if positive and beyond `last`.
pub fn revision_target(current: i64, retention: u64, last: i64) -> Option<i64> {
    let target = current.saturating_sub(i64::try_from(retention).unwrap_or(i64::MAX));
    (target > 0 && target > last).then_some(target)
}

/// Runs the compactor for the member behind `api` until the process ends.
pub async fn run(api: Api, mode: AutoCompaction) {
    let start = tokio::time::Instant::now();
    let now_ms = || start.elapsed().as_millis() as u64;
    let shared = api.node.shared.clone();
    let is_leader = || {
        let s = shared.status();
        s.leader != 0 && s.leader == shared.member_id
    };
    let revision = || shared.header().revision;
    match mode {
        AutoCompaction::Periodic { retention_ms } => {
            tracing::info!(
                "starting auto periodic compaction (retention {:?})",
                Duration::from_millis(retention_ms)
            );
            let mut p = Periodic::new(retention_ms, now_ms());
            let mut was_leader = false;
            loop {
                tokio::time::sleep(p.sample_interval()).await;
                let leader = is_leader();
                if leader && !was_leader {
                    // etcd pauses the compactor on followers and resumes it afresh.
                    p = Periodic::new(retention_ms, now_ms());
                }
                was_leader = leader;
                if !leader {
                    continue;
                }
                if let Some(rev) = p.sample(now_ms(), revision()) {
                    if compact(&api, rev, "periodic").await {
                        p.compacted(rev);
                    }
                }
            }
        }
        AutoCompaction::Revision { retention } => {
            tracing::info!("starting auto revision compaction (retention {retention} revisions)");
            let mut last = 0;
            loop {
                tokio::time::sleep(REVISION_CHECK_INTERVAL).await;
                if !is_leader() {
                    continue;
                }
                if let Some(rev) = revision_target(revision(), retention, last) {
                    if compact(&api, rev, "revision").await {
                        last = rev;
                    }
                }
            }
        }
    }
}

/// Compacts to `rev`; true when done (or already compacted past it).
async fn compact(api: &Api, rev: i64, kind: &str) -> bool {
    tracing::info!(revision = rev, "starting auto {kind} compaction");
    let req = tonic::Request::new(CompactionRequest {
        revision: rev,
        physical: false,
    });
    match Kv::compact(api, req).await {
        Ok(_) => {
            tracing::info!(revision = rev, "completed auto {kind} compaction");
            true
        }
        Err(s) if s.message().contains("required revision has been compacted") => true,
        Err(s) => {
            tracing::warn!(
                revision = rev,
                "failed auto {kind} compaction: {}",
                s.message()
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    #[test]
    fn periodic_keeps_one_retention_of_history() {
        // Retention 10 minutes: samples every minute; the first compaction after 10 minutes
        // goes to the revision of 10 minutes before.
        let mut p = Periodic::new(10 * MIN, 0);
        assert_eq!(p.sample_interval(), Duration::from_secs(60));
        let mut got = Vec::new();
        for minute in 0..=25u64 {
            let rev = 100 + minute as i64 * 10; // ten writes a minute
            if let Some(r) = p.sample(minute * MIN, rev) {
                got.push((minute, r));
                p.compacted(r);
            }
        }
        // At minute 10 the newest sample at least 10 minutes old is minute 0's (rev 100); at
        // 20 it is minute 10's (rev 200).
        assert_eq!(got, vec![(10, 100), (20, 200)]);
    }

    #[test]
    fn periodic_over_an_hour_compacts_hourly() {
        let mut p = Periodic::new(5 * 60 * MIN, 0);
        let mut got = Vec::new();
        for step in 0..=(8 * 2) {
            let t = step * 30 * MIN;
            if let Some(r) = p.sample(t, (t / MIN) as i64 + 1) {
                got.push((t / MIN, r));
                p.compacted(r);
            }
        }
        // Nothing is 5 hours old before hour 5; then hourly, each to 5 hours back.
        assert_eq!(got, vec![(300, 1), (360, 61), (420, 121), (480, 181)]);
    }

    #[test]
    fn periodic_never_goes_back_or_repeats() {
        let mut p = Periodic::new(MIN, 0);
        for s in 0..=6 {
            assert_eq!(p.sample(s * 10_000, 5), None.or((s == 6).then_some(5)));
        }
        p.compacted(5);
        // No writes since: the same revision is not compacted again.
        for s in 7..=20 {
            assert_eq!(p.sample(s * 10_000, 5), None);
        }
    }

    #[test]
    fn revision_mode_targets() {
        assert_eq!(revision_target(1500, 1000, 0), Some(500));
        assert_eq!(revision_target(900, 1000, 0), None);
        assert_eq!(revision_target(1500, 1000, 500), None);
        assert_eq!(revision_target(1501, 1000, 500), Some(501));
        assert_eq!(revision_target(10, u64::MAX, 0), None);
    }
}
