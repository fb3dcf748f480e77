//! How many calls a node serves at once: per subject, and in all. A call
//! holds an [`InFlightPermit`] from its admission until it answers; one
//! past a cap is shed at once, so a subject with thousands of calls open
//! cannot take every slot another subject needs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::Shed;

/// `[limits.in_flight]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InFlightSettings {
    /// Calls one subject may have open on this node at once.
    pub per_subject: u32,
    /// Calls the node serves at once, all subjects together.
    pub total: u32,
}

impl Default for InFlightSettings {
    /// Above what one application's connection pool opens (a load test of
    /// 256 clients runs as one subject), below what exhausts a node.
    fn default() -> Self {
        Self {
            per_subject: 1024,
            total: 8192,
        }
    }
}

impl InFlightSettings {
    pub fn validate(&self) -> Result<(), String> {
        if self.per_subject == 0 || self.total == 0 {
            return Err("`limits.in_flight.per_subject` and `total` must be at least 1".to_owned());
        }
        if self.per_subject > self.total {
            return Err(format!(
                "`limits.in_flight.per_subject` ({}) is above `total` ({})",
                self.per_subject, self.total
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
struct Counts {
    /// The caps in force (replaced by [`InFlight::reload`]).
    settings: InFlightSettings,
    total: u32,
    /// Only subjects with a call open: an entry goes with its last call.
    by_subject: HashMap<String, u32>,
}

/// The calls open on this node. Cheap to clone.
#[derive(Debug, Clone)]
pub struct InFlight {
    counts: Arc<Mutex<Counts>>,
}

/// One open call; dropping it closes the call.
#[derive(Debug)]
pub struct InFlightPermit {
    counts: Arc<Mutex<Counts>>,
    subject: String,
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
    /// open already keep their permits.
    pub fn reload(&self, settings: &InFlightSettings) {
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .settings = settings.clone();
    }

    /// Opens a call of `subject`, or sheds it past a cap.
    pub fn admit(&self, subject: &str) -> Result<InFlightPermit, Shed> {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if counts.total >= counts.settings.total {
            return Err(Shed {
                limit: "limits.in_flight.total".into(),
                detail: format!("{} calls are open on this node", counts.total),
                retry_after_ms: RETRY_AFTER_MS,
            });
        }
        let open = counts.by_subject.get(subject).copied().unwrap_or(0);
        if open >= counts.settings.per_subject {
            return Err(Shed {
                limit: "limits.in_flight.per_subject".into(),
                detail: format!("`{subject}` has {open} calls open on this node"),
                retry_after_ms: RETRY_AFTER_MS,
            });
        }
        counts.total += 1;
        *counts.by_subject.entry(subject.to_owned()).or_insert(0) += 1;
        Ok(InFlightPermit {
            counts: self.counts.clone(),
            subject: subject.to_owned(),
        })
    }

    /// Calls open now, all subjects together.
    pub fn open(&self) -> u32 {
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .total
    }
}

impl Drop for InFlightPermit {
    fn drop(&mut self) {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        counts.total = counts.total.saturating_sub(1);
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

    #[test]
    fn caps_per_subject_and_in_all_and_forgets_closed_subjects() {
        let in_flight = InFlight::new(&InFlightSettings {
            per_subject: 2,
            total: 3,
        });
        let first = in_flight.admit("a").unwrap();
        let _second = in_flight.admit("a").unwrap();
        let shed = in_flight.admit("a").unwrap_err();
        assert_eq!(shed.limit, "limits.in_flight.per_subject");
        assert_eq!(shed.detail, "`a` has 2 calls open on this node");
        let _third = in_flight.admit("b").unwrap();
        let shed = in_flight.admit("c").unwrap_err();
        assert_eq!(shed.limit, "limits.in_flight.total");
        drop(first);
        let _again = in_flight.admit("a").unwrap();
        assert_eq!(in_flight.open(), 3);
        drop(_again);
        drop(_second);
        let counts = in_flight.counts.lock().unwrap();
        assert_eq!(counts.by_subject.keys().collect::<Vec<_>>(), ["b"]);
    }

    #[test]
    fn a_reload_applies_to_the_next_admissions() {
        let in_flight = InFlight::new(&InFlightSettings {
            per_subject: 2,
            total: 4,
        });
        let _first = in_flight.admit("a").unwrap();
        let _second = in_flight.admit("a").unwrap();
        assert!(in_flight.admit("a").is_err());
        in_flight.reload(&InFlightSettings {
            per_subject: 3,
            total: 4,
        });
        let _third = in_flight.admit("a").unwrap();
        // Lowered under what is open: the open calls stay, no new one.
        in_flight.reload(&InFlightSettings {
            per_subject: 1,
            total: 4,
        });
        assert_eq!(in_flight.open(), 3);
        assert_eq!(
            in_flight.admit("a").unwrap_err().limit,
            "limits.in_flight.per_subject"
        );
        assert!(in_flight.admit("b").is_ok());
    }

    #[test]
    fn bad_settings_are_refused() {
        for (per_subject, total) in [(0, 1), (1, 0), (5, 4)] {
            assert!(
                InFlightSettings { per_subject, total }.validate().is_err(),
                "{per_subject} {total}"
            );
        }
    }
}
