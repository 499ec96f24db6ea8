//! Recorded client operations for the linearizability checker: what each client asked for
//! (put, get, compare-and-swap on one key), when it asked and when it got an answer (in
//! nanoseconds since the recorder started), and what the answer was.
//!
//! An operation's outcome is one of three things, because a client cannot always know:
//! - `Ok`: the server answered, so the operation took effect once, with that result;
//! - `Failed`: the operation certainly had no effect (a read that failed);
//! - `Unknown`: no answer (timeout, connection lost, leader changed): a write may have taken
//!   effect, now or later, or never. The checker treats it as still in flight forever.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Nanoseconds since the [`Recorder`] started.
pub type Nanos = u64;

/// What a client asked for. Values are strings; the absence of a key is `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Put {
        value: String,
    },
    Get,
    /// A transaction: if the key's value is `expected` (`None`: the key does not exist), put
    /// `new`.
    Cas {
        expected: Option<String>,
        new: String,
    },
}

/// What the server answered to a call that succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Put,
    Get(Option<String>),
    Cas { swapped: bool },
}

/// How an operation ended, as far as its client knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok(Output),
    /// Certainly no effect; the checker ignores the operation.
    Failed(String),
    /// Maybe an effect, at any time after the invocation.
    Unknown(String),
}

/// One recorded operation on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    pub client: usize,
    pub key: String,
    pub call: Call,
    pub outcome: Outcome,
    pub invoked: Nanos,
    /// When the client got its answer or gave up (for an unknown outcome the checker uses
    /// "never" instead).
    pub returned: Nanos,
    /// The store revision in the response header of a successful call.
    pub revision: Option<i64>,
}

impl Operation {
    /// True for a write the server acknowledged: a put, or a compare-and-swap that swapped.
    pub fn is_acknowledged_write(&self) -> bool {
        matches!(
            self.outcome,
            Outcome::Ok(Output::Put) | Outcome::Ok(Output::Cas { swapped: true })
        )
    }

    /// The value this operation writes if it takes effect.
    pub fn written_value(&self) -> Option<&str> {
        match &self.call {
            Call::Put { value } => Some(value),
            Call::Cas { new, .. } => Some(new),
            Call::Get => None,
        }
    }
}

fn seconds(n: Nanos) -> String {
    format!("{:.6}s", n as f64 / 1e9)
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {} ", self.client)?;
        match &self.call {
            Call::Put { value } => write!(f, "put({:?}, {value:?})", self.key)?,
            Call::Get => write!(f, "get({:?})", self.key)?,
            Call::Cas { expected, new } => {
                write!(f, "cas({:?}, {expected:?} -> {new:?})", self.key)?
            }
        }
        match &self.outcome {
            Outcome::Ok(Output::Put) => write!(f, " = ok")?,
            Outcome::Ok(Output::Get(value)) => write!(f, " = {value:?}")?,
            Outcome::Ok(Output::Cas { swapped }) => write!(f, " = swapped: {swapped}")?,
            Outcome::Failed(why) => write!(f, " = failed ({why})")?,
            Outcome::Unknown(why) => write!(f, " = unknown ({why})")?,
        }
        if let Some(revision) = self.revision {
            write!(f, " at revision {revision}")?;
        }
        write!(
            f,
            " [{} .. {}]",
            seconds(self.invoked),
            seconds(self.returned)
        )
    }
}

/// Collects operations from concurrent clients against one clock. Cheap to clone: every
/// clone records into the same history.
#[derive(Clone)]
pub struct Recorder {
    start: Instant,
    ops: Arc<Mutex<Vec<Operation>>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            start: Instant::now(),
            ops: Arc::default(),
        }
    }

    /// The recorder's clock.
    pub fn now(&self) -> Nanos {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(Nanos::MAX)
    }

    /// Notes the invocation time of `call`; the returned [`Invocation`] records the outcome.
    pub fn invoke(&self, client: usize, key: &str, call: Call) -> Invocation {
        Invocation {
            recorder: self.clone(),
            client,
            key: key.to_string(),
            call,
            invoked: self.now(),
        }
    }

    /// Everything recorded so far.
    pub fn history(&self) -> History {
        let ops = self.ops.lock().map(|ops| ops.clone()).unwrap_or_default();
        History { ops }
    }

    fn push(&self, op: Operation) {
        if let Ok(mut ops) = self.ops.lock() {
            ops.push(op);
        }
    }
}

