//! A recorder of client operations on single keys, for the linearizability checker
//! (`crate::linearizability`).
//!
//! Client tasks share one [`History`] (it is an `Arc<Mutex<..>>` inside, so clones are cheap):
//! each call to the server is bracketed by [`History::invoke`] before the request is sent and
//! [`History::complete`] once its result is known. Times are nanoseconds of simulated time.
//!
//! An operation whose result is not known is *indeterminate*: it may have taken effect at any
//! moment after its invocation, or never. Both an explicit [`Outcome::Unknown`] (timeout,
//! connection error) and an operation that was never completed at all (its client crashed, or
//! the test ended first) are indeterminate; the checker treats them the same way.
//! [`Outcome::Failed`] means the operation definitely did not take effect, and the checker ignores
//! it.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

/// Identifies one recorded operation; returned by [`History::invoke`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(pub usize);

/// What a client asked for, on one key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Put {
        value: String,
    },
    Get,
    Delete,
    /// Compare-and-set: if the key's value equals `expect` (`None`: the key is absent), set it to
    /// `value`.
    Cas {
        expect: Option<String>,
        value: String,
    },
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The server answered; the output must match the operation's kind.
    Ok(Output),
    /// Definitely did not take effect (e.g. rejected by validation before it was proposed).
    Failed,
    /// Timeout, connection error, ...: may or may not have taken effect.
    Unknown,
}

/// The server's answer to a successful operation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Output {
    Put,
    Get(Option<String>),
    Delete { deleted: bool },
    Cas { succeeded: bool },
}

impl Output {
    /// Whether this is the kind of output `op` produces.
    pub fn matches(&self, op: &Op) -> bool {
        matches!(
            (op, self),
            (Op::Put { .. }, Output::Put)
                | (Op::Get, Output::Get(_))
                | (Op::Delete, Output::Delete { .. })
                | (Op::Cas { .. }, Output::Cas { .. })
        )
    }
}

/// One recorded operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub id: OpId,
    pub client: u32,
    pub key: String,
    pub op: Op,
    /// Invocation time (ns).
    pub invoke: u64,
    /// `None` while (or if forever) pending.
    pub outcome: Option<Outcome>,
    /// Completion time (ns), `None` while pending. For `Outcome::Unknown` this is when the client
    /// gave up, which bounds nothing: the checker treats the operation as returning at infinity.
    pub ret: Option<u64>,
}

impl Entry {
    /// Indeterminate: never completed, or completed with [`Outcome::Unknown`].
    pub fn is_indeterminate(&self) -> bool {
        matches!(self.outcome, None | Some(Outcome::Unknown))
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Put { value } => write!(f, "put({value:?})"),
            Op::Get => write!(f, "get"),
            Op::Delete => write!(f, "delete"),
            Op::Cas { expect, value } => write!(f, "cas({expect:?} -> {value:?})"),
        }
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Output::Put => write!(f, "ok"),
            Output::Get(v) => write!(f, "ok {v:?}"),
            Output::Delete { deleted } => write!(f, "ok deleted={deleted}"),
            Output::Cas { succeeded } => write!(f, "ok succeeded={succeeded}"),
        }
    }
}

/// One line: `#id c<client> <key> <op> -> <outcome> [<invoke>, <return>]`; an unknown outcome's
/// return is shown as `~t` (when the client gave up; the checker uses infinity), a pending one's
/// as `-`.
impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "#{} c{} {:?} {} -> ",
            self.id.0, self.client, self.key, self.op
        )?;
        match &self.outcome {
            None => write!(f, "pending")?,
            Some(Outcome::Ok(out)) => write!(f, "{out}")?,
            Some(Outcome::Failed) => write!(f, "failed")?,
            Some(Outcome::Unknown) => write!(f, "unknown")?,
        }
        write!(f, " [{}, ", self.invoke)?;
        match (&self.outcome, self.ret) {
            (Some(Outcome::Unknown), Some(t)) => write!(f, "~{t}]"),
            (_, Some(t)) => write!(f, "{t}]"),
            (_, None) => write!(f, "-]"),
        }
    }
}

/// The shared recorder. Clone it into every client task.
#[derive(Clone, Debug, Default)]
pub struct History {
    inner: Arc<Mutex<Vec<Entry>>>,
}

