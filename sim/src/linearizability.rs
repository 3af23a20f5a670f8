//! Linearizability checker for key-value histories recorded by [`crate::history`].
//!
//! # Model
//! Each key is an independent register whose state is `Option<String>` (`None`: absent).
//! Linearizability is compositional (Herlihy & Wing's locality / P-compositionality), so the
//! history is split per key and each key is checked on its own.
//!
//! # Algorithm
//! Per key, the Wing & Gong search as improved by Lowe and used by porcupine: the determinate
//! operations' call and return events are sorted by time into a doubly linked list; the search
//! walks it, and at each call event tries to linearize that operation next (apply it to the
//! register and check its recorded output). On success the operation's call and return are
//! unlinked from the list (dancing links, undone in LIFO order on backtrack) and the walk restarts
//! at the head; on reaching a return event whose operation is not linearized yet, no determinate
//! operation is left to try, so (after the indeterminate ones, below) it backtracks.
//! Configurations already explored, `(linearized set, register state)`, are memoized and never
//! explored twice.
//!
//! Time conventions: intervals are closed, so an operation returning at `t` and one invoked at
//! `t` are concurrent (call events sort before return events at equal times).
//!
//! # Indeterminate operations
//! An operation with [`Outcome::Unknown`], or never completed, may have taken effect at any time
//! after its invocation, or never. As in porcupine it has no return event (returns at infinity)
//! and accepts any output; in addition it is *optional*: the search succeeds as soon as every
//! determinate operation is linearized, whatever indeterminate ones are left (placing those at
//! the very end is always legal, so this is porcupine's rule, reached sooner). Indeterminate gets
//! have no effect and are dropped; [`Outcome::Failed`] operations did not happen and are dropped.
//!
//! Porcupine tries every indeterminate operation at every point, which explodes when a partition
//! leaves dozens of them open. Here only *canonical* linearizations are searched, and every
//! linearization can be rewritten into a canonical one (same determinate ops, a subset of the
//! indeterminate ones), by steps that each drop an indeterminate op or move one later, so none is
//! missed. In a canonical linearization, indeterminate ops come in *chains* (maximal runs), and:
//! 1. each chain ends right before a determinate op `x` that observes the register (not a put:
//!    that would hide the chain, which can then be dropped) and is illegal in the state before
//!    the chain (otherwise: if `x` leaves the register as it is, move the chain after it; if it
//!    overwrites it, a delete or a successful CAS, drop the chain);
//! 2. inside a chain, every op after the first is a CAS (a put or delete would hide what came
//!    before it);
//! 3. no indeterminate op leaves the register unchanged (drop it);
//! 4. of identical indeterminate ops, the earlier-invoked ones are used first (rename them).
//!
//! So the search tries indeterminate ops only once the determinate ones in the window are
//! exhausted, and then only those that can produce a value some op of the window needs (found by
//! value through an index, CASes chained by their expected value), or all of them when an op
//! there only needs "a different value" (a failed CAS, a delete that deleted). The memo stores,
//! for each (determinate set, state, chain start), the minimal sets of indeterminate ops used,
//! and skips a configuration whose set contains a stored one: that one had every option it has
//! (indeterminate ops have no deadline and are optional; with rule 4 its children cover ours).
//! These rules are checked against an exhaustive reference on thousands of small histories.
//!
//! # Complexity
//! Per key with `n` operations, `w` the most determinate operations pairwise concurrent at one
//! instant and `v` the distinct values written: every reachable determinate set is "everything
//! that returned before some event, plus a subset of the ops open there", so there are at most
//! `O(n · 2^w · v)` configurations, times the incomparable sets of indeterminate ops used (few:
//! an indeterminate op is used only where a read needs its value). Each step costs `O(n/64)` to
//! compare or copy a bitset (the hash is incremental, Zobrist style) plus `O(w)` to walk the
//! window, plus, where indeterminate ops are tried, the ones that can produce a needed value
//! (all `u` invoked ones in the "any other value" case). For legal histories with few
//! concurrent clients the first path nearly always succeeds: about `n · w` steps. The worst case
//! is exponential (the problem is NP-complete), which is why every key has a step [`Budget`].
//! Measured (random legal histories, ~10 ops in flight, 10% indeterminate): 2,000 ops on 20
//! keys take ~10 ms in a debug build, ~1 ms in release; see the ignored `timing` test.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

use crate::history::{Entry, HistorySnapshot, Op, Outcome, Output};

/// Bounds the search so the checker always terminates quickly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Search steps (call or return events examined) allowed for one key.
    pub max_steps_per_key: u64,
}

impl Budget {
    pub const fn steps(max_steps_per_key: u64) -> Self {
        Self { max_steps_per_key }
    }
}

impl Default for Budget {
    /// One million steps per key: at most a few hundred ms per key in release (a few seconds in
    /// debug); keys of up to several thousand ops fit comfortably.
    fn default() -> Self {
        Self::steps(1_000_000)
    }
}

/// The checker's verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckResult {
    /// Every key's history is linearizable.
    Ok,
    /// One key's history is not linearizable (the first such key in key order).
    Illegal(Box<Violation>),
    /// No violation found, but the budget ran out on these keys (in key order): not a failure,
    /// but worth logging.
    Unknown { keys: Vec<String> },
}

impl CheckResult {
    pub fn is_ok(&self) -> bool {
        matches!(self, CheckResult::Ok)
    }

    pub fn is_illegal(&self) -> bool {
        matches!(self, CheckResult::Illegal(_))
    }
}

impl fmt::Display for CheckResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckResult::Ok => write!(f, "linearizable"),
            CheckResult::Illegal(v) => write!(f, "{v}"),
            CheckResult::Unknown { keys } => {
                write!(
                    f,
                    "linearizability unknown: search budget exhausted on keys {keys:?}"
                )
            }
        }
    }
}

/// Why one key's history is not linearizable: the longest linearizable prefix the search found
/// and, after it, the operations that real-time order allows next, none of which can go on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub key: String,
    /// How many operations the longest linearizable prefix has.
    pub prefix_len: usize,
    /// Its last operations (at most [`Violation::TAIL`]), in linearization order.
    pub prefix_tail: Vec<Entry>,
    /// The register after that prefix.
    pub state: Option<String>,
    /// The operations that may be linearized next, each with why it cannot, in call order.
    pub candidates: Vec<(Entry, String)>,
    /// The operation whose return ends the window of candidates (it must be linearized before
    /// anything invoked after its return), if any.
    pub deadline: Option<Entry>,
    /// How many unused indeterminate operations could also have taken effect there (none of
    /// them helps either).
    pub indeterminate_available: usize,
}

impl Violation {
    pub const TAIL: usize = 8;
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "key {:?} is not linearizable", self.key)?;
        let shown = self.prefix_tail.len();
        writeln!(
            f,
            "  longest linearizable prefix: {} ops{}",
            self.prefix_len,
            if shown < self.prefix_len {
                format!(", last {shown}:")
            } else {
                ":".into()
            }
        )?;
        for e in &self.prefix_tail {
            writeln!(f, "    {e}")?;
        }
        writeln!(f, "  register after it: {:?}", self.state)?;
        if let Some(d) = &self.deadline {
            writeln!(f, "  must come before the return of: {d}")?;
        }
        writeln!(f, "  none of the ops allowed next works:")?;
        for (e, why) in &self.candidates {
            writeln!(f, "    {e}: {why}")?;
        }
        if self.indeterminate_available > 0 {
            writeln!(
                f,
                "  (nor does letting any of the {} unused indeterminate ops take effect first)",
                self.indeterminate_available
            )?;
        }
        Ok(())
    }
}

