//! Client sessions for exactly-once invokes: a pool of (client id, next
//! sequence) pairs, one lent to each invoke in flight. A session is opened
//! on the server (through the log) before its first command.
//!
//! The server remembers, per client id, only the latest sequence applied and
//! its result (`storage::apply`): a duplicate of that sequence gets the
//! stored result, an older one is refused as expired. Two invokes in flight
//! on one client id would therefore race: if sequence 8 is applied before 7,
//! 7 is refused although it never ran. So a session is never shared between
//! concurrent invokes: each invoke borrows a session of its own from the
//! pool for its whole life (all its retries), and gives it back with the
//! sequence advanced. Sequences within one session are then issued strictly
//! one after another, always answered before the next is sent. The pool
//! grows to the peak number of concurrent invokes (bounded by
//! `in_flight_max`, further invokes wait) and its sessions are reused, most
//! recently used first, so a client with little concurrency keeps few
//! sessions in the server's table.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// One session: the client id the server keys it by (until it is open, the
/// name asked for) and the sequence the next new command gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Session {
    pub client_id: String,
    pub next_sequence: u64,
    /// Whether the server confirmed the session open (`OpenSession`).
    pub open: bool,
}

/// The sessions of one [`crate::Client`] and its clones.
#[derive(Debug)]
pub(crate) struct SessionPool {
    /// Random (128 bits, hex) and unique to this pool; each session's client
    /// id is this prefix and a counter, so ids never collide across
    /// processes and are recognisable as one client's in server logs.
    client_id_prefix: String,
    /// Sessions not lent out, the most recently returned last.
    idle: Mutex<Vec<Session>>,
    /// How many sessions this pool has made, for the next id.
    sessions_created: AtomicU64,
    /// Bounds the invokes in flight, and so the number of sessions.
    in_flight: Arc<Semaphore>,
}

impl SessionPool {
    pub fn new(client_id_prefix: String, in_flight_max: usize) -> SessionPool {
        SessionPool {
            client_id_prefix,
            idle: Mutex::new(Vec::new()),
            sessions_created: AtomicU64::new(0),
            in_flight: Arc::new(Semaphore::new(in_flight_max)),
        }
    }

    pub fn client_id_prefix(&self) -> &str {
        &self.client_id_prefix
    }

    /// Lends a session for one invoke, waiting while `in_flight_max` invokes
    /// are in flight.
    pub async fn lease(self: &Arc<Self>) -> SessionLease {
        let permit = Arc::clone(&self.in_flight)
            .acquire_owned()
            .await
            .expect("the pool never closes its semaphore");
        let session = self.lock_idle().pop().unwrap_or_else(|| self.new_session());
        SessionLease {
            pool: Arc::clone(self),
            session: Some(session),
            sequence_sent: false,
            _permit: permit,
        }
    }

