//! The pool queries run on. Each query runs its guest on a blocking thread
//! and holds one of the runtime's query instances; without a bound in
//! front, a flood of queries would each take a thread that waits for an
//! instance, and past the blocking pool's threads an unbounded queue would
//! grow. Here a query first takes a permit, waiting without a thread, with
//! at most `queued_max` others waiting; the permit is held until its
//! blocking work ends, even when the caller has gone.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::Shed;

/// The bounded pool of running and waiting queries. Cheap to clone.
#[derive(Debug, Clone)]
pub struct QueryPool {
    running: Arc<Semaphore>,
    queued: Arc<AtomicUsize>,
    running_max: usize,
    queued_max: usize,
}

/// The right to run one query; hold it for as long as the query runs.
#[derive(Debug)]
pub struct QueryPermit {
    _slot: OwnedSemaphorePermit,
}

/// Counts a waiter for as long as it waits.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl QueryPool {
    /// A pool running at most `running_max` queries (at least one), with at
    /// most `queued_max` waiting.
    pub fn new(running_max: usize, queued_max: usize) -> Self {
        let running_max = running_max.max(1);
        Self {
            running: Arc::new(Semaphore::new(running_max)),
            queued: Arc::new(AtomicUsize::new(0)),
            running_max,
            queued_max,
        }
    }

    /// How many queries run now.
    pub fn running(&self) -> usize {
        self.running_max - self.running.available_permits()
    }

    /// How many wait for a slot now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// A slot for one query: at once if one is free, else after waiting
    /// up to `wait_max` behind at most `queued_max` others.
    pub async fn admit(&self, wait_max: Duration) -> Result<QueryPermit, Shed> {
        if let Ok(permit) = self.running.clone().try_acquire_owned() {
            return Ok(QueryPermit { _slot: permit });
        }
        let before = self.queued.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(&self.queued);
        if before >= self.queued_max {
            return Err(self.shed(format!(
                "{} queries run and {} wait on this node",
                self.running_max, self.queued_max
            )));
        }
        match tokio::time::timeout(wait_max, self.running.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(QueryPermit { _slot: permit }),
            // The semaphore is never closed; a closed one sheds like a full one.
            Ok(Err(_)) | Err(_) => Err(self.shed(format!(
                "no query thread came free within {} ms ({} run at once)",
                wait_max.as_millis(),
                self.running_max
            ))),
        }
    }

    fn shed(&self, detail: String) -> Shed {
        Shed {
            limit: "limits.query_threads".into(),
            detail,
            // A query takes tens of milliseconds; by then some have ended.
            retry_after_ms: 50,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn queries_wait_in_a_bounded_queue_then_are_shed() {
        let pool = QueryPool::new(2, 1);
        let first = pool.admit(Duration::ZERO).await.unwrap();
        let _second = pool.admit(Duration::ZERO).await.unwrap();
        assert_eq!(pool.running(), 2);

        // A third waits; a fourth finds the queue full and is shed at once.
        let waiter = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.admit(Duration::from_secs(5)).await })
        };
        tokio::task::yield_now().await;
        assert_eq!(pool.queued(), 1);
        let shed = pool.admit(Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(shed.limit, "limits.query_threads");
        assert!(shed.detail.contains("2 queries run and 1 wait"), "{shed}");

        // A slot comes free: the waiter gets it.
        drop(first);
        let third = waiter.await.unwrap().unwrap();
        assert_eq!((pool.running(), pool.queued()), (2, 0));

        // Nobody frees a slot: a waiter gives up at its deadline.
        let late = pool.admit(Duration::from_millis(100)).await.unwrap_err();
        assert!(late.detail.contains("within 100 ms"), "{late}");
        assert_eq!(pool.queued(), 0);
        drop(third);
    }
}