/// Checks a recorded history.
pub fn check(history: &HistorySnapshot, budget: Budget) -> CheckResult {
    check_entries(history.entries(), budget)
}

/// Checks entries of any keys (see [`check`]).
pub fn check_entries(entries: &[Entry], budget: Budget) -> CheckResult {
    let mut by_key: BTreeMap<&str, Vec<&Entry>> = BTreeMap::new();
    for e in entries {
        by_key.entry(e.key.as_str()).or_default().push(e);
    }
    let mut exhausted = Vec::new();
    for (key, ops) in by_key {
        match check_key(key, &ops, budget) {
            KeyResult::Linearizable => {}
            KeyResult::Exhausted => exhausted.push(key.to_string()),
            KeyResult::Illegal(v) => return CheckResult::Illegal(v),
        }
    }
    if exhausted.is_empty() {
        CheckResult::Ok
    } else {
        CheckResult::Unknown { keys: exhausted }
    }
}

enum KeyResult {
    Linearizable,
    Illegal(Box<Violation>),
    Exhausted,
}

// ---------------------------------------------------------------------------------------------
// The register model, on interned values (0 = absent).

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum MOp {
    Put(u32),
    Get,
    Delete,
    Cas { expect: u32, value: u32 },
}

#[derive(Clone, Copy, Debug)]
enum MOut {
    Put,
    Get(u32),
    Delete(bool),
    Cas(bool),
}

/// One operation of a key, ready for the search.
struct MEntry<'a> {
    entry: &'a Entry,
    op: MOp,
    /// `None`: indeterminate (any output; optional).
    out: Option<MOut>,
    /// Index among the key's determinate (resp. indeterminate) ops, for the bitsets.
    slot: usize,
    /// For an indeterminate op: the indeterminate op with the same `op` invoked last before it
    /// (`NIL` if none). Such twins are interchangeable once both are invoked, so only the first
    /// unused one of a family is ever tried.
    twin_prev: usize,
}

impl MEntry<'_> {
    fn known(&self) -> bool {
        self.out.is_some()
    }

    /// Overwrites the register without looking at it: an indeterminate op right before it has
    /// no visible effect.
    fn blind(&self) -> bool {
        matches!((self.op, self.out), (MOp::Put(_), _) | (MOp::Delete, None))
    }
}

/// The register's transition: the new state if `op` with output `out` is legal in state `s`.
fn step(s: u32, op: MOp, out: Option<MOut>) -> Option<u32> {
    match (op, out) {
        (MOp::Put(v), None | Some(MOut::Put)) => Some(v),
        (MOp::Get, None) => Some(s),
        (MOp::Get, Some(MOut::Get(v))) => (v == s).then_some(s),
        (MOp::Delete, None) => Some(0),
        (MOp::Delete, Some(MOut::Delete(deleted))) => (deleted == (s != 0)).then_some(0),
        (MOp::Cas { expect, value }, None) => Some(if s == expect { value } else { s }),
        (MOp::Cas { expect, value }, Some(MOut::Cas(true))) => (s == expect).then_some(value),
        (MOp::Cas { expect, .. }, Some(MOut::Cas(false))) => (s != expect).then_some(s),
        _ => None, // output of the wrong kind
    }
}

struct Interner<'a> {
    ids: HashMap<&'a str, u32>,
    values: Vec<Option<&'a str>>,
}

impl<'a> Interner<'a> {
    fn new() -> Self {
        Self {
            ids: HashMap::new(),
            values: vec![None],
        }
    }

    fn id(&mut self, v: Option<&'a String>) -> u32 {
        let Some(v) = v else { return 0 };
        let next = self.values.len() as u32;
        *self.ids.entry(v.as_str()).or_insert_with(|| {
            self.values.push(Some(v.as_str()));
            next
        })
    }

    fn value(&self, id: u32) -> Option<String> {
        self.values[id as usize].map(str::to_string)
    }
}

// ---------------------------------------------------------------------------------------------
// The search.

const NIL: usize = usize::MAX;

#[derive(Clone, Copy)]
struct Node {
    /// Operation index (unused for the head).
    op: usize,
    is_call: bool,
    prev: usize,
    next: usize,
}

/// Keys of the memo table are already well mixed (Zobrist); don't hash them again.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Explored configurations with one determinate set, state and chain start.
struct Slot {
    known: Box<[u64]>,
    state: u32,
    chain: u32,
    /// Antichain of explored indeterminate sets.
    unknown_sets: Vec<Box<[u64]>>,
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn is_subset(a: &[u64], b: &[u64]) -> bool {
    a.iter().zip(b).all(|(x, y)| x & !y == 0)
}

enum Verdict {
    Linearizable,
    Illegal,
    Exhausted,
}

/// Where the search is in trying the children of the current configuration: walking the
/// determinate list (calls up to the first return), or the candidate indeterminate ops collected
/// for it (`arena[pos..]`, see `Search::collect_candidates`).
#[derive(Clone, Copy)]
enum Cursor {
    Known(usize),
    Unknown(usize),
}

/// `Search::chain` when the last placed op is determinate.
const NO_CHAIN: u32 = u32::MAX;

struct Frame {
    op: usize,
    /// State and chain start before the op.
    state: u32,
    chain: u32,
    /// Lengths of `arena` and `deadlines` before the op: the candidate lists of the
    /// configurations below it are dropped when it is undone.
    arena_len: usize,
    deadlines_len: usize,
    /// For an indeterminate op: its position in `arena`, to resume after it.
    pos: usize,
}

struct Search<'e, 'a> {
    ops: &'e [MEntry<'a>],
    /// Doubly linked lists in time order: from `KHEAD` the call and return events of the
    /// unlinearized determinate ops, from `UHEAD` the calls of the unused indeterminate puts and
    /// deletes, from `CHEAD` those of the unused indeterminate CASes.
    nodes: Vec<Node>,
    call_node: Vec<usize>,
    ret_node: Vec<usize>,
    /// Indeterminate ops by the value they can set (0: delete), in call order; CASes also by
    /// the value they expect. No-op CASes (expect == value) are in neither.
    producers: HashMap<u32, Vec<usize>>,
    cas_by_expect: HashMap<u32, Vec<usize>>,
    known_bits: Vec<u64>,
    unknown_bits: Vec<u64>,
    /// Zobrist hash of `known_bits`.
    hash: u64,
    state: u32,
    /// The state before the trailing run of indeterminate ops of the linearization so far, or
    /// `NO_CHAIN` if it ends with a determinate op (or is empty).
    chain: u32,
    /// The linearization so far.
    stack: Vec<Frame>,
    /// Candidate indeterminate ops of the configurations on the path being tried, and the
    /// deadline (first pending return) of the last one.
    arena: Vec<usize>,
    deadlines: Vec<u64>,
    known_left: usize,
    known_total: usize,
    memo: HashMap<u64, Vec<Slot>, BuildHasherDefault<IdHasher>>,
    steps: u64,
    /// Most determinate ops linearized at once, and the step at which that first happened.
    best_known: usize,
    best_step: u64,
}

const KHEAD: usize = 0;
const UHEAD: usize = 1;
const CHEAD: usize = 2;

/// What a determinate op that is illegal in some state needs the register to hold instead.
enum Demand {
    /// Exactly this value.
    Value(u32),
    /// Anything but the current value (a failed CAS, a delete that deleted).
    Change,
}

