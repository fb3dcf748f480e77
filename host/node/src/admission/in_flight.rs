//! How many calls a node serves at once: per subject, and in all, with the
//! request bytes they hold and the deploy uploads among them. A call holds
//! an [`InFlightPermit`] from its admission until it answers. Past the
//! node's `total` running calls a call waits, first come first served, in a
//! queue of at most `queued` callers and for at most `queue_wait_ms`; past
//! the queue, or past a subject's `per_subject` open calls (running or
//! waiting), it is shed at once. So a subject with thousands of calls open
//! cannot take every slot another subject needs, a burst above the node's
//! running cap is smoothed rather than refused, and the bytes a node
//! buffers for its callers stay bounded.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::Shed;

/// `[limits.in_flight]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InFlightSettings {
    /// Calls one subject may have open on this node at once, running or
    /// waiting for a slot.
    pub per_subject: u32,
    /// Calls the node runs at once, all subjects together.
    pub total: u32,
    /// Calls that may wait for one of the `total` slots at once; 0 sheds
    /// every call past `total` at once.
    pub queued: u32,
    /// The longest a call waits for a slot (less when its deadline is
    /// nearer).
    pub queue_wait_ms: u64,
    /// Request bytes the open calls may hold at once: invoke and query
    /// inputs, and the wasm of deploy uploads as it arrives.
    pub bytes: u64,
    /// Deploy uploads open at once.
    pub deploys: u32,
}

impl Default for InFlightSettings {
    /// Above what one application's connection pool opens (a load test of
    /// 256 clients runs as one subject), below what exhausts a node.
    fn default() -> Self {
        Self {
            per_subject: 1024,
            total: 8192,
            queued: 1024,
            queue_wait_ms: 100,
            bytes: 512 << 20,
            deploys: 8,
        }
    }
}

/// The longest `queue_wait_ms` may be: a queue is for smoothing bursts, a
/// caller that would wait longer is better told to come back.
const QUEUE_WAIT_MS_MAX: u64 = 60_000;

impl InFlightSettings {
    /// Why these caps cannot work, or `Ok`. The bytes must hold the largest
    /// input (`payload_bytes_max`) and the largest module the cluster
    /// settings allow, so that every call that fits its own bounds can be
    /// served alone.
    pub fn validate(&self, payload_bytes_max: u64) -> Result<(), String> {
        if self.per_subject == 0 || self.total == 0 || self.deploys == 0 {
            return Err(
                "`limits.in_flight.per_subject`, `total` and `deploys` must be at least 1"
                    .to_owned(),
            );
        }
        if self.queue_wait_ms == 0 || self.queue_wait_ms > QUEUE_WAIT_MS_MAX {
            return Err(format!(
                "`limits.in_flight.queue_wait_ms` ({}) must be from 1 to {QUEUE_WAIT_MS_MAX}",
                self.queue_wait_ms
            ));
        }
        let largest = payload_bytes_max.max(crate::command::settings::MODULE_BYTES_MAX_RANGE.1);
        if self.bytes < largest {
            return Err(format!(
                "`limits.in_flight.bytes` ({}) is below the largest request a node may have to \
                 hold ({largest} bytes: the largest module the cluster settings allow, or \
                 `limits.payload_bytes_max`)",
                self.bytes
            ));
        }
        if u64::from(self.per_subject) > u64::from(self.total) + u64::from(self.queued) {
            return Err(format!(
                "`limits.in_flight.per_subject` ({}) is above `total` and `queued` together ({} + {})",
                self.per_subject, self.total, self.queued
            ));
        }
        Ok(())
    }
}

/// One caller waiting for a slot.
#[derive(Debug)]
struct Waiter {
    id: u64,
    /// Told when the slot is its own.
    granted: oneshot::Sender<()>,
}

#[derive(Debug, Default)]
struct Counts {
    /// The caps in force (replaced by [`InFlight::reload`]).
    settings: InFlightSettings,
    /// Calls holding a slot, waiters granted one included.
    running: u32,
    /// Callers waiting for a slot, first come first.
    waiters: VecDeque<Waiter>,
    next_waiter: u64,
    bytes: u64,
    deploys: u32,
    /// Only subjects with a call open, running or waiting: an entry goes
    /// with its last call.
    by_subject: HashMap<String, u32>,
}

/// The calls open on this node. Cheap to clone.
#[derive(Debug, Clone)]
pub struct InFlight {
    counts: Arc<Mutex<Counts>>,
}

