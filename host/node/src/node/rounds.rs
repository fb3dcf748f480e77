//! Sharing one quorum round among concurrent reads. A linearizable read
//! needs a read index obtained *after* it arrived: the leader confirms its
//! leadership with a quorum, and the commit index it names then covers
//! every write acknowledged before. Many reads arriving together need not
//! each pay a round: [`Rounds::join`] makes a caller wait for the next
//! round that starts after it joined, and one round answers everyone who
//! joined before it started.
//!
//! Invariant: a caller's answer comes from a round that began after the
//! caller joined; at most one round runs at a time.

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// The rounds of one kind of work, answered with a `T`.
#[derive(Debug)]
pub(super) struct Rounds<T> {
    state: Mutex<State<T>>,
}

#[derive(Debug)]
struct State<T> {
    /// A round is running; callers who join wait for the one after it.
    running: bool,
    /// The callers the next round answers.
    next: Vec<oneshot::Sender<T>>,
}

impl<T: Clone + Send + 'static> Rounds<T> {
    pub(super) fn new() -> Self {
        Self {
            state: Mutex::new(State {
                running: false,
                next: Vec::new(),
            }),
        }
    }

    /// Joins the next round and waits for its answer. When no round runs,
    /// this caller starts the rounds with `round`, which is called once per
    /// round until nobody waits. `None` if the rounds were abandoned (the
    /// runtime shutting down).
    pub(super) async fn join<F, R>(self: &Arc<Self>, round: R) -> Option<T>
    where
        R: Fn() -> F + Send + 'static,
        F: Future<Output = T> + Send + 'static,
    {
        let (answer, answered) = oneshot::channel();
        let start = {
            let mut state = self.lock();
            state.next.push(answer);
            !std::mem::replace(&mut state.running, true)
        };
        if start {
            tokio::spawn(Arc::clone(self).run(round));
        }
        answered.await.ok()
    }

    /// Runs rounds while callers wait for one.
    async fn run<F, R>(self: Arc<Self>, round: R)
    where
        R: Fn() -> F,
        F: Future<Output = T>,
    {
        loop {
            let waiting = {
                let mut state = self.lock();
                if state.next.is_empty() {
                    state.running = false;
                    return;
                }
                std::mem::take(&mut state.next)
            };
            // Everyone in `waiting` joined before this round starts.
            let answer = round().await;
            for waiter in waiting {
                let _ = waiter.send(answer.clone());
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn callers_share_the_next_round_that_starts_after_they_joined() {
        let rounds = Arc::new(Rounds::<u64>::new());
        let started = Arc::new(AtomicU64::new(0));
        let round = {
            let started = Arc::clone(&started);
            move || {
                // Answers with its own number, after taking a while.
                let number = started.fetch_add(1, Ordering::SeqCst) + 1;
                async move {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    number
                }
            }
        };
        let join = |rounds: &Arc<Rounds<u64>>| {
            let rounds = Arc::clone(rounds);
            let round = round.clone();
            tokio::spawn(async move { rounds.join(round).await.unwrap() })
        };
        // The first caller starts round 1; ten more join while it runs.
        let first = join(&rounds);
        tokio::task::yield_now().await;
        assert_eq!(started.load(Ordering::SeqCst), 1);
        let later: Vec<_> = (0..10).map(|_| join(&rounds)).collect();
        tokio::task::yield_now().await;
        assert_eq!(first.await.unwrap(), 1);
        for caller in later {
            // They joined after round 1 began: round 2 answers them all.
            assert_eq!(caller.await.unwrap(), 2);
        }
        assert_eq!(started.load(Ordering::SeqCst), 2);
        // With nobody waiting the rounds stop; the next caller starts one.
        assert_eq!(join(&rounds).await.unwrap(), 3);
    }
}
