//! etcd's Watch service: many watchers per gRPC stream, fed from this member's applied writes.
//!
//! The driver publishes every applied write's events to the [`WatchHub`] (in revision order,
//! after the state views show them). A *synced* watcher gets them straight away through its
//! stream's bounded queue. A watcher that starts in the past, whose stream's queue was full
//! (a slow client: etcd's "victim"), or that lived through a snapshot install is *unsynced*:
//! its stream's catch-up task reads the missing revisions from the store's history and sends
//! them, then makes it synced again under the hub's lock, so no revision is skipped or sent
//! twice. Publishing never waits for a client.
//!
//! Every watcher has `next_rev`, the first revision it has not been sent: it only ever grows,
//! and a synced watcher takes only events at or above it. A watcher becomes synced only once
//! `next_rev` is past every published revision.
//!
//! Rules from etcd 3.4 (etcdserver/api/v3rpc/watch.go, mvcc/watchable_store.go), see
//! ../shared/watch-lease-facts.md; progress requests follow etcd 3.4.31/3.5.13 (issue 15220):
//! answered only when every watcher of the stream is synced.

use crate::errors::ApiError;
use crate::node::Shared;
use crate::proto::etcdserverpb::watch_server::Watch;
use detcd_core::proto::etcdserverpb::{
    watch_request::RequestUnion, ResponseHeader, WatchRequest, WatchResponse,
};
use detcd_core::proto::mvccpb::Event;
use detcd_core::watch::{fragment, WatchIds, WatchSpec};
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tonic::{Request, Response, Status, Streaming};

/// Responses queued per stream (etcd's chanBufLen): when full, the stream's synced watchers
/// fall back to catching up from history.
pub const STREAM_QUEUE: usize = 128;
/// Events read from history per catch-up step (etcd sends up to 1000 revisions per sync).
const CATCH_UP_EVENTS: usize = 1000;
/// etcd's grpcOverheadBytes: a fragmented response stays under max-request-bytes plus this.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;
/// The smallest progress notification interval etcd takes (watch.go minWatchProgressInterval).
const MIN_PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// One response on its way to the client.
pub struct Outgoing {
    resp: WatchResponse,
    /// Published events the response takes its events from (shared by every watcher they
    /// were published to: the stream's task picks and copies them, not the driver), with
    /// the watcher's spec and the first revision it takes.
    published: Option<(Arc<Vec<Event>>, Arc<WatchSpec>, i64)>,
    /// Fill each event's prev_kv (the key at the revision before) on the way out.
    fill_prev: bool,
    /// Split it if large (the watcher asked for fragments).
    fragment: bool,
}

struct Watcher {
    /// Unique in the hub: tells a catch-up whether the watcher it read for is still there.
    generation: u64,
    spec: Arc<WatchSpec>,
    next_rev: i64,
    synced: bool,
    /// Sent an event since the last progress tick (etcd elides the next notification).
    sent_since_tick: bool,
}

struct StreamState {
    tx: mpsc::Sender<Outgoing>,
    watchers: BTreeMap<i64, Watcher>,
    ids: WatchIds,
    wake: Arc<Notify>,
    /// A progress request waits for every watcher of the stream to be synced.
    progress_wanted: bool,
}

impl StreamState {
    fn all_synced(&self) -> bool {
        self.watchers.values().all(|w| w.synced)
    }
}

struct HubState {
    /// The revision of the last events published (or of the store a snapshot installed).
    published: i64,
    streams: BTreeMap<u64, StreamState>,
    next_stream: u64,
    next_generation: u64,
}

/// Every watcher of this member, and the revision published to them.
pub struct WatchHub {
    state: Mutex<HubState>,
}

/// What a catch-up reads for one unsynced watcher.
#[derive(Clone)]
struct Behind {
    watch_id: i64,
    generation: u64,
    spec: WatchSpec,
    next_rev: i64,
}

