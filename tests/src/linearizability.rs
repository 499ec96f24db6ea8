//! A linearizability checker for [`History`]s of registers: each key is a register with put,
//! get and compare-and-swap, starting absent. Keys are checked independently (a history is
//! linearizable iff each key's sub-history is, since every operation touches one key).
//!
//! The search is Wing & Gong's with Lowe's memoisation, as in Porcupine: walk the
//! invocation/return events in time order; at an invocation, try to linearize that operation
//! now (the model accepts its result) unless the same set of linearized operations has
//! already reached the same register value; at a return of an operation not yet
//! linearized, backtrack. An unknown outcome never returns, so such an operation may take
//! effect at any point after its invocation, or (placed at the very end) not observably at
//! all. The search is bounded by a step budget; running out is reported as inconclusive,
//! never as linearizable.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use crate::history::{Call, History, Nanos, Operation, Outcome, Output};

/// How much search one key may cost before the checker gives up on it.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_steps_per_key: u64,
}

impl Default for Limits {
    fn default() -> Self {
        // A few seconds of search per key on a slow machine; the fault tests' histories of
        // a few thousand operations each need a few thousand steps.
        Limits {
            max_steps_per_key: 2_000_000,
        }
    }
}

/// The checker's finding for one key.
#[derive(Debug, Clone)]
pub enum Verdict {
    Linearizable,
    Violation(Violation),
    /// The step budget ran out before the search finished.
    Inconclusive,
}

/// Why a key's history is not linearizable: the longest order the search could build, the
/// register's value after it, and the operations that could not be placed after it. The
/// first of `stuck` returned before it could be linearized.
#[derive(Debug, Clone)]
pub struct Violation {
    pub linearized: Vec<Operation>,
    pub value: Option<String>,
    pub stuck: Vec<Operation>,
}

/// The verdict for one key and what it cost.
#[derive(Debug, Clone)]
pub struct KeyReport {
    pub key: String,
    pub operations: usize,
    pub steps: u64,
    pub verdict: Verdict,
}

/// The checker's findings for a whole history.
#[derive(Debug, Clone)]
pub struct Report {
    pub keys: Vec<KeyReport>,
}

impl Report {
    /// True only if every key was shown linearizable.
    pub fn is_linearizable(&self) -> bool {
        self.keys
            .iter()
            .all(|k| matches!(k.verdict, Verdict::Linearizable))
    }

    pub fn violations(&self) -> impl Iterator<Item = (&str, &Violation)> {
        self.keys.iter().filter_map(|k| match &k.verdict {
            Verdict::Violation(v) => Some((k.key.as_str(), v)),
            _ => None,
        })
    }
}

