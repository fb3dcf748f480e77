//! A linearizability checker for key-value histories: Wing and Gong's search
//! with Lowe's memoisation of (linearized set, model state), split by key
//! (P-compositionality: a history is linearizable when each key's is, since
//! every operation touches one key).
//!
//! An operation whose outcome is unknown (the client gave up, or the call
//! was cut off) may have taken effect at any point after its call, or never:
//! it never constrains the order (its return is at infinity), and the search
//! succeeds once every operation with a known outcome is placed.

use std::collections::{BTreeMap, HashSet};

/// One operation on one key, as the register model sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Input {
    Get,
    Put(String),
    Delete,
    Cas {
        expected: Option<String>,
        value: String,
    },
}

/// What an operation answered.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Output {
    /// `get`: the value read.
    Value(Option<String>),
    /// `put`, `delete`: the value before.
    Previous(Option<String>),
    /// `cas`: whether it swapped, and the value after.
    Cas { ok: bool, current: Option<String> },
}

/// One operation of a history. Times are on one clock (nanoseconds since
/// the history began).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    pub client: usize,
    pub key: String,
    pub input: Input,
    pub call: u64,
    /// `None` when the outcome is unknown.
    pub returned: Option<(u64, Output)>,
}

/// The register model: what `input` answers and leaves on `state`.
pub fn step(state: &Option<String>, input: &Input) -> (Option<String>, Output) {
    match input {
        Input::Get => (state.clone(), Output::Value(state.clone())),
        Input::Put(value) => (Some(value.clone()), Output::Previous(state.clone())),
        Input::Delete => (None, Output::Previous(state.clone())),
        Input::Cas { expected, value } => {
            if state == expected {
                (
                    Some(value.clone()),
                    Output::Cas {
                        ok: true,
                        current: Some(value.clone()),
                    },
                )
            } else {
                (
                    state.clone(),
                    Output::Cas {
                        ok: false,
                        current: state.clone(),
                    },
                )
            }
        }
    }
}

/// Why a history is not linearizable: the key whose operations admit no order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub key: String,
    pub operations: Vec<Operation>,
}

/// How much work the check did, for the test's report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Effort {
    pub keys: usize,
    pub operations: usize,
    pub states_visited: u64,
}

/// Checks every key's history from an absent value; the first key that
/// admits no linearization is the violation.
pub fn check(history: &[Operation]) -> Result<Effort, Violation> {
    let mut by_key: BTreeMap<&str, Vec<Operation>> = BTreeMap::new();
    for operation in history {
        by_key
            .entry(&operation.key)
            .or_default()
            .push(operation.clone());
    }
    let mut effort = Effort {
        keys: by_key.len(),
        operations: history.len(),
        states_visited: 0,
    };
    for (key, operations) in by_key {
        match check_key(&operations) {
            Ok(visited) => effort.states_visited += visited,
            Err(()) => {
                return Err(Violation {
                    key: key.to_owned(),
                    operations,
                });
            }
        }
    }
    Ok(effort)
}

/// A set of operation positions.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(size: usize) -> Bits {
        Bits(vec![0; size.div_ceil(64)])
    }
    fn contains(&self, position: usize) -> bool {
        self.0[position / 64] & (1 << (position % 64)) != 0
    }
    fn insert(&mut self, position: usize) {
        self.0[position / 64] |= 1 << (position % 64);
    }
    fn remove(&mut self, position: usize) {
        self.0[position / 64] &= !(1 << (position % 64));
    }
}