fn progress_response(revision: i64, watch_id: i64) -> WatchResponse {
    WatchResponse {
        header: Some(ResponseHeader {
            revision,
            ..Default::default()
        }),
        watch_id,
        ..Default::default()
    }
}

impl WatchHub {
    /// A hub whose store is at `revision`.
    pub fn new(revision: i64) -> WatchHub {
        WatchHub {
            state: Mutex::new(HubState {
                published: revision,
                streams: BTreeMap::new(),
                next_stream: 1,
                next_generation: 1,
            }),
        }
    }

    /// The revision of the last events published.
    pub fn published(&self) -> i64 {
        self.state.lock().unwrap().published
    }

    /// Watchers on every stream (for metrics and tests).
    pub fn watchers(&self) -> usize {
        let st = self.state.lock().unwrap();
        st.streams.values().map(|s| s.watchers.len()).sum()
    }

    /// For /metrics (etcd's mvcc/metrics.go gauges): (watch streams, watchers, watchers not
    /// synced, i.e. catching up from the store: etcd's "slow watchers").
    pub fn counts(&self) -> (usize, usize, usize) {
        let st = self.state.lock().unwrap();
        let watchers = st.streams.values().map(|s| s.watchers.len()).sum();
        let unsynced = st
            .streams
            .values()
            .map(|s| s.watchers.values().filter(|w| !w.synced).count())
            .sum();
        (st.streams.len(), watchers, unsynced)
    }