/// One open call; dropping it closes the call (or takes it out of the
/// queue, when it still waits).
#[derive(Debug)]
#[must_use = "the call is open for as long as its permit lives"]
pub struct InFlightPermit {
    counts: Arc<Mutex<Counts>>,
    subject: String,
    /// The request bytes this call holds.
    bytes: u64,
    deploy: bool,
    /// The queue place this call took, while it may still hold one: a
    /// waiter that is no longer in the queue was granted a slot.
    waiter: Option<u64>,
}

/// What kind of call a permit opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// An invoke or a query, holding its input.
    Call,
    /// A deploy upload, holding its wasm as it arrives.
    Deploy,
}

/// How long a shed caller should wait: calls end within milliseconds to
/// seconds; a short wait with the client's jitter spreads the retries.
const RETRY_AFTER_MS: u64 = 100;

impl InFlight {
    pub fn new(settings: &InFlightSettings) -> Self {
        Self {
            counts: Arc::new(Mutex::new(Counts {
                settings: settings.clone(),
                ..Counts::default()
            })),
        }
    }

    /// Puts `settings` in force for the calls admitted from now on; calls
    /// open already keep their permits, and waiters get the slots a raised
    /// `total` adds.
    pub fn reload(&self, settings: &InFlightSettings) {
        let mut counts = self.lock();
        counts.settings = settings.clone();
        counts.grant();
    }