fn demand(m: &MEntry<'_>) -> Option<Demand> {
    match (m.op, m.out?) {
        (MOp::Get, MOut::Get(v)) => Some(Demand::Value(v)),
        (MOp::Delete, MOut::Delete(false)) => Some(Demand::Value(0)),
        (MOp::Cas { expect, .. }, MOut::Cas(true)) => Some(Demand::Value(expect)),
        (MOp::Delete, MOut::Delete(true)) | (MOp::Cas { .. }, MOut::Cas(false)) => {
            Some(Demand::Change)
        }
        _ => None,
    }
}

impl<'e, 'a> Search<'e, 'a> {
    fn new(ops: &'e [MEntry<'a>]) -> Self {
        // Events: (time, kind: call 0 / return 1, op): calls first at equal times.
        let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(ops.len() * 2);
        for (i, m) in ops.iter().enumerate() {
            events.push((m.entry.invoke, 0, i));
            if m.known() {
                let ret = m.entry.ret.expect("determinate op has a return time");
                events.push((ret.max(m.entry.invoke), 1, i));
            }
        }
        events.sort_unstable();
        let head = Node {
            op: NIL,
            is_call: false,
            prev: NIL,
            next: NIL,
        };
        let mut nodes = Vec::with_capacity(events.len() + 3);
        nodes.extend([head, head, head]);
        let (mut ktail, mut utail, mut ctail) = (KHEAD, UHEAD, CHEAD);
        let mut call_node = vec![NIL; ops.len()];
        let mut ret_node = vec![NIL; ops.len()];
        let mut producers: HashMap<u32, Vec<usize>> = HashMap::new();
        let mut cas_by_expect: HashMap<u32, Vec<usize>> = HashMap::new();
        for &(_, kind, op) in &events {
            let idx = nodes.len();
            let tail = match ops[op] {
                ref m if m.known() => &mut ktail,
                MEntry {
                    op: MOp::Cas { .. },
                    ..
                } => &mut ctail,
                _ => &mut utail,
            };
            nodes[*tail].next = idx;
            nodes.push(Node {
                op,
                is_call: kind == 0,
                prev: *tail,
                next: NIL,
            });
            *tail = idx;
            if kind == 1 {
                ret_node[op] = idx;
                continue;
            }
            call_node[op] = idx;
            if !ops[op].known() {
                match ops[op].op {
                    MOp::Put(v) => producers.entry(v).or_default().push(op),
                    MOp::Delete => producers.entry(0).or_default().push(op),
                    MOp::Cas { expect, value } if expect != value => {
                        producers.entry(value).or_default().push(op);
                        cas_by_expect.entry(expect).or_default().push(op);
                    }
                    MOp::Cas { .. } | MOp::Get => {}
                }
            }
        }
        let known_total = ops.iter().filter(|m| m.known()).count();
        let unknown_total = ops.len() - known_total;
        Search {
            ops,
            nodes,
            call_node,
            ret_node,
            producers,
            cas_by_expect,
            known_bits: vec![0; known_total.div_ceil(64)],
            unknown_bits: vec![0; unknown_total.div_ceil(64)],
            hash: 0,
            state: 0,
            chain: NO_CHAIN,
            stack: Vec::new(),
            arena: Vec::new(),
            deadlines: Vec::new(),
            known_left: known_total,
            known_total,
            memo: HashMap::default(),
            steps: 0,
            best_known: 0,
            best_step: 0,
        }
    }

    fn is_linearized(&self, op: usize) -> bool {
        let m = &self.ops[op];
        let bits = if m.known() {
            &self.known_bits
        } else {
            &self.unknown_bits
        };
        bits[m.slot / 64] & (1 << (m.slot % 64)) != 0
    }

    /// Toggles op's bit in the linearized sets.
    fn flip(&mut self, op: usize) {
        let m = &self.ops[op];
        let (w, b) = (m.slot / 64, 1u64 << (m.slot % 64));
        if m.known() {
            self.known_bits[w] ^= b;
            self.hash ^= splitmix64(m.slot as u64);
        } else {
            self.unknown_bits[w] ^= b;
        }
    }

    /// Records the current sets with `state` and `chain`; false if that configuration is
    /// covered by one explored before.
    fn remember(&mut self, state: u32, chain: u32) -> bool {
        let key = self.hash ^ splitmix64((u64::from(state) << 32) | u64::from(chain));
        let slots = self.memo.entry(key).or_default();
        let found = slots
            .iter_mut()
            .find(|s| s.state == state && s.chain == chain && *s.known == *self.known_bits);
        match found {
            Some(slot) => {
                if slot
                    .unknown_sets
                    .iter()
                    .any(|u| is_subset(u, &self.unknown_bits))
                {
                    return false;
                }
                // The new set covers every explored superset of it.
                slot.unknown_sets
                    .retain(|u| !is_subset(&self.unknown_bits, u));
                slot.unknown_sets
                    .push(self.unknown_bits.clone().into_boxed_slice());
            }
            None => slots.push(Slot {
                known: self.known_bits.clone().into_boxed_slice(),
                state,
                chain,
                unknown_sets: vec![self.unknown_bits.clone().into_boxed_slice()],
            }),
        }
        true
    }

    fn unlink(&mut self, n: usize) {
        let Node { prev, next, .. } = self.nodes[n];
        self.nodes[prev].next = next;
        if next != NIL {
            self.nodes[next].prev = prev;
        }
    }

    fn relink(&mut self, n: usize) {
        let Node { prev, next, .. } = self.nodes[n];
        self.nodes[prev].next = n;
        if next != NIL {
            self.nodes[next].prev = n;
        }
    }

    fn lift(&mut self, op: usize) {
        self.unlink(self.call_node[op]);
        if self.ret_node[op] != NIL {
            self.unlink(self.ret_node[op]);
        }
    }

    fn unlift(&mut self, op: usize) {
        if self.ret_node[op] != NIL {
            self.relink(self.ret_node[op]);
        }
        self.relink(self.call_node[op]);
    }

    fn chain_start(&self) -> u32 {
        if self.chain == NO_CHAIN {
            self.state
        } else {
            self.chain
        }
    }

    fn twin_ok(&self, m: &MEntry<'_>) -> bool {
        m.twin_prev == NIL || self.is_linearized(m.twin_prev)
    }

    /// Whether determinate `m` may be placed now, beyond the model. After a chain of
    /// indeterminate ops it must observe the register, and the chain must matter to it: it must
    /// be illegal in the state before the chain (see the module doc).
    fn known_allowed(&self, m: &MEntry<'_>) -> bool {
        self.chain == NO_CHAIN || (!m.blind() && step(self.chain, m.op, m.out).is_none())
    }

    /// The canonical-linearization rules for indeterminate `m` taking the register from the
    /// current state to `next_state` (see the module doc): in a chain only CASes (a blind
    /// overwrite would hide the chain), never a no-op, never with an unused earlier twin.
    fn unknown_allowed(&self, m: &MEntry<'_>, next_state: u32) -> bool {
        (self.chain == NO_CHAIN || !m.blind()) && next_state != self.state && self.twin_ok(m)
    }

    /// Appends to `arena` the indeterminate ops worth trying next, at the end of the window
    /// whose first pending return is at `deadline`. A chain of them must end right before a
    /// determinate op of the window that observes the register and is illegal in the chain's
    /// start. When all those ops need specific values, only ops that can set those values (or,
    /// through CASes, the values those expect) are worth it, otherwise any. In a chain only
    /// CASes, and any CAS only if it expects the current state.
    fn collect_candidates(&mut self, deadline: u64) {
        let ops = self.ops;
        let chain = self.chain_start();
        let mut wanted: Vec<u32> = Vec::new();
        let mut change = false;
        let mut n = self.nodes[KHEAD].next;
        while n != NIL && self.nodes[n].is_call {
            self.steps += 1;
            let m = &ops[self.nodes[n].op];
            if !m.blind() && step(chain, m.op, m.out).is_none() {
                match demand(m) {
                    Some(Demand::Value(v)) if !wanted.contains(&v) => wanted.push(v),
                    Some(Demand::Change) => change = true,
                    _ => {}
                }
            }
            n = self.nodes[n].next;
        }
        if wanted.is_empty() && !change {
            return;
        }
        let eligible = |op: usize| ops[op].entry.invoke <= deadline;
        if !change {
            // Close over CASes: to get v from one expecting e, e is wanted first.
            let mut i = 0;
            while i < wanted.len() {
                for &op in self
                    .producers
                    .get(&wanted[i])
                    .map_or(&[][..], Vec::as_slice)
                {
                    if !eligible(op) {
                        break;
                    }
                    self.steps += 1;
                    if self.is_linearized(op) {
                        continue;
                    }
                    match ops[op].op {
                        MOp::Cas { expect, .. } if !wanted.contains(&expect) => {
                            wanted.push(expect);
                        }
                        MOp::Put(_) | MOp::Delete if self.chain == NO_CHAIN => {
                            self.arena.push(op);
                        }
                        _ => {}
                    }
                }
                i += 1;
            }
        } else if self.chain == NO_CHAIN {
            let mut n = self.nodes[UHEAD].next;
            while n != NIL && eligible(self.nodes[n].op) {
                self.steps += 1;
                self.arena.push(self.nodes[n].op);
                n = self.nodes[n].next;
            }
        }
        for &op in self
            .cas_by_expect
            .get(&self.state)
            .map_or(&[][..], Vec::as_slice)
        {
            if !eligible(op) {
                break;
            }
            self.steps += 1;
            let MOp::Cas { value, .. } = ops[op].op else {
                unreachable!()
            };
            if !self.is_linearized(op) && (change || wanted.contains(&value)) {
                self.arena.push(op);
            }
        }
    }

    /// After placing indeterminate `placed` (already flipped, not yet pushed) with the register
    /// going to `state` and the chain starting in `chain`: can anything follow it? A placement
    /// failing this is a dead end; rejecting it early saves a walk per child.
    fn can_follow(&mut self, placed: usize, state: u32, chain: u32, deadline: u64) -> bool {
        let ops = self.ops;
        let mut n = self.nodes[KHEAD].next;
        while n != NIL && self.nodes[n].is_call {
            self.steps += 1;
            let m = &ops[self.nodes[n].op];
            if !m.blind()
                && step(state, m.op, m.out).is_some()
                && step(chain, m.op, m.out).is_none()
            {
                return true;
            }
            n = self.nodes[n].next;
        }
        for &op in self
            .cas_by_expect
            .get(&state)
            .map_or(&[][..], Vec::as_slice)
        {
            if ops[op].entry.invoke > deadline {
                break;
            }
            self.steps += 1;
            if op != placed && !self.is_linearized(op) && self.twin_ok(&ops[op]) {
                return true;
            }
        }
        false
    }

    fn push(&mut self, op: usize, next_state: u32, next_chain: u32, pos: usize) {
        self.stack.push(Frame {
            op,
            state: self.state,
            chain: self.chain,
            arena_len: self.arena.len(),
            deadlines_len: self.deadlines.len(),
            pos,
        });
        self.state = next_state;
        self.chain = next_chain;
        self.lift(op);
        if self.ops[op].known() {
            self.known_left -= 1;
            let done = self.known_total - self.known_left;
            if done > self.best_known {
                self.best_known = done;
                self.best_step = self.steps;
            }
        }
    }

    /// Undoes the last placement; the cursor to resume trying siblings after it.
    fn pop(&mut self) -> Option<Cursor> {
        let f = self.stack.pop()?;
        self.state = f.state;
        self.chain = f.chain;
        self.arena.truncate(f.arena_len);
        self.deadlines.truncate(f.deadlines_len);
        self.flip(f.op);
        self.unlift(f.op);
        Some(if self.ops[f.op].known() {
            self.known_left += 1;
            Cursor::Known(self.nodes[self.call_node[f.op]].next)
        } else {
            Cursor::Unknown(f.pos + 1)
        })
    }

    /// Depth-first search for a linearization, determinate candidates first, examining at most
    /// `max_steps` events in all.
    fn run(&mut self, max_steps: u64) -> Verdict {
        let ops = self.ops;
        let mut cursor = Cursor::Known(self.nodes[KHEAD].next);
        loop {
            if self.known_left == 0 {
                return Verdict::Linearizable;
            }
            if self.steps >= max_steps {
                return Verdict::Exhausted;
            }
            self.steps += 1;
            match cursor {
                Cursor::Known(n) => {
                    // known_left > 0, so the list holds a pending return.
                    let node = self.nodes[n];
                    if !node.is_call {
                        // End of the window: on to the indeterminate ops that may help.
                        let deadline = ops[node.op].entry.ret.unwrap_or(u64::MAX);
                        self.deadlines.push(deadline);
                        cursor = Cursor::Unknown(self.arena.len());
                        self.collect_candidates(deadline);
                        continue;
                    }
                    let m = &ops[node.op];
                    if let Some(next_state) =
                        step(self.state, m.op, m.out).filter(|_| self.known_allowed(m))
                    {
                        self.flip(node.op);
                        if self.remember(next_state, NO_CHAIN) {
                            self.push(node.op, next_state, NO_CHAIN, 0);
                            cursor = Cursor::Known(self.nodes[KHEAD].next);
                            continue;
                        }
                        self.flip(node.op);
                    }
                    cursor = Cursor::Known(node.next);
                }
                Cursor::Unknown(pos) => {
                    if pos == self.arena.len() {
                        // Every child tried: backtrack.
                        match self.pop() {
                            Some(c) => cursor = c,
                            None => return Verdict::Illegal,
                        }
                        continue;
                    }
                    cursor = Cursor::Unknown(pos + 1);
                    let op = self.arena[pos];
                    let m = &ops[op];
                    let Some(next_state) = step(self.state, m.op, m.out) else {
                        continue;
                    };
                    if !self.unknown_allowed(m, next_state) {
                        continue;
                    }
                    let chain = self.chain_start();
                    let deadline = *self.deadlines.last().expect("walk has a deadline");
                    self.flip(op);
                    if self.can_follow(op, next_state, chain, deadline)
                        && self.remember(next_state, chain)
                    {
                        self.push(op, next_state, chain, pos);
                        cursor = Cursor::Known(self.nodes[KHEAD].next);
                        continue;
                    }
                    self.flip(op);
                }
            }
        }
    }
}