    /// Publishes applied events (revision order). Synced watchers get theirs queued at once;
    /// a watcher whose stream queue is full becomes unsynced and catches up later. Runs on
    /// the raft driver: per watcher it only checks whether any event is its, the copying is
    /// left to the streams' tasks.
    pub fn publish(&self, events: Vec<Event>) {
        let Some(last) = events
            .last()
            .and_then(|e| e.kv.as_ref())
            .map(|kv| kv.mod_revision)
        else {
            return;
        };
        let events = Arc::new(events);
        let mut st = self.state.lock().unwrap();
        let mut closed = Vec::new();
        for (sid, stream) in st.streams.iter_mut() {
            let mut woke = false;
            for (id, w) in stream.watchers.iter_mut() {
                if !w.synced {
                    continue;
                }
                if w.spec.select(&events, w.next_rev).next().is_none() {
                    continue;
                }
                let out = Outgoing {
                    resp: WatchResponse {
                        header: Some(ResponseHeader {
                            revision: last,
                            ..Default::default()
                        }),
                        watch_id: *id,
                        ..Default::default()
                    },
                    published: Some((events.clone(), w.spec.clone(), w.next_rev)),
                    fill_prev: w.spec.prev_kv,
                    fragment: w.spec.fragment,
                };
                if crate::mutation::active("drop-watch-event") && last % 7 == 0 {
                    w.next_rev = last + 1; // a deliberate loss, for the watch checker
                    continue;
                }
                match stream.tx.try_send(out) {
                    Ok(()) => {
                        w.next_rev = last + 1;
                        w.sent_since_tick = true;
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        w.synced = false;
                        woke = true;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => closed.push(*sid),
                }
            }
            if woke {
                stream.wake.notify_one();
            }
        }
        st.published = st.published.max(last);
        for sid in closed {
            st.streams.remove(&sid);
        }
    }

    /// A snapshot install replaced the store, now at `revision`, without events: every
    /// watcher catches up from the store.
    pub fn replaced(&self, revision: i64) {
        let mut st = self.state.lock().unwrap();
        st.published = st.published.max(revision);
        for stream in st.streams.values_mut() {
            for w in stream.watchers.values_mut() {
                w.synced = false;
            }
            stream.wake.notify_one();
        }
    }

    fn open_stream(
        &self,
    ) -> (
        u64,
        mpsc::Receiver<Outgoing>,
        mpsc::Sender<Outgoing>,
        Arc<Notify>,
    ) {
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let wake = Arc::new(Notify::new());
        let mut st = self.state.lock().unwrap();
        let sid = st.next_stream;
        st.next_stream += 1;
        st.streams.insert(
            sid,
            StreamState {
                tx: tx.clone(),
                watchers: BTreeMap::new(),
                ids: WatchIds::default(),
                wake: wake.clone(),
                progress_wanted: false,
            },
        );
        (sid, rx, tx, wake)
    }

    fn close_stream(&self, sid: u64) {
        self.state.lock().unwrap().streams.remove(&sid);
    }

    /// Creates a watcher (etcd's sends `created` first, then anything else for it).
    fn create(
        &self,
        sid: u64,
        permit: mpsc::Permit<'_, Outgoing>,
        req: &detcd_core::proto::etcdserverpb::WatchCreateRequest,
    ) {
        let mut guard = self.state.lock().unwrap();
        let st = &mut *guard;
        let published = st.published;
        let Some(stream) = st.streams.get_mut(&sid) else {
            return;
        };
        let created = WatchResponse {
            header: Some(ResponseHeader {
                revision: published,
                ..Default::default()
            }),
            created: true,
            ..Default::default()
        };
        let refuse = |reason: String| Outgoing {
            resp: WatchResponse {
                watch_id: -1,
                canceled: true,
                cancel_reason: reason,
                ..created.clone()
            },
            published: None,
            fill_prev: false,
            fragment: false,
        };
        let spec = match WatchSpec::from_request(req) {
            Ok(s) => s,
            Err(e) => return permit.send(refuse(e.to_string())),
        };
        let id = match stream.ids.assign(req.watch_id, &stream.watchers) {
            Ok(id) => id,
            Err(e) => return permit.send(refuse(e.to_string())),
        };
        // Start 0 means "from the next revision"; one in the future waits for it, synced.
        let (next_rev, synced) = match req.start_revision {
            r if r <= 0 => (published + 1, true),
            r if r > published => (r, true),
            r => (r, false),
        };
        st.next_generation += 1;
        stream.watchers.insert(
            id,
            Watcher {
                generation: st.next_generation,
                spec: Arc::new(spec),
                next_rev,
                synced,
                sent_since_tick: false,
            },
        );
        permit.send(Outgoing {
            resp: WatchResponse {
                watch_id: id,
                ..created
            },
            published: None,
            fill_prev: false,
            fragment: false,
        });
        if !synced {
            stream.wake.notify_one();
        }
    }

    /// Cancels a watcher; an unknown ID gets no answer (etcd's).
    fn cancel(&self, sid: u64, permit: mpsc::Permit<'_, Outgoing>, watch_id: i64) {
        let mut st = self.state.lock().unwrap();
        let published = st.published;
        let Some(stream) = st.streams.get_mut(&sid) else {
            return;
        };
        if stream.watchers.remove(&watch_id).is_some() {
            permit.send(Outgoing {
                resp: WatchResponse {
                    watch_id,
                    canceled: true,
                    ..progress_response(published, watch_id)
                },
                published: None,
                fill_prev: false,
                fragment: false,
            });
        }
    }

    /// A progress request: answered with watch_id -1 and the published revision once every
    /// watcher of the stream is synced (etcd issue 15220).
    fn request_progress(&self, sid: u64, permit: mpsc::Permit<'_, Outgoing>) {
        let mut st = self.state.lock().unwrap();
        let published = st.published;
        let Some(stream) = st.streams.get_mut(&sid) else {
            return;
        };
        if stream.all_synced() || crate::mutation::active("progress-before-sync") {
            permit.send(Outgoing {
                resp: progress_response(published, -1),
                published: None,
                fill_prev: false,
                fragment: false,
            });
        } else {
            stream.progress_wanted = true;
        }
    }

    /// The periodic progress notification (`--experimental-watch-progress-notify-interval`):
    /// each synced watcher that asked for them and was sent nothing since the last tick gets
    /// its ID and the published revision. Dropped if the queue is full, as etcd's.
    fn progress_tick(&self, sid: u64) {
        let mut st = self.state.lock().unwrap();
        let published = st.published;
        let Some(stream) = st.streams.get_mut(&sid) else {
            return;
        };
        for (id, w) in stream.watchers.iter_mut() {
            if w.spec.progress_notify && w.synced && !w.sent_since_tick {
                let _ = stream.tx.try_send(Outgoing {
                    resp: progress_response(published, *id),
                    published: None,
                    fill_prev: false,
                    fragment: false,
                });
            }
            w.sent_since_tick = false;
        }
    }

    fn behind(&self, sid: u64) -> Vec<Behind> {
        let st = self.state.lock().unwrap();
        let Some(stream) = st.streams.get(&sid) else {
            return Vec::new();
        };
        stream
            .watchers
            .iter()
            .filter(|(_, w)| !w.synced)
            .map(|(id, w)| Behind {
                watch_id: *id,
                generation: w.generation,
                spec: WatchSpec::clone(&w.spec),
                next_rev: w.next_rev,
            })
            .collect()
    }

    /// A catch-up sent `b` everything through `last`: it is synced if nothing published is
    /// left. Returns a progress response that was waiting for the stream to be synced.
    fn caught_up(&self, sid: u64, b: &Behind, last: i64) -> Option<WatchResponse> {
        let mut st = self.state.lock().unwrap();
        let published = st.published;
        let stream = st.streams.get_mut(&sid)?;
        let w = stream
            .watchers
            .get_mut(&b.watch_id)
            .filter(|w| w.generation == b.generation && !w.synced)?;
        w.next_rev = w.next_rev.max(last + 1);
        if w.next_rev > published {
            w.synced = true;
        }
        if stream.progress_wanted && stream.all_synced() {
            stream.progress_wanted = false;
            return Some(progress_response(published, -1));
        }
        None
    }

    /// Removes a watcher whose start revision was compacted (after its cancel was queued).
    fn forget(&self, sid: u64, b: &Behind) {
        let mut st = self.state.lock().unwrap();
        if let Some(stream) = st.streams.get_mut(&sid) {
            if stream
                .watchers
                .get(&b.watch_id)
                .is_some_and(|w| w.generation == b.generation)
            {
                stream.watchers.remove(&b.watch_id);
            }
        }
    }
}

/// What one catch-up read found for a watcher.
enum CatchUp {
    /// Its next revision was compacted away: canceled with this compact revision.
    Compacted(i64),
    /// The events it takes among those read, and the last revision read.
    Events(Vec<Event>, i64),
}

/// Reads the history one unsynced watcher misses (blocking: it reads the store), up to the
/// hub's published revision: the store may be ahead of it (applied, not yet published), and
/// what lies beyond reaches the watcher through the hub once it is synced. So nothing sent
/// on a stream is past its progress revision.
fn read_behind(shared: &Shared, b: &Behind) -> Result<CatchUp, Status> {
    let published = shared.watch.published();
    let (mvcc, txn) = shared.read_view().map_err(Status::from)?;
    // etcd cancels a watcher whose next revision is below the compacted one.
    if b.next_rev < mvcc.compact_revision() {
        return Ok(CatchUp::Compacted(mvcc.compact_revision()));
    }
    let (events, last) = mvcc
        .history_in(&txn, b.next_rev, published, CATCH_UP_EVENTS)
        .map_err(|e| Status::internal(e.to_string()))?;
    // A compaction committed after the view was taken may have removed rows it read past.
    let compacted = shared.mvcc.read().unwrap().compact_revision();
    if b.next_rev < compacted {
        return Ok(CatchUp::Compacted(compacted));
    }
    let taken = b.spec.select(&events, b.next_rev).cloned().collect();
    Ok(CatchUp::Events(taken, last))
}

/// The stream's catch-up task: whenever woken, sends every unsynced watcher what it misses.
async fn catch_up(
    shared: Arc<Shared>,
    sid: u64,
    tx: mpsc::Sender<Outgoing>,
    wake: Arc<Notify>,
    progress_interval: Duration,
) {
    let interval = progress_interval.max(MIN_PROGRESS_INTERVAL);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    loop {
        tokio::select! {
            biased;
            _ = tx.closed() => return,
            _ = wake.notified() => {}
            _ = ticker.tick() => {
                shared.watch.progress_tick(sid);
                continue;
            }
        }
        // Bounded: each round either moves a watcher's next revision on or syncs it.
        loop {
            let behind = shared.watch.behind(sid);
            if behind.is_empty() {
                break;
            }
            for b in &behind {
                let read = {
                    let (shared, b) = (shared.clone(), b.clone());
                    crate::api::run_blocking(move || read_behind(&shared, &b)).await
                };
                let out = match read {
                    Ok(CatchUp::Compacted(rev)) => {
                        let resp = WatchResponse {
                            header: Some(ResponseHeader::default()),
                            watch_id: b.watch_id,
                            canceled: true,
                            compact_revision: rev,
                            ..Default::default()
                        };
                        let sent = tx
                            .send(Outgoing {
                                resp,
                                published: None,
                                fill_prev: false,
                                fragment: false,
                            })
                            .await;
                        shared.watch.forget(sid, b);
                        if sent.is_err() {
                            return;
                        }
                        continue;
                    }
                    Ok(CatchUp::Events(events, last)) => (events, last),
                    Err(e) => {
                        tracing::error!("watch catch-up read failed: {e}");
                        return;
                    }
                };
                let (events, last) = out;
                if !events.is_empty() {
                    let resp = WatchResponse {
                        header: Some(ResponseHeader {
                            revision: last,
                            ..Default::default()
                        }),
                        watch_id: b.watch_id,
                        events,
                        ..Default::default()
                    };
                    let o = Outgoing {
                        resp,
                        published: None,
                        fill_prev: b.spec.prev_kv,
                        fragment: b.spec.fragment,
                    };
                    if tx.send(o).await.is_err() {
                        return;
                    }
                }
                if let Some(progress) = shared.watch.caught_up(sid, b, last) {
                    let o = Outgoing {
                        resp: progress,
                        published: None,
                        fill_prev: false,
                        fragment: false,
                    };
                    if tx.send(o).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// Fills what the hub leaves out: the header's cluster, member and term; prev_kv for
/// watchers that want it (read at the revision before each event, left out if compacted,
/// as etcd's); fragments.
fn finish(shared: &Shared, out: Outgoing, limit: usize) -> Vec<WatchResponse> {
    let Outgoing {
        mut resp,
        published,
        fill_prev,
        fragment: split,
    } = out;
    if let Some((events, spec, from)) = published {
        resp.events = spec.select(&events, from).cloned().collect();
    }
    if let Some(h) = resp.header.as_mut() {
        let full = shared.header_at(h.revision);
        *h = ResponseHeader {
            revision: h.revision,
            ..full
        };
    }
    if fill_prev && !resp.events.is_empty() {
        if let Ok((mvcc, txn)) = shared.read_view() {
            for ev in &mut resp.events {
                let Some(kv) = &ev.kv else { continue };
                if kv.create_revision == kv.mod_revision && ev.r#type == 0 {
                    continue; // a create has no previous version
                }
                if let Ok(Some(prev)) = mvcc.kv_at_in(&txn, &kv.key, kv.mod_revision - 1) {
                    ev.prev_kv = Some(prev);
                }
            }
        }
    }
    if split {
        fragment(resp, limit)
    } else {
        vec![resp]
    }
}

/// The Watch gRPC service.
#[derive(Clone)]
pub struct WatchService {
    pub shared: Arc<Shared>,
    /// `--max-request-bytes`: fragments stay under it plus gRPC's overhead.
    pub max_request_bytes: usize,
    /// `--experimental-watch-progress-notify-interval` (etcd: 10 min).
    pub progress_interval: Duration,
    /// `--election-timeout`, for [`leader_lost`].
    pub election_timeout: Duration,
}

pub type WatchStream = Pin<Box<dyn futures::Stream<Item = Result<WatchResponse, Status>> + Send>>;

/// etcd's `hasleader` gRPC metadata (clientv3.WithRequireLeader): refuse at once without a
/// leader (api/v3rpc/interceptor.go). Returns whether the stream requires a leader (then it
/// ends once [`leader_lost`] resolves).
pub fn require_leader<T>(req: &Request<T>, shared: &Shared) -> Result<bool, Status> {
    let wants = req
        .metadata()
        .get("hasleader")
        .is_some_and(|v| v.as_bytes() == b"true");
    if wants && shared.status().leader == 0 {
        return Err(ApiError::NoLeader.into());
    }
    Ok(wants)
}

/// Resolves once this member has seen no leader at three checks in a row, one election
/// timeout apart (etcd's monitorLeader, maxNoLeaderCnt = 3): a stream that requires a
/// leader then ends with "etcdserver: no leader". Never resolves when `required` is false.
pub async fn leader_lost(shared: Arc<Shared>, required: bool, election_timeout: Duration) {
    if !required {
        return futures::future::pending().await;
    }
    let mut without = 0;
    loop {
        tokio::time::sleep(election_timeout).await;
        if shared.status().leader == 0 {
            without += 1;
            if without >= 3 {
                return;
            }
        } else {
            without = 0;
        }
    }
}

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<WatchStream>, Status> {
        let needs_leader = require_leader(&req, &self.shared)?;
        Ok(Response::new(self.serve(req.into_inner(), needs_leader)?))
    }
}

impl WatchService {
    /// One watch stream: the client's requests in, the responses out (the gRPC service and
    /// the JSON gateway both serve through this). The client ending its requests does not end
    /// the watchers (as etcd's recvLoop on EOF); dropping the response stream does.
    pub fn serve(
        &self,
        mut incoming: impl futures::Stream<Item = Result<WatchRequest, Status>> + Send + Unpin + 'static,
        needs_leader: bool,
    ) -> Result<WatchStream, Status> {
        use futures::StreamExt;
        if self.shared.status().is_learner {
            return Err(ApiError::NotSupportedForLearner.into());
        }
        let shared = self.shared.clone();
        let (sid, mut rx, tx, wake) = shared.watch.open_stream();
        tokio::spawn(catch_up(
            shared.clone(),
            sid,
            tx.clone(),
            wake,
            self.progress_interval,
        ));
        let reader = shared.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = incoming.next().await {
                // Room for the answer first, so it is queued in order with events.
                let Ok(permit) = tx.reserve().await else {
                    break;
                };
                match msg.request_union {
                    Some(RequestUnion::CreateRequest(c)) => reader.watch.create(sid, permit, &c),
                    Some(RequestUnion::CancelRequest(c)) => {
                        reader.watch.cancel(sid, permit, c.watch_id)
                    }
                    Some(RequestUnion::ProgressRequest(_)) => {
                        reader.watch.request_progress(sid, permit)
                    }
                    None => {}
                }
            }
        });
        let limit = self.max_request_bytes + GRPC_OVERHEAD_BYTES;
        let lost = leader_lost(shared.clone(), needs_leader, self.election_timeout);
        let closer = CloseOnDrop(shared.clone(), sid);
        let out = async_stream::stream! {
            let _closer = closer;
            tokio::pin!(lost);
            loop {
                let o = tokio::select! {
                    biased;
                    _ = &mut lost => {
                        yield Err(ApiError::NoLeader.into());
                        break;
                    }
                    o = rx.recv() => o,
                };
                let Some(o) = o else { break };
                for resp in finish(&shared, o, limit) {
                    yield Ok(resp);
                }
            }
        };
        Ok(Box::pin(out))
    }
}

/// Closes a watch stream's watchers when its response stream goes (the client left).
struct CloseOnDrop(Arc<Shared>, u64);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.watch.close_stream(self.1);
    }
}

