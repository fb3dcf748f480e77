//! Model-checked protocols: the client-session rules wasmraft adds on top
//! of Raft, explored exhaustively by stateright over every interleaving of a
//! network that loses and reorders messages, of clients that retry, and of
//! a session table that forgets sessions (it is bounded). Each request is
//! delivered at most once, as gRPC over TCP does: no node retransmits a
//! client's command on its own (a forward that fails is the client's to
//! retry), and the retries in the model are the client's.
//!
//! The rules checked are those of `storage/sessions.rs` and the client's
//! retry loop (`client/mod.rs`): a session is opened through the log before
//! its first command, and the cluster names it (every open a new name); an
//! invoke naming a session that is not open is refused as expired; a retry
//! carries the same (session, sequence) and gets the first result; a client
//! whose first attempt was refused as expired opens a new session, and one
//! whose earlier attempts may have reached the cluster reports the outcome
//! unknown. The property: no command is ever applied twice, and a command
//! the client saw succeed was applied exactly once.
//!
//! The checker found that a client-chosen session name is not enough: a
//! late duplicate of an open, applied after the session was used and
//! forgotten, brought it back at sequence 0, and a retried first command
//! was applied again. `client_named_sessions_apply_a_retried_command_twice`
//! keeps that counterexample.

use std::collections::BTreeMap;

use stateright::{Checker, Model, Property};