fn check_key(key: &str, entries: &[&Entry], budget: Budget) -> KeyResult {
    let mut interner = Interner::new();
    let mut ops = Vec::with_capacity(entries.len());
    let (mut n_known, mut n_unknown) = (0, 0);
    for &e in entries {
        let out = match &e.outcome {
            Some(Outcome::Failed) => continue,
            None | Some(Outcome::Unknown) => None,
            Some(Outcome::Ok(o)) => Some(match o {
                Output::Put => MOut::Put,
                Output::Get(v) => MOut::Get(interner.id(v.as_ref())),
                Output::Delete { deleted } => MOut::Delete(*deleted),
                Output::Cas { succeeded } => MOut::Cas(*succeeded),
            }),
        };
        let op = match &e.op {
            Op::Put { value } => MOp::Put(interner.id(Some(value))),
            Op::Get if out.is_none() => continue, // no effect, any output
            Op::Get => MOp::Get,
            Op::Delete => MOp::Delete,
            Op::Cas { expect, value } => MOp::Cas {
                expect: interner.id(expect.as_ref()),
                value: interner.id(Some(value)),
            },
        };
        let counter = if out.is_some() {
            &mut n_known
        } else {
            &mut n_unknown
        };
        ops.push(MEntry {
            entry: e,
            op,
            out,
            slot: *counter,
            twin_prev: NIL,
        });
        *counter += 1;
    }
    // Twins, in the order their calls appear in the search's event list.
    let mut unknown: Vec<usize> = (0..ops.len()).filter(|&i| !ops[i].known()).collect();
    unknown.sort_by_key(|&i| (ops[i].entry.invoke, i));
    let mut last: HashMap<MOp, usize> = HashMap::new();
    for i in unknown {
        ops[i].twin_prev = last.insert(ops[i].op, i).unwrap_or(NIL);
    }

    let mut search = Search::new(&ops);
    match search.run(budget.max_steps_per_key) {
        Verdict::Linearizable => KeyResult::Linearizable,
        Verdict::Exhausted => KeyResult::Exhausted,
        Verdict::Illegal => {
            // Replay deterministically up to the first time the longest prefix was reached.
            let best_step = search.best_step;
            let mut replay = Search::new(&ops);
            replay.run(best_step);
            KeyResult::Illegal(Box::new(explain(key, &replay, &interner)))
        }
    }
}