/// A watcher of this member's own, for the services built on watch the way etcd builds
/// them over its client (Lock, Election): the same hub, catch-up and order as a client's.
pub struct LocalWatch {
    shared: Arc<Shared>,
    sid: u64,
    rx: mpsc::Receiver<Outgoing>,
}

impl LocalWatch {
    /// Watches `[key, range_end)` (etcd's conventions) from `start_revision`.
    pub async fn start(
        shared: &Arc<Shared>,
        key: Vec<u8>,
        range_end: Vec<u8>,
        start_revision: i64,
    ) -> Result<LocalWatch, Status> {
        let (sid, rx, tx, wake) = shared.watch.open_stream();
        let watch = LocalWatch {
            shared: shared.clone(),
            sid,
            rx,
        };
        tokio::spawn(catch_up(
            shared.clone(),
            sid,
            tx.clone(),
            wake,
            Duration::from_secs(3600),
        ));
        let permit = tx
            .reserve()
            .await
            .map_err(|_| Status::unavailable("watch stream closed"))?;
        let req = detcd_core::proto::etcdserverpb::WatchCreateRequest {
            key,
            range_end,
            start_revision,
            ..Default::default()
        };
        shared.watch.create(sid, permit, &req);
        Ok(watch)
    }

    /// The next response with events, its header filled. An error if the watch was
    /// canceled (its start compacted) or the member stopped.
    pub async fn next(&mut self) -> Result<WatchResponse, Status> {
        loop {
            let Some(out) = self.rx.recv().await else {
                return Err(Status::unavailable("etcdserver: server stopped"));
            };
            let resp = finish(&self.shared, out, usize::MAX)
                .pop()
                .expect("one response");
            if resp.canceled {
                return Err(Status::unknown(
                    "etcdserver: mvcc: required revision has been compacted",
                ));
            }
            if !resp.events.is_empty() {
                return Ok(resp);
            }
        }
    }
}