/// How many linearized operations a violation report shows before the stuck ones.
const CONTEXT: usize = 8;

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for key in &self.keys {
            write!(
                f,
                "key {:?}: {} operations, {} steps: ",
                key.key, key.operations, key.steps
            )?;
            match &key.verdict {
                Verdict::Linearizable => writeln!(f, "linearizable")?,
                Verdict::Inconclusive => writeln!(f, "INCONCLUSIVE (step budget exhausted)")?,
                Verdict::Violation(v) => {
                    writeln!(
                        f,
                        "NOT LINEARIZABLE: after the longest linearizable prefix of {} \
                         operations (last {} shown) the value is {:?}",
                        v.linearized.len(),
                        v.linearized.len().min(CONTEXT),
                        v.value
                    )?;
                    for op in &v.linearized[v.linearized.len().saturating_sub(CONTEXT)..] {
                        writeln!(f, "    {op}")?;
                    }
                    writeln!(
                        f,
                        "  and none of these can come next, yet the first had returned:"
                    )?;
                    for op in &v.stuck {
                        writeln!(f, "    {op}")?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Checks every key of `history`.
pub fn check(history: &History, limits: Limits) -> Report {
    let keys = history
        .by_key()
        .into_iter()
        .map(|(key, ops)| check_key(key, &ops, limits))
        .collect();
    Report { keys }
}

/// Register values are interned so that the memo holds small integers; `None` is absent.
type Value = Option<u32>;

/// One operation as the search sees it.
struct Op<'h> {
    call: Call32,
    result: Result32,
    source: &'h Operation,
}

enum Call32 {
    Put(u32),
    Get,
    Cas { expected: Value, new: u32 },
}

enum Result32 {
    Put,
    Get(Value),
    Cas(bool),
    Unknown,
}

/// The register model: the value after `op` from `value`, or `None` if `op`'s result is
/// impossible from `value`.
fn step(value: Value, op: &Op) -> Option<Value> {
    match (&op.call, &op.result) {
        (Call32::Put(v), _) => Some(Some(*v)),
        (Call32::Get, Result32::Get(seen)) => (*seen == value).then_some(value),
        (Call32::Get, _) => Some(value),
        (Call32::Cas { expected, new }, Result32::Cas(true)) => {
            (*expected == value).then_some(Some(*new))
        }
        (Call32::Cas { expected, .. }, Result32::Cas(false)) => {
            (*expected != value).then_some(value)
        }
        (Call32::Cas { expected, new }, _) => Some(if *expected == value {
            Some(*new)
        } else {
            value
        }),
    }
}

#[derive(Default)]
struct Interner {
    values: BTreeMap<String, u32>,
}

impl Interner {
    fn id(&mut self, value: &str) -> u32 {
        if let Some(id) = self.values.get(value) {
            return *id;
        }
        let id = u32::try_from(self.values.len()).unwrap_or(u32::MAX);
        self.values.insert(value.to_string(), id);
        id
    }

    fn opt(&mut self, value: Option<&str>) -> Value {
        value.map(|v| self.id(v))
    }
}

/// The values some operation can tell apart: those a read returned or a compare-and-swap
/// compared with. All other written values look the same to every operation, so the model
/// treats them as one value ([`UNOBSERVED`]): fewer distinct states, more memo hits.
fn observed_values<'h>(ops: &[&'h Operation]) -> HashSet<&'h str> {
    ops.iter()
        .filter_map(|op| match (&op.call, &op.outcome) {
            (_, Outcome::Ok(Output::Get(Some(v)))) => Some(v.as_str()),
            (Call::Cas { expected, .. }, _) => expected.as_deref(),
            _ => None,
        })
        .collect()
}

/// Every value no operation can tell apart from another (see [`observed_values`]).
const UNOBSERVED: &str = "<a value no operation observed>";

/// Converts the operations that can have had an effect (all but `Failed`).
fn prepare<'h>(ops: &[&'h Operation], interner: &mut Interner) -> Vec<Op<'h>> {
    let observed = observed_values(ops);
    let written = |interner: &mut Interner, value: &str| {
        interner.id(if observed.contains(value) {
            value
        } else {
            UNOBSERVED
        })
    };
    ops.iter()
        .filter(|op| !matches!(op.outcome, Outcome::Failed(_)))
        .map(|&source| {
            let call = match &source.call {
                Call::Put { value } => Call32::Put(written(interner, value)),
                Call::Get => Call32::Get,
                Call::Cas { expected, new } => Call32::Cas {
                    expected: interner.opt(expected.as_deref()),
                    new: written(interner, new),
                },
            };
            let result = match &source.outcome {
                Outcome::Ok(Output::Put) => Result32::Put,
                Outcome::Ok(Output::Get(seen)) => Result32::Get(interner.opt(seen.as_deref())),
                Outcome::Ok(Output::Cas { swapped }) => Result32::Cas(*swapped),
                Outcome::Failed(_) | Outcome::Unknown(_) => Result32::Unknown,
            };
            Op {
                call,
                result,
                source,
            }
        })
        .collect()
}

/// The time an operation's effect must have happened by: its return, or never if unknown.
fn deadline(op: &Operation) -> Nanos {
    match op.outcome {
        Outcome::Unknown(_) => Nanos::MAX,
        _ => op.returned,
    }
}

/// The events of a key's history as a doubly linked list (index 0 is the head sentinel), so
/// that linearizing an operation unlinks its two events and backtracking relinks them.
struct Events {
    /// For each event: the operation, and whether it is the invocation.
    event: Vec<(usize, bool)>,
    next: Vec<usize>,
    prev: Vec<usize>,
    /// For each operation: its invocation and return event.
    of_op: Vec<(usize, usize)>,
}

const NIL: usize = usize::MAX;