/// Describes the search's state (stopped right after reaching its longest prefix).
fn explain(key: &str, s: &Search<'_, '_>, interner: &Interner<'_>) -> Violation {
    let prefix: Vec<&Entry> = s.stack.iter().map(|f| s.ops[f.op].entry).collect();
    let tail_start = prefix.len().saturating_sub(Violation::TAIL);
    let mut candidates = Vec::new();
    let mut deadline = None;
    let mut n = s.nodes[KHEAD].next;
    while n != NIL {
        let node = s.nodes[n];
        let m = &s.ops[node.op];
        if !node.is_call {
            deadline = Some(m.entry.clone());
            break;
        }
        let why = match step(s.state, m.op, m.out) {
            None => reject_reason(s.state, m, interner),
            Some(_) => "legal here, but no linearization goes on from it".to_string(),
        };
        candidates.push((m.entry.clone(), why));
        n = node.next;
    }
    let limit = deadline.as_ref().and_then(|d| d.ret).unwrap_or(u64::MAX);
    let mut indeterminate_available = 0;
    for head in [UHEAD, CHEAD] {
        let mut n = s.nodes[head].next;
        while n != NIL && s.ops[s.nodes[n].op].entry.invoke <= limit {
            indeterminate_available += 1;
            n = s.nodes[n].next;
        }
    }
    Violation {
        key: key.to_string(),
        prefix_len: prefix.len(),
        prefix_tail: prefix[tail_start..].iter().map(|&e| e.clone()).collect(),
        state: interner.value(s.state),
        candidates,
        deadline,
        indeterminate_available,
    }
}