impl Drop for LocalWatch {
    fn drop(&mut self) {
        self.shared.watch.close_stream(self.sid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use detcd_core::proto::etcdserverpb::WatchCreateRequest;
    use detcd_core::proto::mvccpb::KeyValue;

    fn put_event(key: &str, rev: i64) -> Event {
        Event {
            r#type: 0,
            kv: Some(KeyValue {
                key: key.as_bytes().to_vec(),
                mod_revision: rev,
                create_revision: rev,
                ..Default::default()
            }),
            prev_kv: None,
        }
    }

    fn create(hub: &WatchHub, sid: u64, tx: &mpsc::Sender<Outgoing>, key: &str, start: i64) {
        let req = WatchCreateRequest {
            key: key.as_bytes().to_vec(),
            start_revision: start,
            ..Default::default()
        };
        hub.create(sid, tx.try_reserve().unwrap(), &req);
    }

    fn next(rx: &mut mpsc::Receiver<Outgoing>) -> Option<WatchResponse> {
        rx.try_recv().ok().map(|o| {
            let mut resp = o.resp;
            if let Some((events, spec, from)) = o.published {
                resp.events = spec.select(&events, from).cloned().collect();
            }
            resp
        })
    }

    /// `created` comes first; a synced watcher gets the events of its key from its start,
    /// each revision once; an unknown cancel gets no answer; a duplicate ID is refused.
    #[test]
    fn created_then_events_then_cancel() {
        let hub = WatchHub::new(5);
        let (sid, mut rx, tx, _) = hub.open_stream();
        create(&hub, sid, &tx, "a", 0);
        let created = next(&mut rx).unwrap();
        assert!(created.created && created.watch_id == 0);
        assert_eq!(created.header.unwrap().revision, 5);
        hub.publish(vec![put_event("b", 6)]);
        assert!(next(&mut rx).is_none(), "not its key");
        hub.publish(vec![put_event("a", 7), put_event("b", 7)]);
        let got = next(&mut rx).unwrap();
        assert_eq!(got.events.len(), 1);
        assert_eq!(got.header.unwrap().revision, 7);
        let dup = WatchCreateRequest {
            key: b"x".to_vec(),
            watch_id: 0,
            ..Default::default()
        };
        hub.create(sid, tx.try_reserve().unwrap(), &dup); // gets ID 1
        assert_eq!(next(&mut rx).unwrap().watch_id, 1);
        let dup = WatchCreateRequest { watch_id: 1, ..dup };
        hub.create(sid, tx.try_reserve().unwrap(), &dup);
        let refused = next(&mut rx).unwrap();
        assert!(refused.canceled && refused.watch_id == -1);
        assert_eq!(
            refused.cancel_reason,
            "mvcc: duplicate watch ID provided on the WatchStream"
        );
        hub.cancel(sid, tx.try_reserve().unwrap(), 9);
        assert!(next(&mut rx).is_none());
        hub.cancel(sid, tx.try_reserve().unwrap(), 0);
        assert!(next(&mut rx).unwrap().canceled);
        hub.publish(vec![put_event("a", 8)]);
        assert!(next(&mut rx).is_none(), "canceled");
    }

    /// A watcher whose stream queue is full becomes unsynced (no event dropped silently: it
    /// catches up from the store); a progress request waits until every watcher is synced.
    #[test]
    fn a_full_queue_unsyncs_and_progress_waits_for_sync() {
        let hub = WatchHub::new(1);
        let (sid, mut rx, tx, _) = hub.open_stream();
        create(&hub, sid, &tx, "k", 0);
        next(&mut rx).unwrap();
        for rev in 2..2 + STREAM_QUEUE as i64 + 1 {
            hub.publish(vec![put_event("k", rev)]);
        }
        let behind = hub.behind(sid);
        assert_eq!(behind.len(), 1, "the watcher fell behind");
        let first_missed = 2 + STREAM_QUEUE as i64;
        assert_eq!(behind[0].next_rev, first_missed);
        hub.request_progress(
            sid,
            tx.try_reserve().unwrap_or_else(|_| {
                // Make room: the client reads what was queued.
                while rx.try_recv().is_ok() {}
                tx.try_reserve().unwrap()
            }),
        );
        while let Some(r) = next(&mut rx) {
            assert_ne!(
                r.watch_id, -1,
                "progress answered while a watcher is behind"
            );
        }
        // The catch-up sent through the last published revision: synced, and the progress
        // request is answered with it.
        let progress = hub.caught_up(sid, &behind[0], first_missed).unwrap();
        assert_eq!(progress.watch_id, -1);
        assert_eq!(progress.header.unwrap().revision, first_missed);
        assert!(hub.behind(sid).is_empty());
    }

    #[tokio::test]
    async fn streams_that_require_a_leader_end_after_three_timeouts_without_one() {
        let shared = Shared::for_tests();
        let t = Duration::from_millis(10);
        // No leader: resolves after about three timeouts.
        tokio::time::timeout(Duration::from_secs(5), leader_lost(shared.clone(), true, t))
            .await
            .expect("no leader was noticed");
        // Not required: never.
        assert!(
            tokio::time::timeout(t * 10, leader_lost(shared.clone(), false, t))
                .await
                .is_err()
        );
        // A leader: never.
        shared.status.lock().unwrap().leader = 1;
        assert!(tokio::time::timeout(t * 10, leader_lost(shared, true, t))
            .await
            .is_err());
    }
}