/// One key: depth-first search over the orders the real-time constraints
/// allow, skipping (linearized set, state) pairs already explored.
fn check_key(operations: &[Operation]) -> Result<u64, ()> {
    let count = operations.len();
    let known = operations
        .iter()
        .filter(|operation| operation.returned.is_some())
        .count();
    let returned_at = |position: usize| {
        operations[position]
            .returned
            .as_ref()
            .map_or(u64::MAX, |(at, _)| *at)
    };
    let mut linearized = Bits::new(count);
    let mut placed_known = 0usize;
    let mut state: Option<String> = None;
    let mut seen: HashSet<(Bits, Option<String>)> = HashSet::new();
    // The path: (position placed, the state before it).
    let mut path: Vec<(usize, Option<String>)> = Vec::new();
    // The next candidate to try at each depth.
    let mut next_candidate = 0usize;
    let mut visited = 0u64;
    loop {
        if placed_known == known {
            return Ok(visited);
        }
        // An operation can go next if it was called before every remaining
        // operation with a known outcome returned.
        let horizon = (0..count)
            .filter(|position| !linearized.contains(*position))
            .map(returned_at)
            .min()
            .unwrap_or(u64::MAX);
        let candidate = (next_candidate..count).find_map(|position| {
            let operation = &operations[position];
            if linearized.contains(position) || operation.call > horizon {
                return None;
            }
            let (after, output) = step(&state, &operation.input);
            if let Some((_, expected)) = &operation.returned
                && *expected != output
            {
                return None;
            }
            let mut placed = linearized.clone();
            placed.insert(position);
            // Lowe's memo: this (set, state) was explored already.
            seen.insert((placed, after.clone()))
                .then_some((position, after))
        });
        if let Some((position, after)) = candidate {
            linearized.insert(position);
            visited += 1;
            path.push((position, std::mem::replace(&mut state, after)));
            if operations[position].returned.is_some() {
                placed_known += 1;
            }
            next_candidate = 0;
            continue;
        }
        // Nothing fits here: undo the last placement and try its successors.
        let Some((position, before)) = path.pop() else {
            return Err(());
        };
        linearized.remove(position);
        state = before;
        if operations[position].returned.is_some() {
            placed_known -= 1;
        }
        next_candidate = position + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: usize, input: Input, call: u64, returned: Option<(u64, Output)>) -> Operation {
        Operation {
            client,
            key: "k".to_owned(),
            input,
            call,
            returned,
        }
    }

    fn some(value: &str) -> Option<String> {
        Some(value.to_owned())
    }

    fn put(value: &str) -> Input {
        Input::Put(value.to_owned())
    }

    #[test]
    fn histories_table() {
        let rows: Vec<(&str, Vec<Operation>, bool)> = vec![
            (
                "sequential put then get",
                vec![
                    op(0, put("a"), 0, Some((1, Output::Previous(None)))),
                    op(0, Input::Get, 2, Some((3, Output::Value(some("a"))))),
                ],
                true,
            ),
            (
                "a stale read after the write returned",
                vec![
                    op(0, put("a"), 0, Some((1, Output::Previous(None)))),
                    op(1, Input::Get, 2, Some((3, Output::Value(None)))),
                ],
                false,
            ),
            (
                "a read concurrent with the write may see either",
                vec![
                    op(0, put("a"), 0, Some((10, Output::Previous(None)))),
                    op(1, Input::Get, 1, Some((2, Output::Value(some("a"))))),
                    op(2, Input::Get, 3, Some((4, Output::Value(some("a"))))),
                ],
                true,
            ),
            (
                "reads going back in time",
                vec![
                    op(0, put("a"), 0, Some((10, Output::Previous(None)))),
                    op(1, Input::Get, 1, Some((2, Output::Value(some("a"))))),
                    op(2, Input::Get, 3, Some((4, Output::Value(None)))),
                ],
                false,
            ),
            (
                "an unknown write seen later",
                vec![
                    op(0, put("a"), 0, None),
                    op(1, Input::Get, 5, Some((6, Output::Value(some("a"))))),
                ],
                true,
            ),
            (
                "an unknown write never seen",
                vec![
                    op(0, put("a"), 0, None),
                    op(1, Input::Get, 5, Some((6, Output::Value(None)))),
                ],
                true,
            ),
            (
                "an unknown write seen, then unseen",
                vec![
                    op(0, put("a"), 0, None),
                    op(1, Input::Get, 5, Some((6, Output::Value(some("a"))))),
                    op(1, Input::Get, 7, Some((8, Output::Value(None)))),
                ],
                false,
            ),
            (
                "a value read before anyone wrote it",
                vec![
                    op(1, Input::Get, 0, Some((1, Output::Value(some("a"))))),
                    op(0, put("a"), 2, Some((3, Output::Previous(None)))),
                ],
                false,
            ),
            (
                "two cas from the same state, both claiming success",
                vec![
                    op(
                        0,
                        Input::Cas {
                            expected: None,
                            value: "a".into(),
                        },
                        0,
                        Some((
                            5,
                            Output::Cas {
                                ok: true,
                                current: some("a"),
                            },
                        )),
                    ),
                    op(
                        1,
                        Input::Cas {
                            expected: None,
                            value: "b".into(),
                        },
                        1,
                        Some((
                            6,
                            Output::Cas {
                                ok: true,
                                current: some("b"),
                            },
                        )),
                    ),
                ],
                false,
            ),
            (
                "concurrent puts with consistent previous values",
                vec![
                    op(0, put("a"), 0, Some((5, Output::Previous(some("b"))))),
                    op(1, put("b"), 1, Some((6, Output::Previous(None)))),
                    op(2, Input::Delete, 7, Some((8, Output::Previous(some("a"))))),
                ],
                true,
            ),
            (
                "a put that saw a value nobody had written yet",
                vec![
                    op(0, put("a"), 0, Some((1, Output::Previous(None)))),
                    op(1, put("a"), 2, Some((3, Output::Previous(some("a"))))),
                    op(2, put("b"), 4, Some((5, Output::Previous(some("b"))))),
                ],
                false,
            ),
        ];
        for (what, history, linearizable) in rows {
            assert_eq!(check(&history).is_ok(), linearizable, "{what}");
        }
    }

    #[test]
    fn keys_are_checked_apart() {
        let mut history = vec![
            op(0, put("a"), 0, Some((1, Output::Previous(None)))),
            op(1, Input::Get, 2, Some((3, Output::Value(None)))),
        ];
        history[1].key = "other".to_owned();
        assert!(check(&history).is_ok());
        history[1].key = "k".to_owned();
        assert_eq!(check(&history).unwrap_err().key, "k");
    }

    #[test]
    fn many_concurrent_operations_stay_cheap() {
        // 12 clients, 20 rounds each, fully concurrent rounds of puts and
        // reads that all agree with one order: the memo keeps it small.
        let mut history = Vec::new();
        let mut time = 0;
        let mut value: Option<String> = None;
        for round in 0..20 {
            let start = time;
            let mut outputs = Vec::new();
            for client in 0..12 {
                let input = if client % 3 == 0 {
                    Input::Put(format!("{round}-{client}"))
                } else {
                    Input::Get
                };
                let (after, output) = step(&value, &input);
                value = after;
                outputs.push((client, input, output));
            }
            time += 100;
            for (client, input, output) in outputs {
                history.push(op(
                    client,
                    input,
                    start + client as u64,
                    Some((time, output)),
                ));
            }
            time += 1;
        }
        let effort = check(&history).expect("linearizable by construction");
        assert!(effort.states_visited < 1_000_000, "{effort:?}");
    }
}