fn reject_reason(state: u32, m: &MEntry<'_>, interner: &Interner<'_>) -> String {
    let cur = interner.value(state);
    match (m.op, m.out) {
        (MOp::Get, Some(MOut::Get(v))) => {
            format!(
                "returned {:?}, but the register holds {cur:?}",
                interner.value(v)
            )
        }
        (MOp::Delete, Some(MOut::Delete(d))) => {
            format!("reported deleted={d}, but the register holds {cur:?}")
        }
        (MOp::Cas { expect, .. }, Some(MOut::Cas(ok))) => format!(
            "reported succeeded={ok} expecting {:?}, but the register holds {cur:?}",
            interner.value(expect)
        ),
        _ => "output of the wrong kind for the operation".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{History, OpId};
    use std::time::{Duration, Instant};

    fn s(v: &str) -> String {
        v.to_string()
    }

    fn done(h: &History, key: &str, op: Op, out: Output, t0: u64, t1: u64) -> OpId {
        let id = h.invoke(0, key, op, t0);
        h.complete(id, Outcome::Ok(out), t1);
        id
    }
    fn put(h: &History, key: &str, v: &str, t0: u64, t1: u64) {
        done(h, key, Op::Put { value: s(v) }, Output::Put, t0, t1);
    }
    fn get(h: &History, key: &str, v: Option<&str>, t0: u64, t1: u64) {
        done(h, key, Op::Get, Output::Get(v.map(s)), t0, t1);
    }
    fn del(h: &History, key: &str, deleted: bool, t0: u64, t1: u64) {
        done(h, key, Op::Delete, Output::Delete { deleted }, t0, t1);
    }
    fn cas(h: &History, key: &str, expect: Option<&str>, v: &str, ok: bool, t0: u64, t1: u64) {
        let op = Op::Cas {
            expect: expect.map(s),
            value: s(v),
        };
        done(h, key, op, Output::Cas { succeeded: ok }, t0, t1);
    }
    /// An op whose client gave up at `t0 + 5`.
    fn unknown(h: &History, key: &str, op: Op, t0: u64) {
        let id = h.invoke(0, key, op, t0);
        h.complete(id, Outcome::Unknown, t0 + 5);
    }
    fn put_op(v: &str) -> Op {
        Op::Put { value: s(v) }
    }
    fn chk(h: &History) -> CheckResult {
        check(&h.snapshot(), Budget::default())
    }
    fn violation(r: CheckResult) -> Box<Violation> {
        match r {
            CheckResult::Illegal(v) => v,
            other => panic!("expected Illegal, got {other}"),
        }
    }

    #[test]
    fn sequential_legal_history() {
        let h = History::new();
        get(&h, "k", None, 0, 1);
        put(&h, "k", "a", 2, 3);
        get(&h, "k", Some("a"), 4, 5);
        cas(&h, "k", Some("a"), "b", true, 6, 7);
        cas(&h, "k", Some("a"), "c", false, 8, 9);
        get(&h, "k", Some("b"), 10, 11);
        del(&h, "k", true, 12, 13);
        get(&h, "k", None, 14, 15);
        cas(&h, "k", None, "d", true, 16, 17);
        get(&h, "k", Some("d"), 18, 19);
        assert_eq!(chk(&h), CheckResult::Ok);
        // The key holds "d" now: a CAS expecting it absent cannot succeed.
        cas(&h, "k", None, "e", true, 20, 21);
        assert!(chk(&h).is_illegal());
    }

    #[test]
    fn concurrent_put_and_get_either_order() {
        for seen in [None, Some("x")] {
            let h = History::new();
            put(&h, "k", "x", 0, 10);
            get(&h, "k", seen, 5, 15);
            assert_eq!(chk(&h), CheckResult::Ok, "get saw {seen:?}");
        }
        // A get that overlaps the put but sees a value nobody wrote.
        let h = History::new();
        put(&h, "k", "x", 0, 10);
        get(&h, "k", Some("y"), 5, 15);
        assert!(chk(&h).is_illegal());
        // Closed intervals: invoked at the put's return instant still counts as concurrent.
        let h = History::new();
        put(&h, "k", "x", 0, 10);
        get(&h, "k", None, 10, 20);
        assert_eq!(chk(&h), CheckResult::Ok);
        let h = History::new();
        put(&h, "k", "x", 0, 10);
        get(&h, "k", None, 11, 20);
        assert!(chk(&h).is_illegal());
    }

    #[test]
    fn stale_read_is_illegal_and_explained() {
        let h = History::new();
        put(&h, "k", "a", 0, 10);
        put(&h, "k", "b", 20, 30);
        get(&h, "k", Some("a"), 40, 50);
        let v = violation(chk(&h));
        assert_eq!(v.key, "k");
        assert_eq!(v.prefix_len, 2);
        assert_eq!(v.state, Some(s("b")));
        assert_eq!(v.candidates.len(), 1);
        assert_eq!(v.candidates[0].0.op, Op::Get);
        assert!(
            v.candidates[0].1.contains("returned Some(\"a\")"),
            "{}",
            v.candidates[0].1
        );
        let text = v.to_string();
        assert!(
            text.contains("#2 c0 \"k\" get -> ok Some(\"a\") [40, 50]"),
            "{text}"
        );
        // Had the second put overlapped the get, the read would be fine.
        let h = History::new();
        put(&h, "k", "a", 0, 10);
        put(&h, "k", "b", 20, 45);
        get(&h, "k", Some("a"), 40, 50);
        assert_eq!(chk(&h), CheckResult::Ok);
    }

    #[test]
    fn lost_acknowledged_write_is_illegal() {
        let h = History::new();
        put(&h, "k", "a", 0, 10);
        get(&h, "k", Some("a"), 20, 30);
        put(&h, "k", "b", 40, 50);
        get(&h, "k", Some("a"), 60, 70);
        assert!(chk(&h).is_illegal());
        let h = History::new();
        put(&h, "k", "a", 0, 10);
        get(&h, "k", None, 20, 30);
        assert!(chk(&h).is_illegal());
    }

    #[test]
    fn cas_cannot_succeed_twice_from_the_same_value() {
        let h = History::new();
        put(&h, "k", "a", 0, 10);
        cas(&h, "k", Some("a"), "b", true, 20, 40);
        cas(&h, "k", Some("a"), "c", true, 25, 45);
        assert!(chk(&h).is_illegal());
        // One of them losing is fine, in either order.
        for first_wins in [true, false] {
            let h = History::new();
            put(&h, "k", "a", 0, 10);
            cas(&h, "k", Some("a"), "b", first_wins, 20, 40);
            cas(&h, "k", Some("a"), "c", !first_wins, 25, 45);
            assert_eq!(chk(&h), CheckResult::Ok);
        }
        // A concurrent put of "a" between them makes both successes legal (needs backtracking:
        // the put is invoked after the first CAS).
        let h = History::new();
        put(&h, "k", "a", 0, 10);
        cas(&h, "k", Some("a"), "b", true, 20, 40);
        cas(&h, "k", Some("a"), "c", true, 25, 45);
        put(&h, "k", "a", 22, 50);
        get(&h, "k", Some("c"), 60, 70);
        assert_eq!(chk(&h), CheckResult::Ok);
    }

    #[test]
    fn unknown_put_that_becomes_visible_is_legal() {
        let h = History::new();
        unknown(&h, "k", put_op("x"), 0);
        get(&h, "k", Some("x"), 100, 110);
        assert_eq!(chk(&h), CheckResult::Ok);
        // It may even take effect after a later acknowledged put.
        let h = History::new();
        unknown(&h, "k", put_op("x"), 0);
        put(&h, "k", "y", 120, 130);
        get(&h, "k", Some("y"), 140, 150);
        get(&h, "k", Some("x"), 160, 170);
        assert_eq!(chk(&h), CheckResult::Ok);
        // But only once: x was seen before y was written, so it cannot reappear after y.
        let h = History::new();
        unknown(&h, "k", put_op("x"), 0);
        get(&h, "k", Some("x"), 20, 30);
        put(&h, "k", "y", 50, 60);
        get(&h, "k", Some("x"), 100, 110);
        assert!(chk(&h).is_illegal());
        // And not before its invocation.
        let h = History::new();
        get(&h, "k", Some("x"), 0, 10);
        unknown(&h, "k", put_op("x"), 20);
        assert!(chk(&h).is_illegal());
        // A never-completed op (crashed client) is just as indeterminate...
        let h = History::new();
        h.invoke(0, "k", put_op("x"), 0);
        get(&h, "k", Some("x"), 100, 110);
        assert_eq!(chk(&h), CheckResult::Ok);
        // ...while a failed one never happened.
        let h = History::new();
        let id = h.invoke(0, "k", put_op("x"), 0);
        h.complete(id, Outcome::Failed, 5);
        get(&h, "k", Some("x"), 100, 110);
        assert!(chk(&h).is_illegal());
    }

    #[test]
    fn unknown_put_never_visible_is_legal() {
        let h = History::new();
        put(&h, "k", "a", 0, 10);
        unknown(&h, "k", put_op("x"), 20);
        get(&h, "k", Some("a"), 100, 110);
        get(&h, "k", Some("a"), 200, 210);
        put(&h, "k", "b", 300, 310);
        get(&h, "k", Some("b"), 400, 410);
        h.invoke(0, "k", put_op("z"), 420); // pending forever
        get(&h, "k", Some("b"), 500, 510);
        assert_eq!(chk(&h), CheckResult::Ok);
        // Seeing a and x alternate is not explained by one put of x.
        get(&h, "k", Some("x"), 600, 610);
        assert_eq!(chk(&h), CheckResult::Ok);
        get(&h, "k", Some("b"), 700, 710);
        assert!(chk(&h).is_illegal());
    }

    #[test]
    fn identical_unknown_puts_can_each_take_effect() {
        // Two retries of the same put, both timed out: each may have applied, at different times.
        let build = |retries: u64| {
            let h = History::new();
            for i in 0..retries {
                unknown(&h, "k", put_op("x"), i);
            }
            put(&h, "k", "y", 10, 20);
            get(&h, "k", Some("x"), 30, 40);
            put(&h, "k", "y", 50, 60);
            get(&h, "k", Some("x"), 70, 80);
            chk(&h)
        };
        assert!(build(1).is_illegal());
        assert_eq!(build(2), CheckResult::Ok);
        assert_eq!(build(3), CheckResult::Ok);
    }

    #[test]
    fn unknown_cas_and_delete() {
        let h = History::new();
        put(&h, "k", "a", 0, 10);
        unknown(
            &h,
            "k",
            Op::Cas {
                expect: Some(s("a")),
                value: s("b"),
            },
            20,
        );
        get(&h, "k", Some("b"), 100, 110);
        assert_eq!(chk(&h), CheckResult::Ok);
        let h = History::new();
        put(&h, "k", "a", 0, 10);
        unknown(
            &h,
            "k",
            Op::Cas {
                expect: Some(s("z")),
                value: s("b"),
            },
            20,
        );
        get(&h, "k", Some("b"), 100, 110); // the CAS's expectation never held
        assert!(chk(&h).is_illegal());
        for seen in [None, Some("a")] {
            let h = History::new();
            put(&h, "k", "a", 0, 10);
            unknown(&h, "k", Op::Delete, 20);
            get(&h, "k", seen, 100, 110);
            assert_eq!(chk(&h), CheckResult::Ok);
        }
    }

    #[test]
    fn delete_reports_whether_it_deleted() {
        let h = History::new();
        del(&h, "k", false, 0, 10);
        put(&h, "k", "a", 20, 30);
        del(&h, "k", true, 40, 50);
        get(&h, "k", None, 60, 70);
        del(&h, "k", false, 80, 90);
        assert_eq!(chk(&h), CheckResult::Ok);
        let h = History::new();
        del(&h, "k", true, 0, 10); // nothing to delete
        assert!(chk(&h).is_illegal());
        let h = History::new();
        put(&h, "k", "a", 0, 10);
        del(&h, "k", false, 20, 30); // there was something
        assert!(chk(&h).is_illegal());
        // Two concurrent deletes of a present key: exactly one deleted it.
        for (a, b, legal) in [
            (true, false, true),
            (false, true, true),
            (true, true, false),
        ] {
            let h = History::new();
            put(&h, "k", "a", 0, 10);
            del(&h, "k", a, 20, 40);
            del(&h, "k", b, 25, 45);
            assert_eq!(chk(&h).is_ok(), legal, "deleted {a} {b}");
        }
    }

    #[test]
    fn keys_are_independent() {
        let h = History::new();
        put(&h, "a", "x", 0, 10);
        get(&h, "b", None, 20, 30);
        put(&h, "b", "y", 40, 50);
        get(&h, "a", Some("x"), 60, 70);
        assert_eq!(chk(&h), CheckResult::Ok);
        get(&h, "b", Some("x"), 80, 90);
        let v = violation(chk(&h));
        assert_eq!(v.key, "b");
    }

    #[test]
    fn budget_exhaustion_is_unknown_but_a_violation_wins() {
        // 16 concurrent puts, then a read of a value none wrote: proving it illegal needs a
        // search over the orders of the puts that a 1000-step budget does not cover.
        let h = History::new();
        for i in 0..16 {
            put(&h, "hot", &format!("v{i}"), i, 100 + i);
            get(
                &h,
                "hot",
                Some(&format!("v{}", (i + 1) % 16)),
                50 + i,
                150 + i,
            );
        }
        get(&h, "hot", Some("nobody"), 1000, 1010);
        put(&h, "calm", "a", 0, 1);
        let small = Budget::steps(1000);
        assert_eq!(
            check(&h.snapshot(), small),
            CheckResult::Unknown {
                keys: vec![s("hot")]
            }
        );
        put(&h, "cold", "a", 0, 1);
        get(&h, "cold", Some("b"), 2, 3);
        assert_eq!(violation(check(&h.snapshot(), small)).key, "cold");
        // With the default budget the hot key is decided.
        let t = Instant::now();
        let r = chk(&h);
        assert!(r.is_illegal(), "{r}");
        eprintln!("16 concurrent puts and gets decided in {:?}", t.elapsed());
    }

    #[test]
    fn many_unknown_puts_do_not_explode() {
        // 64 unknown puts invoked early; the acknowledged history reads some of them (in an order
        // unrelated to their invocations), then ends with a read of a value nobody wrote.
        // Porcupine would explore subsets of the unknown puts; the canonical-placement rules
        // only ever place one right before a read that needs it.
        let build = |corrupt: bool| {
            let h = History::new();
            for i in 0..64 {
                unknown(&h, "k", put_op(&format!("u{i}")), i);
            }
            for i in 0..64u64 {
                let t = 1000 + 100 * i;
                put(&h, "k", &format!("a{i}"), t, t + 10);
                get(&h, "k", Some(&format!("a{i}")), t + 20, t + 30);
                if i % 4 == 0 {
                    get(
                        &h,
                        "k",
                        Some(&format!("u{}", (i * 37) % 64)),
                        t + 40,
                        t + 50,
                    );
                }
            }
            let last = if corrupt { "nobody" } else { "u5" };
            get(&h, "k", Some(last), 9000, 9010);
            h
        };
        let t = Instant::now();
        assert_eq!(chk(&build(false)), CheckResult::Ok);
        let legal = t.elapsed();
        let t = Instant::now();
        let v = violation(chk(&build(true)));
        let illegal = t.elapsed();
        eprintln!("64 unknown puts: legal in {legal:?}, illegal in {illegal:?}");
        assert_eq!(v.prefix_len, 128 + 16 + 16, "{v}");
        assert_eq!(v.candidates.last().unwrap().0.invoke, 9000, "{v}");
        assert!(legal + illegal < Duration::from_millis(500));
    }

    // --- randomized -------------------------------------------------------------------------

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(1);
            splitmix64(self.0)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
    }

    /// A legal history: a sequential run of the register model on random keys, each op's
    /// linearization point inside a random interval of up to `width` ns either side (points are
    /// 100 ns apart, so about `width / 50` ops overlap). Some ops fail (no effect), some end
    /// unknown or stay pending (with or without effect).
    fn random_history(seed: u64, n: usize, keys: u64, width: u64, indeterminate: u64) -> History {
        random_history_v(seed, n, keys, width, indeterminate, 4)
    }

    /// `values`: how many distinct values puts write (0: every put a fresh one).
    fn random_history_v(
        seed: u64,
        n: usize,
        keys: u64,
        width: u64,
        indeterminate: u64,
        values: u64,
    ) -> History {
        let mut rng = Rng(seed);
        let mut model: HashMap<String, Option<String>> = HashMap::new();
        let h = History::new();
        for i in 0..n as u64 {
            let at = width + 100 * (i + 1);
            let key = format!("k{}", rng.below(keys));
            let value = if values == 0 {
                format!("v{i}")
            } else {
                format!("v{}", rng.below(values))
            };
            let cur = model.get(&key).cloned().flatten();
            let op = match rng.below(10) {
                0..=2 => Op::Put { value },
                3..=5 => Op::Get,
                6 => Op::Delete,
                _ => {
                    let expect = if rng.chance(50) {
                        cur.clone()
                    } else {
                        Some(format!("v{}", rng.below(values.max(4))))
                    };
                    Op::Cas { expect, value }
                }
            };
            let (next, out) = match &op {
                Op::Put { value } => (Some(value.clone()), Output::Put),
                Op::Get => (cur.clone(), Output::Get(cur.clone())),
                Op::Delete => (
                    None,
                    Output::Delete {
                        deleted: cur.is_some(),
                    },
                ),
                Op::Cas { expect, value } if *expect == cur => {
                    (Some(value.clone()), Output::Cas { succeeded: true })
                }
                Op::Cas { .. } => (cur.clone(), Output::Cas { succeeded: false }),
            };
            let t0 = at - rng.below(width + 1);
            let t1 = at + rng.below(width + 1);
            let id = h.invoke(rng.below(8) as u32, key.clone(), op, t0);
            let roll = rng.below(100);
            let applied = if roll < 3 {
                h.complete(id, Outcome::Failed, t1);
                false
            } else if roll < 3 + indeterminate {
                let applied = rng.chance(50);
                if rng.chance(70) {
                    h.complete(id, Outcome::Unknown, t1);
                } // else pending forever
                applied
            } else {
                h.complete(id, Outcome::Ok(out), t1);
                true
            };
            if applied {
                model.insert(key, next);
            }
        }
        h
    }

    /// Reference checker for tiny single-key histories: tries every order (and every subset of
    /// the indeterminate ops) that real-time order allows, no pruning, no memo.
    fn brute_force(entries: &[Entry]) -> bool {
        fn apply(state: &Option<String>, e: &Entry) -> Option<Option<String>> {
            let out = match &e.outcome {
                Some(Outcome::Ok(o)) => Some(o),
                _ => None,
            };
            match (&e.op, out) {
                (Op::Put { value }, _) => Some(Some(value.clone())),
                (Op::Get, None) => Some(state.clone()),
                (Op::Get, Some(Output::Get(v))) => (v == state).then(|| state.clone()),
                (Op::Delete, None) => Some(None),
                (Op::Delete, Some(Output::Delete { deleted })) => {
                    (*deleted == state.is_some()).then_some(None)
                }
                (Op::Cas { expect, value }, None) => Some(if expect == state {
                    Some(value.clone())
                } else {
                    state.clone()
                }),
                (Op::Cas { expect, value }, Some(Output::Cas { succeeded })) => {
                    if (expect == state) != *succeeded {
                        None
                    } else if *succeeded {
                        Some(Some(value.clone()))
                    } else {
                        Some(state.clone())
                    }
                }
                _ => None,
            }
        }
        fn search(ops: &[&Entry], used: &mut Vec<bool>, state: &Option<String>) -> bool {
            let pending_known = |i: usize, used: &Vec<bool>| !used[i] && !ops[i].is_indeterminate();
            if (0..ops.len()).all(|i| !pending_known(i, used)) {
                return true;
            }
            for x in 0..ops.len() {
                if used[x] {
                    continue;
                }
                // Some unplaced determinate op returned before x was invoked: not yet.
                let blocked = (0..ops.len())
                    .any(|y| pending_known(y, used) && ops[y].ret.unwrap() < ops[x].invoke);
                if blocked {
                    continue;
                }
                if let Some(next) = apply(state, ops[x]) {
                    used[x] = true;
                    let ok = search(ops, used, &next);
                    used[x] = false;
                    if ok {
                        return true;
                    }
                }
            }
            false
        }
        let ops: Vec<&Entry> = entries
            .iter()
            .filter(|e| e.outcome != Some(Outcome::Failed))
            .collect();
        search(&ops, &mut vec![false; ops.len()], &None)
    }

    /// Tiny random single-key histories, legal or not, with every kind of outcome.
    fn tiny_history(rng: &mut Rng, n: usize) -> Vec<Entry> {
        tiny_history_with(rng, n, 10)
    }

    /// `indeterminate`: percent of ops left unknown or pending.
    fn tiny_history_with(rng: &mut Rng, n: usize, indeterminate: u64) -> Vec<Entry> {
        let val = |rng: &mut Rng| format!("v{}", rng.below(3));
        (0..n)
            .map(|i| {
                let op = match rng.below(4) {
                    0 => Op::Put { value: val(rng) },
                    1 => Op::Get,
                    2 => Op::Delete,
                    _ => Op::Cas {
                        expect: rng.chance(70).then(|| val(rng)),
                        value: val(rng),
                    },
                };
                let out = match &op {
                    Op::Put { .. } => Output::Put,
                    Op::Get => Output::Get(rng.chance(75).then(|| val(rng))),
                    Op::Delete => Output::Delete {
                        deleted: rng.chance(50),
                    },
                    Op::Cas { .. } => Output::Cas {
                        succeeded: rng.chance(50),
                    },
                };
                let invoke = rng.below(20);
                let ret = invoke + rng.below(8);
                let roll = rng.below(100);
                let outcome = if roll < indeterminate / 2 {
                    None
                } else if roll < indeterminate {
                    Some(Outcome::Unknown)
                } else if roll < indeterminate + 8 {
                    Some(Outcome::Failed)
                } else {
                    Some(Outcome::Ok(out))
                };
                let ret = outcome.as_ref().map(|_| ret);
                Entry {
                    id: OpId(i),
                    client: 0,
                    key: s("k"),
                    op,
                    invoke,
                    outcome,
                    ret,
                }
            })
            .collect()
    }

    #[test]
    fn agrees_with_brute_force_on_tiny_histories() {
        let mut rng = Rng(42);
        let (mut legal, mut illegal) = (0, 0);
        for case in 0..6000 {
            let entries = tiny_history(&mut rng, 2 + case % 6);
            let expected = brute_force(&entries);
            let got = check_entries(&entries, Budget::default());
            let snap = HistorySnapshot::from_entries(entries);
            assert!(
                got == CheckResult::Ok || got.is_illegal(),
                "case {case}: {got}\n{snap}"
            );
            assert_eq!(
                got.is_ok(),
                expected,
                "case {case}: checker says {got}\n{snap}"
            );
            if expected {
                legal += 1;
            } else {
                illegal += 1;
            }
        }
        // Both verdicts are well represented.
        assert!(
            legal > 1000 && illegal > 1000,
            "{legal} legal, {illegal} illegal"
        );
    }

    /// Longer soak against the reference: `cargo test -p detcd-sim --release --lib
    /// linearizability::tests::brute_force_soak -- --ignored`.
    #[test]
    #[ignore]
    fn brute_force_soak() {
        let mut rng = Rng(7);
        for case in 0..300_000u64 {
            let entries = tiny_history_with(&mut rng, 2 + (case % 8) as usize, 10 + case % 50);
            let expected = brute_force(&entries);
            let got = check_entries(&entries, Budget::default());
            let snap = HistorySnapshot::from_entries(entries);
            assert_eq!(
                got.is_ok(),
                expected,
                "case {case}: checker says {got}\n{snap}"
            );
        }
    }

    /// Rewrites one random acknowledged get to have read a value nobody wrote.
    fn corrupt_one_get(h: &History, seed: u64) -> (HistorySnapshot, Entry) {
        let mut snap = h.snapshot();
        let gets: Vec<usize> = (0..snap.entries.len())
            .filter(|&i| {
                snap.entries[i].op == Op::Get
                    && matches!(snap.entries[i].outcome, Some(Outcome::Ok(_)))
            })
            .collect();
        let i = gets[Rng(seed ^ 0xBAD).below(gets.len() as u64) as usize];
        snap.entries[i].outcome = Some(Outcome::Ok(Output::Get(Some(s("never-written")))));
        (snap.clone(), snap.entries[i].clone())
    }

    #[test]
    fn random_legal_histories_pass_and_one_corrupted_read_fails() {
        for seed in 0..60 {
            let (keys, width, indet) = match seed % 3 {
                0 => (1, 300, 0),
                1 => (3, 600, 10),
                _ => (5, 1000, 25),
            };
            let h = random_history(seed, 300, keys, width, indet);
            let snap = h.snapshot();
            let r = check(&snap, Budget::default());
            assert_eq!(r, CheckResult::Ok, "seed {seed}:\n{}", snap.dump());
            let (bad, entry) = corrupt_one_get(&h, seed);
            let v = violation(check(&bad, Budget::default()));
            assert_eq!(v.key, entry.key, "seed {seed}");
        }
    }

    #[test]
    fn two_thousand_ops_on_twenty_keys_is_fast() {
        let mut worst = Duration::ZERO;
        for seed in 0..5 {
            let h = random_history(1000 + seed, 2000, 20, 1000, 10);
            let snap = h.snapshot();
            let t = Instant::now();
            assert_eq!(check(&snap, Budget::default()), CheckResult::Ok);
            let legal = t.elapsed();
            let (bad, _) = corrupt_one_get(&h, seed);
            let t = Instant::now();
            assert!(check(&bad, Budget::default()).is_illegal());
            let illegal = t.elapsed();
            eprintln!("2000 ops / 20 keys: legal {legal:?}, corrupted {illegal:?}");
            worst = worst.max(legal).max(illegal);
        }
        assert!(worst < Duration::from_millis(500), "worst {worst:?}");
    }

    /// Bigger numbers for the record: `cargo test -p detcd-sim --release --lib
    /// linearizability::tests::timing -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn timing() {
        for (n, keys, width, indet, values) in [
            (20_000, 20, 1000, 10, 0),
            (20_000, 20, 1000, 10, 4),
            (20_000, 1, 300, 0, 0),
            (20_000, 1, 300, 10, 0),
            (100_000, 10, 2000, 10, 0),
            (5_000, 1, 3000, 30, 4),
        ] {
            let h = random_history_v(7, n, keys, width, indet, values);
            let t = Instant::now();
            let r = check(&h.snapshot(), Budget::default());
            let legal = t.elapsed();
            let (bad, _) = corrupt_one_get(&h, 7);
            let t = Instant::now();
            let r2 = check(&bad, Budget::default());
            eprintln!(
                "{n} ops / {keys} keys, width {width}, {indet}% indeterminate, {values} values: {} in {legal:?}; corrupted: {} in {:?}",
                if r.is_ok() {
                    "ok".into()
                } else {
                    r.to_string()
                },
                if r2.is_illegal() {
                    "illegal".into()
                } else {
                    r2.to_string()
                },
                t.elapsed()
            );
        }
    }
}