impl Events {
    fn new(ops: &[Op]) -> Events {
        let mut timeline: Vec<(Nanos, bool, usize)> = Vec::with_capacity(ops.len() * 2);
        for (i, op) in ops.iter().enumerate() {
            // At equal times the invocation sorts first (`false` < `true`): the two
            // operations are then concurrent, the reading that accepts more histories.
            timeline.push((op.source.invoked, false, i));
            timeline.push((deadline(op.source), true, i));
        }
        timeline.sort_unstable();
        let len = timeline.len() + 1;
        let mut events = Events {
            event: Vec::with_capacity(len),
            next: (1..=len).map(|n| if n == len { NIL } else { n }).collect(),
            prev: (0..len).map(|n| n.wrapping_sub(1)).collect(),
            of_op: vec![(0, 0); ops.len()],
        };
        events.prev[0] = NIL;
        events.event.push((NIL, false));
        for (slot, (_, is_return, op)) in timeline.into_iter().enumerate() {
            let index = slot + 1;
            events.event.push((op, !is_return));
            if is_return {
                events.of_op[op].1 = index;
            } else {
                events.of_op[op].0 = index;
            }
        }
        events
    }

    fn first(&self) -> usize {
        self.next[0]
    }

    fn unlink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    /// Undoes `unlink(e)`; relinks must come in the reverse order of the unlinks.
    fn relink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = e;
        if n != NIL {
            self.prev[n] = e;
        }
    }

    fn lift(&mut self, op: usize) {
        let (call, ret) = self.of_op[op];
        self.unlink(call);
        self.unlink(ret);
    }

    fn unlift(&mut self, op: usize) {
        let (call, ret) = self.of_op[op];
        self.relink(ret);
        self.relink(call);
    }

    /// The operations invoked before event `end`, in list order.
    fn pending_until(&self, end: usize) -> Vec<usize> {
        let mut ops = Vec::new();
        let mut e = self.first();
        while e != NIL && e != end {
            if self.event[e].1 {
                ops.push(self.event[e].0);
            }
            e = self.next[e];
        }
        ops
    }
}

/// A set of operations as a bit vector: the memo key together with the register value.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(len: usize) -> Bits {
        Bits(vec![0; len.div_ceil(64)])
    }

    fn with(&self, i: usize) -> Bits {
        let mut bits = self.clone();
        bits.0[i / 64] |= 1 << (i % 64);
        bits
    }

    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// The deepest point the search reached, for the diagnostics of a violation.
struct Deepest {
    linearized: Vec<usize>,
    stuck: Vec<usize>,
}

fn check_key(key: &str, ops: &[&Operation], limits: Limits) -> KeyReport {
    let mut interner = Interner::default();
    let ops = prepare(ops, &mut interner);
    let mut events = Events::new(&ops);
    let mut memo: HashSet<(Bits, Value)> = HashSet::new();
    let mut linearized = Bits::new(ops.len());
    let mut value: Value = None;
    // The linearized operations in order, each with the value before it.
    let mut stack: Vec<(usize, Value)> = Vec::new();
    let mut deepest: Option<Deepest> = None;
    let mut steps = 0;
    let mut e = events.first();
    let verdict = loop {
        if events.first() == NIL {
            break Verdict::Linearizable;
        }
        steps += 1;
        if steps > limits.max_steps_per_key {
            break Verdict::Inconclusive;
        }
        let (op, is_call) = events.event[e];
        if is_call {
            if let Some(after) = step(value, &ops[op]) {
                let bits = linearized.with(op);
                if memo.insert((bits.clone(), after)) {
                    stack.push((op, value));
                    linearized = bits;
                    value = after;
                    events.lift(op);
                    e = events.first();
                    continue;
                }
            }
            e = events.next[e];
            continue;
        }
        // `op` returned before it could be linearized: undo the last choice.
        if deepest
            .as_ref()
            .is_none_or(|d| stack.len() > d.linearized.len())
        {
            deepest = Some(Deepest {
                linearized: stack.iter().map(|(op, _)| *op).collect(),
                stuck: stuck_ops(&events, e, op),
            });
        }
        let Some((last, before)) = stack.pop() else {
            let deepest = deepest.unwrap_or(Deepest {
                linearized: Vec::new(),
                stuck: vec![op],
            });
            let source = |i: &usize| ops[*i].source.clone();
            let linearized: Vec<Operation> = deepest.linearized.iter().map(source).collect();
            break Verdict::Violation(Violation {
                value: replay(&linearized),
                linearized,
                stuck: deepest.stuck.iter().map(source).collect(),
            });
        };
        linearized.clear(last);
        value = before;
        events.unlift(last);
        e = events.next[events.of_op[last].0];
    };
    KeyReport {
        key: key.to_string(),
        operations: ops.len(),
        steps,
        verdict,
    }
}