    /// Opens a call of `subject` holding `bytes`: at once when a slot is
    /// free, else after waiting for one, at most `deadline` (and the
    /// queue's own bound); or sheds it past a cap.
    pub async fn admit(
        &self,
        subject: &str,
        kind: CallKind,
        bytes: u64,
        deadline: Option<Duration>,
    ) -> Result<InFlightPermit, Shed> {
        let (mut permit, granted, wait, total) = {
            let mut counts = self.lock();
            let open = counts.by_subject.get(subject).copied().unwrap_or(0);
            if open >= counts.settings.per_subject {
                return Err(Shed {
                    limit: "limits.in_flight.per_subject".into(),
                    detail: format!("`{subject}` has {open} calls open on this node"),
                    retry_after_ms: RETRY_AFTER_MS,
                });
            }
            if kind == CallKind::Deploy && counts.deploys >= counts.settings.deploys {
                return Err(Shed {
                    limit: "limits.in_flight.deploys".into(),
                    detail: format!("{} deploy uploads are open on this node", counts.deploys),
                    retry_after_ms: DEPLOY_RETRY_AFTER_MS,
                });
            }
            let free = counts.running < counts.settings.total && counts.waiters.is_empty();
            if !free && counts.waiters.len() >= counts.settings.queued as usize {
                // With no queue, the running cap is the limit that refused.
                let limit = if counts.settings.queued == 0 {
                    "limits.in_flight.total"
                } else {
                    "limits.in_flight.queued"
                };
                return Err(Shed {
                    limit: limit.into(),
                    detail: format!(
                        "{} calls run and {} wait on this node",
                        counts.running,
                        counts.waiters.len()
                    ),
                    retry_after_ms: RETRY_AFTER_MS,
                });
            }
            counts.take_bytes(bytes)?;
            counts.deploys += u32::from(kind == CallKind::Deploy);
            *counts.by_subject.entry(subject.to_owned()).or_insert(0) += 1;
            let mut permit = InFlightPermit {
                counts: self.counts.clone(),
                subject: subject.to_owned(),
                bytes,
                deploy: kind == CallKind::Deploy,
                waiter: None,
            };
            if free {
                counts.running += 1;
                return Ok(permit);
            }
            let id = counts.next_waiter;
            counts.next_waiter += 1;
            let (sender, granted) = oneshot::channel();
            counts.waiters.push_back(Waiter {
                id,
                granted: sender,
            });
            permit.waiter = Some(id);
            let wait = Duration::from_millis(counts.settings.queue_wait_ms);
            let wait = deadline.map_or(wait, |deadline| deadline.min(wait));
            (permit, granted, wait, counts.settings.total)
        };
        // Dropped while it waits (its caller went away, or the wait ran
        // out), the permit takes its place out of the queue, or gives back
        // the slot it was granted meanwhile.
        match tokio::time::timeout(wait, granted).await {
            Ok(Ok(())) => {
                permit.waiter = None;
                Ok(permit)
            }
            // The sender goes only with its grant or with the permit.
            Ok(Err(_)) | Err(_) => Err(Shed {
                limit: "limits.in_flight.total".into(),
                detail: format!(
                    "no call slot of the node's {total} came free within {} ms",
                    wait.as_millis()
                ),
                retry_after_ms: RETRY_AFTER_MS,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        lock(&self.counts)
    }

    /// Request bytes the open calls hold now.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// Calls open now (running or waiting), all subjects together.
    pub fn open(&self) -> u32 {
        let counts = self.lock();
        counts.running + u32::try_from(counts.waiters.len()).unwrap_or(u32::MAX)
    }

    /// Calls waiting for a slot now.
    pub fn queued(&self) -> u32 {
        u32::try_from(self.lock().waiters.len()).unwrap_or(u32::MAX)
    }
}

fn lock(counts: &Mutex<Counts>) -> std::sync::MutexGuard<'_, Counts> {
    counts
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How long a deploy shed for room should wait: uploads take seconds.
const DEPLOY_RETRY_AFTER_MS: u64 = 1000;

impl Counts {
    fn take_bytes(&mut self, bytes: u64) -> Result<(), Shed> {
        let limit = self.settings.bytes;
        if bytes > limit {
            // Validation keeps the cap above every request that fits its
            // own bounds; waiting would not help this one.
            return Err(Shed {
                limit: "limits.in_flight.bytes".into(),
                detail: format!(
                    "one request of {bytes} bytes is more than this node holds for all calls at once ({limit})"
                ),
                retry_after_ms: DEPLOY_RETRY_AFTER_MS,
            });
        }
        if self.bytes.saturating_add(bytes) > limit {
            return Err(Shed {
                limit: "limits.in_flight.bytes".into(),
                detail: format!(
                    "the open calls hold {} request bytes of the node's {limit}",
                    self.bytes
                ),
                retry_after_ms: RETRY_AFTER_MS,
            });
        }
        self.bytes += bytes;
        Ok(())
    }

    /// Gives the free slots to the first waiters. A granted waiter holds
    /// its slot from here: if it went away meanwhile, its permit's drop
    /// gives the slot back.
    fn grant(&mut self) {
        while self.running < self.settings.total {
            let Some(waiter) = self.waiters.pop_front() else {
                break;
            };
            self.running += 1;
            let _ = waiter.granted.send(());
        }
    }
}

impl InFlightPermit {
    /// Counts `more` request bytes against the node's cap for this call (a
    /// deploy's next chunk), or sheds the call.
    pub fn hold(&mut self, more: u64) -> Result<(), Shed> {
        lock(&self.counts).take_bytes(more)?;
        self.bytes += more;
        Ok(())
    }
}

impl Drop for InFlightPermit {
    fn drop(&mut self) {
        let mut counts = lock(&self.counts);
        let queued = self
            .waiter
            .and_then(|id| counts.waiters.iter().position(|waiter| waiter.id == id));
        match queued {
            Some(place) => {
                counts.waiters.remove(place);
            }
            None => {
                counts.running = counts.running.saturating_sub(1);
                counts.grant();
            }
        }
        counts.bytes = counts.bytes.saturating_sub(self.bytes);
        if self.deploy {
            counts.deploys = counts.deploys.saturating_sub(1);
        }
        if let Some(open) = counts.by_subject.get_mut(&self.subject) {
            *open -= 1;
            if *open == 0 {
                counts.by_subject.remove(&self.subject);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Option<Duration> = Some(Duration::ZERO);

    impl InFlight {
        /// A call admitted without waiting, as the tests open them.
        async fn now(&self, subject: &str) -> Result<InFlightPermit, Shed> {
            self.admit(subject, CallKind::Call, 0, NOW).await
        }
    }

    fn caps(per_subject: u32, total: u32, queued: u32) -> InFlightSettings {
        InFlightSettings {
            per_subject,
            total,
            queued,
            ..InFlightSettings::default()
        }
    }

    #[tokio::test]
    async fn caps_per_subject_and_in_all_and_forgets_closed_subjects() {
        let in_flight = InFlight::new(&caps(2, 3, 0));
        let first = in_flight.now("a").await.unwrap();
        let _second = in_flight.now("a").await.unwrap();
        let shed = in_flight.now("a").await.unwrap_err();
        assert_eq!(shed.limit, "limits.in_flight.per_subject");
        assert_eq!(shed.detail, "`a` has 2 calls open on this node");
        let _third = in_flight.now("b").await.unwrap();
        let shed = in_flight.now("c").await.unwrap_err();
        assert_eq!(shed.limit, "limits.in_flight.total");
        assert_eq!(shed.detail, "3 calls run and 0 wait on this node");
        drop(first);
        let again = in_flight.now("a").await.unwrap();
        assert_eq!(in_flight.open(), 3);
        drop(again);
        drop(_second);
        let counts = in_flight.counts.lock().unwrap();
        assert_eq!(counts.by_subject.keys().collect::<Vec<_>>(), ["b"]);
    }

    /// Past `total`, callers wait first come first served, a subject's
    /// waiting calls count against its own cap, a full queue sheds at
    /// once, and a wait runs out at the queue's bound or the caller's
    /// deadline, whichever is nearer.
    #[tokio::test(start_paused = true)]
    async fn past_the_total_callers_wait_in_order_in_a_bounded_queue() {
        let in_flight = InFlight::new(&InFlightSettings {
            queue_wait_ms: 1000,
            ..caps(2, 1, 2)
        });
        let running = in_flight.now("a").await.unwrap();
        let wait = |subject: &'static str| {
            let in_flight = in_flight.clone();
            tokio::spawn(async move {
                in_flight
                    .admit(subject, CallKind::Call, 0, Some(Duration::from_secs(5)))
                    .await
            })
        };
        let first = wait("b");
        tokio::task::yield_now().await;
        let second = wait("a");
        tokio::task::yield_now().await;
        assert_eq!((in_flight.open(), in_flight.queued()), (3, 2));
        // `a` has one running and one waiting: its cap, whatever the queue.
        assert_eq!(
            in_flight.now("a").await.unwrap_err().limit,
            "limits.in_flight.per_subject"
        );
        let shed = in_flight.now("c").await.unwrap_err();
        assert_eq!(shed.limit, "limits.in_flight.queued");
        assert_eq!(shed.detail, "1 calls run and 2 wait on this node");

        // The slot goes to the first waiter, then to the second.
        drop(running);
        let first = first.await.unwrap().unwrap();
        assert_eq!((in_flight.open(), in_flight.queued()), (2, 1));
        drop(first);
        let second = second.await.unwrap().unwrap();
        assert_eq!((in_flight.open(), in_flight.queued()), (1, 0));

        // Nobody frees the slot: a wait ends at the queue's bound, or at
        // the caller's nearer deadline, and leaves no trace.
        let late = in_flight.now("c").await;
        assert_eq!(late.unwrap_err().limit, "limits.in_flight.total");
        let late = in_flight
            .admit("c", CallKind::Call, 0, Some(Duration::from_secs(60)))
            .await
            .unwrap_err();
        assert_eq!(late.limit, "limits.in_flight.total");
        assert_eq!(
            late.detail,
            "no call slot of the node's 1 came free within 1000 ms"
        );
        assert_eq!((in_flight.open(), in_flight.queued()), (1, 0));
        drop(second);
        assert_eq!(in_flight.open(), 0);
        assert!(in_flight.counts.lock().unwrap().by_subject.is_empty());
    }

    /// A waiter whose caller goes away leaves the queue; one granted a slot
    /// it never took gives it back to the next waiter.
    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_goes_away_gives_back_its_place_or_its_slot() {
        let in_flight = InFlight::new(&caps(4, 1, 4));
        let running = in_flight.now("a").await.unwrap();
        let gone = {
            let in_flight = in_flight.clone();
            tokio::spawn(async move { in_flight.admit("b", CallKind::Call, 7, None).await })
        };
        tokio::task::yield_now().await;
        assert_eq!((in_flight.queued(), in_flight.bytes()), (1, 7));
        gone.abort();
        let _ = gone.await;
        assert_eq!(
            (in_flight.open(), in_flight.queued(), in_flight.bytes()),
            (1, 0, 0)
        );

        // Granted, but dropped before it ran: the slot passes on.
        let mut granted = Box::pin(in_flight.admit("b", CallKind::Call, 0, None));
        assert!(futures::poll!(granted.as_mut()).is_pending());
        let next = {
            let in_flight = in_flight.clone();
            tokio::spawn(async move { in_flight.admit("c", CallKind::Call, 0, None).await })
        };
        tokio::task::yield_now().await;
        drop(running);
        assert_eq!((in_flight.open(), in_flight.queued()), (2, 1));
        drop(granted);
        let next = next.await.unwrap().unwrap();
        assert_eq!((in_flight.open(), in_flight.queued()), (1, 0));
        drop(next);
        assert_eq!(in_flight.open(), 0);
    }

    #[tokio::test]
    async fn a_reload_applies_to_the_next_admissions() {
        let in_flight = InFlight::new(&caps(2, 4, 0));
        let _first = in_flight.now("a").await.unwrap();
        let _second = in_flight.now("a").await.unwrap();
        assert!(in_flight.now("a").await.is_err());
        in_flight.reload(&caps(3, 4, 0));
        let _third = in_flight.now("a").await.unwrap();
        // Lowered under what is open: the open calls stay, no new one.
        in_flight.reload(&caps(1, 4, 0));
        assert_eq!(in_flight.open(), 3);
        assert_eq!(
            in_flight.now("a").await.unwrap_err().limit,
            "limits.in_flight.per_subject"
        );
        assert!(in_flight.now("b").await.is_ok());
    }

    /// A raised `total` goes to the callers waiting already.
    #[tokio::test(start_paused = true)]
    async fn a_raised_total_lets_waiters_in() {
        let in_flight = InFlight::new(&caps(4, 1, 4));
        let _running = in_flight.now("a").await.unwrap();
        let waiter = {
            let in_flight = in_flight.clone();
            tokio::spawn(async move { in_flight.admit("b", CallKind::Call, 0, None).await })
        };
        tokio::task::yield_now().await;
        assert_eq!(in_flight.queued(), 1);
        in_flight.reload(&caps(4, 2, 4));
        let _admitted = waiter.await.unwrap().unwrap();
        assert_eq!((in_flight.open(), in_flight.queued()), (2, 0));
    }

    #[test]
    fn bad_settings_are_refused() {
        for (per_subject, total, queued) in [(0, 1, 0), (1, 0, 0), (5, 4, 0), (9, 4, 4)] {
            let settings = caps(per_subject, total, queued);
            assert!(
                settings.validate(1 << 20).is_err(),
                "{per_subject} {total} {queued}"
            );
        }
        caps(8, 4, 4).validate(1 << 20).unwrap();
        for queue_wait_ms in [0, 60_001] {
            let settings = InFlightSettings {
                queue_wait_ms,
                ..InFlightSettings::default()
            };
            let error = settings.validate(1 << 20).unwrap_err();
            assert!(error.contains("queue_wait_ms"), "{error}");
        }
        let no_deploys = InFlightSettings {
            deploys: 0,
            ..InFlightSettings::default()
        };
        assert!(no_deploys.validate(1 << 20).is_err());
        let small = InFlightSettings {
            bytes: 32 << 20,
            ..InFlightSettings::default()
        };
        let error = small.validate(1 << 20).unwrap_err();
        assert!(error.contains("the largest module"), "{error}");
        InFlightSettings::default().validate(64 << 20).unwrap();
        assert!(InFlightSettings::default().validate(1 << 30).is_err());
    }

    /// Request bytes are held per call and in all: a deploy grows its hold
    /// as its chunks arrive, and one that would pass the node's cap is shed
    /// while the calls within it go on; closing a call frees its bytes.
    #[tokio::test]
    async fn request_bytes_and_deploy_uploads_are_bounded() {
        let in_flight = InFlight::new(&InFlightSettings {
            bytes: 100,
            deploys: 1,
            ..InFlightSettings::default()
        });
        let call = in_flight.admit("a", CallKind::Call, 60, NOW).await.unwrap();
        let mut deploy = in_flight
            .admit("b", CallKind::Deploy, 0, NOW)
            .await
            .unwrap();
        assert_eq!(
            in_flight
                .admit("c", CallKind::Deploy, 0, NOW)
                .await
                .unwrap_err()
                .limit,
            "limits.in_flight.deploys"
        );
        deploy.hold(30).unwrap();
        let shed = deploy.hold(30).unwrap_err();
        assert_eq!(shed.limit, "limits.in_flight.bytes");
        assert_eq!(
            shed.detail,
            "the open calls hold 90 request bytes of the node's 100"
        );
        assert_eq!(in_flight.bytes(), 90);
        let shed = in_flight
            .admit("c", CallKind::Call, 101, NOW)
            .await
            .unwrap_err();
        assert!(
            shed.detail.starts_with("one request of 101 bytes"),
            "{}",
            shed.detail
        );
        drop(call);
        deploy.hold(30).unwrap();
        assert_eq!(in_flight.bytes(), 60);
        drop(deploy);
        assert_eq!(in_flight.bytes(), 0);
        let _next = in_flight
            .admit("c", CallKind::Deploy, 0, NOW)
            .await
            .unwrap();
    }
}