    fn new_session(&self) -> Session {
        let number = self.sessions_created.fetch_add(1, Ordering::Relaxed);
        Session {
            client_id: format!("{}-{number}", self.client_id_prefix),
            next_sequence: 1,
            open: false,
        }
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<Session>> {
        // The lock guards a plain Vec with no invariant a panic could break.
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    #[cfg(test)]
    fn idle_sessions(&self) -> Vec<Session> {
        self.lock_idle().clone()
    }
}

/// A session lent to one invoke. Dropping it, when the invoke ends or is
/// cancelled, returns the session to the pool; if the current sequence may
/// have reached the server, the session moves on to the next sequence so it
/// is never reused for a different command.
#[derive(Debug)]
pub(crate) struct SessionLease {
    pool: Arc<SessionPool>,
    /// Always `Some` until dropped.
    session: Option<Session>,
    /// Whether the current sequence may have reached the server.
    sequence_sent: bool,
    _permit: OwnedSemaphorePermit,
}

impl SessionLease {
    fn session(&self) -> &Session {
        self.session
            .as_ref()
            .expect("a lease holds its session until dropped")
    }

    pub fn client_id(&self) -> &str {
        &self.session().client_id
    }

    pub fn sequence(&self) -> u64 {
        self.session().next_sequence
    }

    /// Whether the server confirmed this session open.
    pub fn is_open(&self) -> bool {
        self.session().open
    }

    /// Records that the server opened the session under `name`.
    pub fn mark_open(&mut self, name: String) {
        if let Some(session) = &mut self.session {
            session.client_id = name;
            session.open = true;
        }
    }

    /// Records that the current sequence is about to be sent: from now on
    /// it belongs to this command.
    pub fn mark_sent(&mut self) {
        self.sequence_sent = true;
    }

    /// Records that, after all, no attempt reached the server (every one
    /// failed to connect): the sequence stays free for the next command.
    pub fn unmark_sent(&mut self) {
        self.sequence_sent = false;
    }

    /// Swaps the session for a fresh one (new client id, sequence 1), for
    /// when the server forgot this one. The old session is dropped for good.
    pub fn renew(&mut self) {
        self.session = Some(self.pool.new_session());
        self.sequence_sent = false;
    }
}

impl Drop for SessionLease {
    fn drop(&mut self) {
        if let Some(mut session) = self.session.take() {
            if self.sequence_sent {
                session.next_sequence += 1;
            }
            self.pool.lock_idle().push(session);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(in_flight_max: usize) -> Arc<SessionPool> {
        Arc::new(SessionPool::new("abc".to_owned(), in_flight_max))
    }

    #[tokio::test]
    async fn sequences_advance_by_one_per_sent_command() {
        let pool = pool(4);
        for expected in 1..=3 {
            let mut lease = pool.lease().await;
            assert_eq!(lease.client_id(), "abc-0");
            assert_eq!(lease.sequence(), expected);
            lease.mark_sent();
        }
        assert_eq!(
            pool.idle_sessions(),
            vec![Session {
                client_id: "abc-0".to_owned(),
                next_sequence: 4,
                open: false,
            }]
        );
    }

    #[tokio::test]
    async fn an_unsent_sequence_is_reused() {
        let pool = pool(4);
        drop(pool.lease().await);
        let lease = pool.lease().await;
        assert_eq!((lease.client_id(), lease.sequence()), ("abc-0", 1));
    }

    #[tokio::test]
    async fn concurrent_invokes_never_share_a_session() {
        let pool = pool(4);
        let mut first = pool.lease().await;
        let mut second = pool.lease().await;
        assert_ne!(first.client_id(), second.client_id());
        assert_eq!((first.sequence(), second.sequence()), (1, 1));
        first.mark_sent();
        second.mark_sent();
        drop(second);
        drop(first);
        // Most recently returned first: `abc-0`, at sequence 2.
        let third = pool.lease().await;
        assert_eq!((third.client_id(), third.sequence()), ("abc-0", 2));
    }

    #[tokio::test]
    async fn a_cancelled_invoke_still_retires_its_sequence() {
        let pool = pool(1);
        let task = {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move {
                let mut lease = pool.lease().await;
                lease.mark_sent();
                std::future::pending::<()>().await;
            })
        };
        tokio::task::yield_now().await;
        task.abort();
        let _ = task.await;
        let lease = pool.lease().await;
        assert_eq!((lease.client_id(), lease.sequence()), ("abc-0", 2));
    }

    #[tokio::test]
    async fn in_flight_invokes_are_bounded() {
        let pool = pool(1);
        let held = pool.lease().await;
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(20), pool.lease());
        assert!(waiting.await.is_err(), "a second lease must wait");
        drop(held);
        let lease = pool.lease().await;
        assert_eq!(lease.client_id(), "abc-0");
    }

    #[tokio::test]
    async fn renewing_starts_a_new_session_at_one() {
        let pool = pool(2);
        let mut lease = pool.lease().await;
        lease.mark_sent();
        lease.renew();
        assert_eq!((lease.client_id(), lease.sequence()), ("abc-1", 1));
        lease.mark_sent();
        drop(lease);
        assert_eq!(
            pool.idle_sessions(),
            vec![Session {
                client_id: "abc-1".to_owned(),
                next_sequence: 2,
                open: false,
            }]
        );
    }
}