/// The register's value after `ops` in this order, with the real values (the search itself
/// merges the unobserved ones).
fn replay(ops: &[Operation]) -> Option<String> {
    ops.iter()
        .fold(None, |value, op| match (&op.call, &op.outcome) {
            (Call::Put { value }, _) => Some(value.clone()),
            (Call::Cas { new, .. }, Outcome::Ok(Output::Cas { swapped: true })) => {
                Some(new.clone())
            }
            (Call::Cas { expected, new }, Outcome::Unknown(_)) if *expected == value => {
                Some(new.clone())
            }
            _ => value,
        })
}

/// The operation whose return blocked the search first, then the others still pending.
fn stuck_ops(events: &Events, return_event: usize, op: usize) -> Vec<usize> {
    let mut stuck = vec![op];
    stuck.extend(
        events
            .pending_until(return_event)
            .into_iter()
            .filter(|&o| o != op),
    );
    stuck
}

#[cfg(test)]
// A failed unwrap is a failed assertion with its value printed, which is what a test wants.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Builds operations on key "x" from a compact description.
    fn op(
        client: usize,
        call: Call,
        outcome: Outcome,
        invoked: Nanos,
        returned: Nanos,
    ) -> Operation {
        Operation {
            client,
            key: "x".into(),
            call,
            outcome,
            invoked,
            returned,
            revision: None,
        }
    }

    fn put(client: usize, v: &str, t: (Nanos, Nanos)) -> Operation {
        op(
            client,
            Call::Put { value: v.into() },
            Outcome::Ok(Output::Put),
            t.0,
            t.1,
        )
    }

    fn put_unknown(client: usize, v: &str, t: (Nanos, Nanos)) -> Operation {
        let call = Call::Put { value: v.into() };
        op(client, call, Outcome::Unknown("timeout".into()), t.0, t.1)
    }

    fn get(client: usize, seen: Option<&str>, t: (Nanos, Nanos)) -> Operation {
        let out = Outcome::Ok(Output::Get(seen.map(String::from)));
        op(client, Call::Get, out, t.0, t.1)
    }

    fn cas(
        client: usize,
        exp: Option<&str>,
        new: &str,
        swapped: bool,
        t: (Nanos, Nanos),
    ) -> Operation {
        let call = Call::Cas {
            expected: exp.map(String::from),
            new: new.into(),
        };
        op(client, call, Outcome::Ok(Output::Cas { swapped }), t.0, t.1)
    }

    fn verdict(ops: Vec<Operation>) -> Report {
        check(&History { ops }, Limits::default())
    }

    #[test]
    fn valid_concurrent_history_is_accepted() {
        let report = verdict(vec![
            put(0, "a", (0, 10)),
            // Concurrent with the put: one read sees it, another does not yet.
            get(1, Some("a"), (2, 4)),
            get(2, None, (1, 3)),
            cas(1, Some("a"), "b", true, (11, 12)),
            cas(2, Some("a"), "c", false, (11, 13)),
            get(2, Some("b"), (14, 15)),
        ]);
        assert!(report.is_linearizable(), "{report}");
    }

    #[test]
    fn stale_read_is_rejected() {
        let report = verdict(vec![
            put(0, "a", (0, 1)),
            put(0, "b", (2, 3)),
            get(1, Some("a"), (4, 5)),
        ]);
        assert!(!report.is_linearizable());
        let (key, violation) = report.violations().next().unwrap();
        assert_eq!(key, "x");
        assert_eq!(violation.value.as_deref(), Some("b"));
        assert_eq!(violation.stuck[0].call, Call::Get);
        let text = report.to_string();
        assert!(text.contains("NOT LINEARIZABLE"), "{text}");
        assert!(text.contains("client 1 get(\"x\") = Some(\"a\")"), "{text}");
    }

    #[test]
    fn lost_acknowledged_write_is_rejected() {
        let report = verdict(vec![put(0, "a", (0, 1)), get(1, None, (5, 6))]);
        let (_, violation) = report.violations().next().unwrap();
        assert_eq!(violation.linearized, vec![put(0, "a", (0, 1))]);
        assert_eq!(violation.stuck, vec![get(1, None, (5, 6))]);
    }

    #[test]
    fn unknown_write_that_took_effect_is_accepted() {
        let report = verdict(vec![
            put(0, "a", (0, 1)),
            put_unknown(1, "b", (2, 3)),
            // Read long after the client gave up: the write still took effect.
            get(2, Some("b"), (10, 11)),
        ]);
        assert!(report.is_linearizable(), "{report}");
    }

    #[test]
    fn unknown_write_that_never_took_effect_is_accepted() {
        let report = verdict(vec![
            put(0, "a", (0, 1)),
            put_unknown(1, "b", (2, 3)),
            get(2, Some("a"), (10, 11)),
        ]);
        assert!(report.is_linearizable(), "{report}");
    }

    #[test]
    fn unknown_write_cannot_take_effect_twice() {
        let report = verdict(vec![
            put(0, "a", (0, 1)),
            put_unknown(1, "b", (2, 3)),
            get(2, Some("b"), (10, 11)),
            put(0, "c", (12, 13)),
            get(2, Some("b"), (14, 15)),
        ]);
        assert!(!report.is_linearizable());
    }

    #[test]
    fn failed_compare_and_swap_observes_the_value() {
        // Nothing else wrote, so the value was "a" and the swap had to succeed.
        let report = verdict(vec![
            put(0, "a", (0, 1)),
            cas(1, Some("a"), "b", false, (2, 3)),
        ]);
        assert!(!report.is_linearizable());
        // From an absent key, expecting absence succeeds.
        let report = verdict(vec![
            cas(1, None, "b", true, (0, 1)),
            get(0, Some("b"), (2, 3)),
        ]);
        assert!(report.is_linearizable(), "{report}");
    }

    #[test]
    fn unknown_compare_and_swap_may_apply_later() {
        let unknown_cas = op(
            1,
            Call::Cas {
                expected: Some("a".into()),
                new: "b".into(),
            },
            Outcome::Unknown("leader changed".into()),
            2,
            3,
        );
        let report = verdict(vec![
            put(0, "a", (0, 1)),
            unknown_cas,
            get(2, Some("a"), (4, 5)),
            get(2, Some("b"), (6, 7)),
        ]);
        assert!(report.is_linearizable(), "{report}");
    }

    #[test]
    fn values_nobody_observed_are_one_value_to_the_model() {
        // Two unseen values in a row, then a swap that expected neither: it must fail, and a
        // read of an unseen value is still told apart from a seen one.
        let report = verdict(vec![
            put(0, "a", (0, 1)),
            put(1, "unseen-1", (2, 3)),
            put(2, "unseen-2", (4, 5)),
            cas(0, Some("a"), "b", false, (6, 7)),
            get(0, Some("b"), (8, 9)),
        ]);
        assert!(!report.is_linearizable());
        let mut ops: Vec<Operation> = (0..24)
            .map(|i| put_unknown(i, &format!("lost-{i}"), (i as u64, i as u64 + 1)))
            .collect();
        ops.extend([
            put(99, "seen", (100, 101)),
            get(98, Some("seen"), (102, 103)),
        ]);
        let report = verdict(ops);
        assert!(report.is_linearizable(), "{report}");
    }

    #[test]
    fn failed_operations_are_ignored() {
        let failed = op(1, Call::Get, Outcome::Failed("no leader".into()), 2, 3);
        let report = verdict(vec![put(0, "a", (0, 1)), failed]);
        assert!(report.is_linearizable(), "{report}");
        assert_eq!(report.keys[0].operations, 1);
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut other = get(1, Some("a"), (0, 1));
        other.key = "y".into();
        let report = verdict(vec![put(0, "a", (0, 1)), other]);
        let bad: Vec<&str> = report.violations().map(|(k, _)| k).collect();
        assert_eq!(bad, vec!["y"]);
    }

    #[test]
    fn exhausted_budget_is_inconclusive_not_linearizable() {
        let ops: Vec<Operation> = (0..50)
            .map(|i| put(i, &format!("v{i}"), (0, 100)))
            .chain([get(99, Some("v7"), (101, 102))])
            .collect();
        let report = check(
            &History { ops },
            Limits {
                max_steps_per_key: 10,
            },
        );
        assert!(matches!(report.keys[0].verdict, Verdict::Inconclusive));
        assert!(!report.is_linearizable());
    }

    #[test]
    fn many_concurrent_writers_stay_cheap() {
        // 40 overlapping writes then reads that pin down an order: the memo keeps this
        // far from the 40! orders a naive search would try.
        let mut ops: Vec<Operation> = (0..40)
            .map(|i| put(i, &format!("v{i}"), (i as u64, 1000 + i as u64)))
            .collect();
        ops.push(get(99, Some("v39"), (2000, 2001)));
        let report = verdict(ops);
        assert!(report.is_linearizable(), "{report}");
        assert!(report.keys[0].steps < 100_000, "{}", report.keys[0].steps);
    }
}