/// The bounds of the exploration.
#[derive(Clone, Debug)]
struct Sessions {
    /// Commands the client issues, one after the other.
    commands: u8,
    /// Attempts per command in one session (the first and one retry).
    attempts_max: u8,
    /// Sessions the table may forget over a run.
    evictions_max: u8,
    /// Messages the network may deliver twice over a run (0: a transport
    /// that does not, as ours; above 0 the model shows why it matters: one
    /// request applied and then, as a copy, refused, looks to the client
    /// like a refusal of everything it sent).
    duplicates_max: u8,
    /// Messages in flight at once.
    in_flight_max: usize,
    /// The rule of state format 1: an unknown session's sequence 1 opens it.
    implicit_open: bool,
    /// Sessions named by the client (the open keeps the name it asked for)
    /// rather than by the cluster.
    client_named: bool,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
enum Message {
    /// `request` tells the client's opens apart (its name for the session).
    Open {
        request: u8,
    },
    Opened {
        request: u8,
        session: u8,
    },
    Invoke {
        session: u8,
        sequence: u8,
        command: u8,
    },
    Applied {
        session: u8,
        command: u8,
    },
    Expired {
        session: u8,
        command: u8,
    },
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum Outcome {
    Pending,
    Done,
    Unknown,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Client {
    /// The open request of the current session.
    request: u8,
    /// The session's name once open.
    session: u8,
    open: bool,
    /// Open requests sent for the current session (a retry is another).
    opens: u8,
    command: u8,
    sequence: u8,
    attempts: u8,
    renewed: bool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct State {
    client: Client,
    /// The server's open sessions: session → last sequence applied.
    sessions: BTreeMap<u8, u8>,
    /// The next name the cluster gives (its log position).
    next_name: u8,
    /// In flight, kept sorted so that equal multisets are equal states.
    network: Vec<Message>,
    /// How many times each command was applied.
    applied: Vec<u8>,
    outcomes: Vec<Outcome>,
    evictions: u8,
    duplicates: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Action {
    Open,
    Send,
    Deliver { index: usize, duplicate: bool },
    Drop { index: usize },
    Evict { session: u8 },
}

impl State {
    fn send(&mut self, message: Message) {
        self.network.push(message);
        self.network.sort();
    }

    /// The client moves on to its next command.
    fn next_command(&mut self, outcome: Outcome) {
        let client = &mut self.client;
        self.outcomes[client.command as usize] = outcome;
        client.command += 1;
        client.sequence += 1;
        client.attempts = 0;
        client.renewed = false;
    }
}

impl Sessions {
    /// The server handles `message` (one apply of the Raft log).
    fn serve(&self, state: &mut State, message: Message) {
        match message {
            Message::Open { request } => {
                let session = if self.client_named {
                    request
                } else {
                    state.next_name += 1;
                    100 + state.next_name
                };
                state.sessions.entry(session).or_insert(0);
                state.send(Message::Opened { request, session });
            }
            Message::Invoke {
                session,
                sequence,
                command,
            } => {
                let last = match state.sessions.get(&session) {
                    Some(last) => Some(*last),
                    None if self.implicit_open && sequence == 1 => Some(0),
                    None => None,
                };
                let reply = match last {
                    None => Message::Expired { session, command },
                    Some(last) if sequence == last => Message::Applied { session, command },
                    Some(last) if sequence < last => Message::Expired { session, command },
                    Some(_) => {
                        state.applied[command as usize] += 1;
                        state.sessions.insert(session, sequence);
                        Message::Applied { session, command }
                    }
                };
                state.send(reply);
            }
            Message::Opened { .. } | Message::Applied { .. } | Message::Expired { .. } => {
                self.receive(state, message)
            }
        }
    }

    /// The client handles an answer; stale answers (another session or
    /// command) are ignored, as the real client's lease discards them.
    fn receive(&self, state: &mut State, message: Message) {
        let current = state.client.session;
        match message {
            Message::Opened { request, session }
                if request == state.client.request && !state.client.open =>
            {
                state.client.session = session;
                state.client.open = true;
            }
            Message::Applied { session, command }
                if session == current && command == state.client.command =>
            {
                state.next_command(Outcome::Done);
            }
            Message::Expired { session, command }
                if session == current && command == state.client.command =>
            {
                if state.client.attempts == 1 && !state.client.renewed {
                    // Nothing was applied: this attempt, the only one, was
                    // refused. A new session, sequence 1.
                    let client = &mut state.client;
                    client.request += 1;
                    client.open = false;
                    client.opens = 0;
                    client.sequence = 1;
                    client.attempts = 0;
                    client.renewed = true;
                } else {
                    state.next_command(Outcome::Unknown);
                }
            }
            _ => {}
        }
    }
}

impl Model for Sessions {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        vec![State {
            client: Client {
                request: 0,
                session: 0,
                open: false,
                opens: 0,
                command: 0,
                sequence: 1,
                attempts: 0,
                renewed: false,
            },
            sessions: BTreeMap::new(),
            next_name: 0,
            network: Vec::new(),
            applied: vec![0; self.commands as usize],
            outcomes: vec![Outcome::Pending; self.commands as usize],
            evictions: 0,
            duplicates: 0,
        }]
    }

    fn actions(&self, state: &State, actions: &mut Vec<Action>) {
        let client = &state.client;
        let working = client.command < self.commands;
        let room = state.network.len() < self.in_flight_max;
        if working && !client.open && client.opens < self.attempts_max && room {
            actions.push(Action::Open);
        }
        if working && client.open && client.attempts < self.attempts_max && room {
            actions.push(Action::Send);
        }
        for index in 0..state.network.len() {
            actions.push(Action::Deliver {
                index,
                duplicate: false,
            });
            if state.duplicates < self.duplicates_max {
                actions.push(Action::Deliver {
                    index,
                    duplicate: true,
                });
            }
            actions.push(Action::Drop { index });
        }
        if state.evictions < self.evictions_max {
            for session in state.sessions.keys() {
                actions.push(Action::Evict { session: *session });
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut state = last.clone();
        match action {
            Action::Open => {
                state.client.opens += 1;
                let request = state.client.request;
                state.send(Message::Open { request });
            }
            Action::Send => {
                let client = &mut state.client;
                client.attempts += 1;
                let message = Message::Invoke {
                    session: client.session,
                    sequence: client.sequence,
                    command: client.command,
                };
                state.send(message);
            }
            Action::Deliver { index, duplicate } => {
                let message = if duplicate {
                    state.duplicates += 1;
                    state.network[index]
                } else {
                    state.network.remove(index)
                };
                self.serve(&mut state, message);
            }
            Action::Drop { index } => {
                state.network.remove(index);
            }
            Action::Evict { session } => {
                state.evictions += 1;
                state.sessions.remove(&session);
            }
        }
        Some(state)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always("no command is applied twice", |_, state: &State| {
                state.applied.iter().all(|count| *count <= 1)
            }),
            Property::always(
                "a command the client saw succeed was applied once",
                |_, state: &State| {
                    state
                        .outcomes
                        .iter()
                        .zip(&state.applied)
                        .all(|(outcome, applied)| *outcome != Outcome::Done || *applied == 1)
                },
            ),
            Property::sometimes("every command succeeds", |_, state: &State| {
                state
                    .outcomes
                    .iter()
                    .all(|outcome| *outcome == Outcome::Done)
            }),
        ]
    }
}

fn model(implicit_open: bool, client_named: bool) -> Sessions {
    Sessions {
        commands: 2,
        attempts_max: 2,
        evictions_max: 1,
        duplicates_max: 0,
        in_flight_max: 3,
        implicit_open,
        client_named,
    }
}

#[test]
fn sessions_opened_through_the_log_never_apply_a_command_twice() {
    let checker = model(false, false).checker().spawn_bfs().join();
    checker.assert_properties();
    eprintln!("{} states explored", checker.unique_state_count());
    assert!(
        checker.unique_state_count() > 1_000,
        "the model explored too little"
    );
}

/// The rule the format-1 states keep for their old commands: a forgotten
/// session's duplicate first command opens it again and is applied twice.
/// The checker finds it, which is why new clusters never use it.
#[test]
fn the_format_1_rule_applies_a_retried_first_command_twice() {
    let checker = model(true, false).checker().spawn_bfs().join();
    assert!(
        checker.discovery("no command is applied twice").is_some(),
        "the checker should find the double apply"
    );
}

/// With names the client chooses, a late duplicate of the open reopens a
/// forgotten session at sequence 0 and its retried first command applies
/// again: why the cluster names sessions.
#[test]
fn client_named_sessions_apply_a_retried_command_twice() {
    let checker = model(false, true).checker().spawn_bfs().join();
    assert!(
        checker.discovery("no command is applied twice").is_some(),
        "the checker should find the double apply"
    );
}