/// An operation in flight.
pub struct Invocation {
    recorder: Recorder,
    client: usize,
    key: String,
    call: Call,
    invoked: Nanos,
}

impl Invocation {
    pub fn call(&self) -> &Call {
        &self.call
    }

    /// Records the outcome with the current time as the return time.
    pub fn finish(self, outcome: Outcome, revision: Option<i64>) {
        let returned = self.recorder.now();
        self.recorder.push(Operation {
            client: self.client,
            key: self.key,
            call: self.call,
            outcome,
            invoked: self.invoked,
            returned,
            revision,
        });
    }
}

/// A complete record of operations, in no particular order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    pub ops: Vec<Operation>,
}

/// How many operations ended which way, for a test's log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub ok: usize,
    pub failed: usize,
    pub unknown: usize,
    pub acknowledged_writes: usize,
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ok ({} acknowledged writes), {} failed, {} unknown",
            self.ok, self.acknowledged_writes, self.failed, self.unknown
        )
    }
}

impl History {
    /// The operations grouped by key (each key is a register of its own).
    pub fn by_key(&self) -> BTreeMap<&str, Vec<&Operation>> {
        let mut keys: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
        for op in &self.ops {
            keys.entry(op.key.as_str()).or_default().push(op);
        }
        keys
    }

    pub fn acknowledged_writes(&self) -> impl Iterator<Item = &Operation> {
        self.ops.iter().filter(|op| op.is_acknowledged_write())
    }

    pub fn tally(&self) -> Tally {
        let mut tally = Tally::default();
        for op in &self.ops {
            match op.outcome {
                Outcome::Ok(_) => tally.ok += 1,
                Outcome::Failed(_) => tally.failed += 1,
                Outcome::Unknown(_) => tally.unknown += 1,
            }
            tally.acknowledged_writes += usize::from(op.is_acknowledged_write());
        }
        tally
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorder_keeps_invocation_and_return_order() {
        let recorder = Recorder::new();
        let put = recorder.invoke(1, "k", Call::Put { value: "a".into() });
        let get = recorder.invoke(2, "k", Call::Get);
        get.finish(Outcome::Ok(Output::Get(None)), Some(1));
        put.finish(Outcome::Ok(Output::Put), Some(2));
        let history = recorder.history();
        assert_eq!(history.ops.len(), 2);
        let (get, put) = (&history.ops[0], &history.ops[1]);
        assert!(put.invoked <= get.invoked && get.returned <= put.returned);
        assert_eq!(history.acknowledged_writes().count(), 1);
        assert_eq!(history.by_key()["k"].len(), 2);
    }

    #[test]
    fn operations_print_call_outcome_and_times() {
        let op = Operation {
            client: 3,
            key: "k1".into(),
            call: Call::Cas {
                expected: None,
                new: "v".into(),
            },
            outcome: Outcome::Unknown("timeout".into()),
            invoked: 1_500_000_000,
            returned: 2_000_000_000,
            revision: None,
        };
        assert_eq!(
            op.to_string(),
            "client 3 cas(\"k1\", None -> \"v\") = unknown (timeout) [1.500000s .. 2.000000s]"
        );
    }

    #[test]
    fn tally_counts_outcomes() {
        let recorder = Recorder::new();
        recorder
            .invoke(0, "k", Call::Get)
            .finish(Outcome::Failed("no leader".into()), None);
        recorder
            .invoke(0, "k", Call::Put { value: "a".into() })
            .finish(Outcome::Unknown("timeout".into()), None);
        recorder
            .invoke(0, "k", Call::Put { value: "b".into() })
            .finish(Outcome::Ok(Output::Put), Some(2));
        let tally = recorder.history().tally();
        assert_eq!(
            tally,
            Tally {
                ok: 1,
                failed: 1,
                unknown: 1,
                acknowledged_writes: 1
            }
        );
    }
}