impl History {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Entry>> {
        // A panicking client task must not hide the history from the failure report.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that `client` sent `op` on `key` at `at` ns; complete it with the returned id.
    pub fn invoke(&self, client: u32, key: impl Into<String>, op: Op, at: u64) -> OpId {
        let mut entries = self.lock();
        let id = OpId(entries.len());
        entries.push(Entry {
            id,
            client,
            key: key.into(),
            op,
            invoke: at,
            outcome: None,
            ret: None,
        });
        id
    }

    /// Records how operation `id` ended, at `at` ns.
    ///
    /// Panics on harness bugs: an unknown id, a second completion, a return before the
    /// invocation, or an output of the wrong kind for the operation.
    pub fn complete(&self, id: OpId, outcome: Outcome, at: u64) {
        let mut entries = self.lock();
        let e = entries
            .get_mut(id.0)
            .unwrap_or_else(|| panic!("history: no operation {id:?}"));
        assert!(e.outcome.is_none(), "history: {id:?} completed twice ({e})");
        assert!(
            at >= e.invoke,
            "history: {id:?} returns at {at} before its invocation ({e})"
        );
        if let Outcome::Ok(out) = &outcome {
            assert!(
                out.matches(&e.op),
                "history: output {out:?} does not fit {e}"
            );
        }
        e.outcome = Some(outcome);
        e.ret = Some(at);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of everything recorded so far (pending operations stay pending in it).
    pub fn snapshot(&self) -> HistorySnapshot {
        HistorySnapshot {
            entries: self.lock().clone(),
        }
    }
}

/// An immutable copy of a history, which the checker reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistorySnapshot {
    pub entries: Vec<Entry>,
}

impl HistorySnapshot {
    /// Builds a snapshot from entries made elsewhere (tests, replays); ids need not be dense.
    pub fn from_entries(entries: Vec<Entry>) -> Self {
        Self { entries }
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Compact text dump, one operation per line in recording order (see `Display for Entry`).
    pub fn dump(&self) -> String {
        self.to_string()
    }

    /// Like [`Self::dump`], restricted to one key.
    pub fn dump_key(&self, key: &str) -> String {
        let mut s = String::new();
        for e in self.entries.iter().filter(|e| e.key == key) {
            s.push_str(&e.to_string());
            s.push('\n');
        }
        s
    }
}

impl fmt::Display for HistorySnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.entries {
            writeln!(f, "{e}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_from_clones_and_dumps() {
        let h = History::new();
        let h2 = h.clone();
        let a = h.invoke(1, "k", Op::Put { value: "v".into() }, 10);
        let b = h2.invoke(2, "k", Op::Get, 12);
        let c = h2.invoke(
            3,
            "j",
            Op::Cas {
                expect: None,
                value: "x".into(),
            },
            13,
        );
        let _d = h.invoke(4, "j", Op::Delete, 14);
        h.complete(a, Outcome::Ok(Output::Put), 20);
        h2.complete(b, Outcome::Ok(Output::Get(Some("v".into()))), 25);
        h.complete(c, Outcome::Unknown, 40);
        assert_eq!(h.len(), 4);
        let dump = h.snapshot().dump();
        assert_eq!(
            dump,
            "#0 c1 \"k\" put(\"v\") -> ok [10, 20]\n\
             #1 c2 \"k\" get -> ok Some(\"v\") [12, 25]\n\
             #2 c3 \"j\" cas(None -> \"x\") -> unknown [13, ~40]\n\
             #3 c4 \"j\" delete -> pending [14, -]\n"
        );
        assert_eq!(h.snapshot().dump_key("j").lines().count(), 2);
        let snap = h.snapshot();
        assert!(!snap.entries[0].is_indeterminate());
        assert!(snap.entries[2].is_indeterminate() && snap.entries[3].is_indeterminate());
    }

    #[test]
    #[should_panic(expected = "does not fit")]
    fn rejects_mismatched_output() {
        let h = History::new();
        let a = h.invoke(1, "k", Op::Get, 1);
        h.complete(a, Outcome::Ok(Output::Put), 2);
    }

    #[test]
    #[should_panic(expected = "completed twice")]
    fn rejects_double_completion() {
        let h = History::new();
        let a = h.invoke(1, "k", Op::Get, 1);
        h.complete(a, Outcome::Failed, 2);
        h.complete(a, Outcome::Failed, 3);
    }
}
