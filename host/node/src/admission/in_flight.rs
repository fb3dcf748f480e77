//! How many calls a node serves at once: per subject, and in all, with the
//! request bytes they hold and the deploy uploads among them. A call holds
//! an [`InFlightPermit`] from its admission until it answers; one past a cap
//! is shed at once, so a subject with thousands of calls open cannot take
//! every slot another subject needs, and the bytes a node buffers for its
//! callers stay bounded.

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
            bytes: 512 << 20,
            deploys: 8,
        }
    }
}

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
        let largest = payload_bytes_max.max(crate::command::settings::MODULE_BYTES_MAX_RANGE.1);
        if self.bytes < largest {
            return Err(format!(
                "`limits.in_flight.bytes` ({}) is below the largest request a node may have to \
                 hold ({largest} bytes: the largest module the cluster settings allow, or \
                 `limits.payload_bytes_max`)",
                self.bytes
            ));
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
    bytes: u64,
    deploys: u32,
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
    /// The request bytes this call holds.
    bytes: u64,
    deploy: bool,
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
    /// open already keep their permits.
    pub fn reload(&self, settings: &InFlightSettings) {
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .settings = settings.clone();
    }

    /// Opens a call of `subject` holding `bytes`, or sheds it past a cap.
    pub fn admit(&self, subject: &str, kind: CallKind, bytes: u64) -> Result<InFlightPermit, Shed> {
        let mut counts = self.lock();
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
        if kind == CallKind::Deploy && counts.deploys >= counts.settings.deploys {
            return Err(Shed {
                limit: "limits.in_flight.deploys".into(),
                detail: format!("{} deploy uploads are open on this node", counts.deploys),
                retry_after_ms: DEPLOY_RETRY_AFTER_MS,
            });
        }
        counts.take_bytes(bytes)?;
        counts.total += 1;
        counts.deploys += u32::from(kind == CallKind::Deploy);
        *counts.by_subject.entry(subject.to_owned()).or_insert(0) += 1;
        Ok(InFlightPermit {
            counts: self.counts.clone(),
            subject: subject.to_owned(),
            bytes,
            deploy: kind == CallKind::Deploy,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Request bytes the open calls hold now.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// Calls open now, all subjects together.
    pub fn open(&self) -> u32 {
        self.lock().total
    }
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
}

impl InFlightPermit {
    /// Counts `more` request bytes against the node's cap for this call (a
    /// deploy's next chunk), or sheds the call.
    pub fn hold(&mut self, more: u64) -> Result<(), Shed> {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        counts.take_bytes(more)?;
        self.bytes += more;
        Ok(())
    }
}

impl Drop for InFlightPermit {
    fn drop(&mut self) {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        counts.total = counts.total.saturating_sub(1);
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

    #[test]
    fn caps_per_subject_and_in_all_and_forgets_closed_subjects() {
        let in_flight = InFlight::new(&InFlightSettings {
            per_subject: 2,
            total: 3,
            ..InFlightSettings::default()
        });
        let first = in_flight.admit("a", CallKind::Call, 0).unwrap();
        let _second = in_flight.admit("a", CallKind::Call, 0).unwrap();
        let shed = in_flight.admit("a", CallKind::Call, 0).unwrap_err();
        assert_eq!(shed.limit, "limits.in_flight.per_subject");
        assert_eq!(shed.detail, "`a` has 2 calls open on this node");
        let _third = in_flight.admit("b", CallKind::Call, 0).unwrap();
        let shed = in_flight.admit("c", CallKind::Call, 0).unwrap_err();
        assert_eq!(shed.limit, "limits.in_flight.total");
        drop(first);
        let _again = in_flight.admit("a", CallKind::Call, 0).unwrap();
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
            ..InFlightSettings::default()
        });
        let _first = in_flight.admit("a", CallKind::Call, 0).unwrap();
        let _second = in_flight.admit("a", CallKind::Call, 0).unwrap();
        assert!(in_flight.admit("a", CallKind::Call, 0).is_err());
        in_flight.reload(&InFlightSettings {
            per_subject: 3,
            total: 4,
            ..InFlightSettings::default()
        });
        let _third = in_flight.admit("a", CallKind::Call, 0).unwrap();
        // Lowered under what is open: the open calls stay, no new one.
        in_flight.reload(&InFlightSettings {
            per_subject: 1,
            total: 4,
            ..InFlightSettings::default()
        });
        assert_eq!(in_flight.open(), 3);
        assert_eq!(
            in_flight.admit("a", CallKind::Call, 0).unwrap_err().limit,
            "limits.in_flight.per_subject"
        );
        assert!(in_flight.admit("b", CallKind::Call, 0).is_ok());
    }

    #[test]
    fn bad_settings_are_refused() {
        for (per_subject, total) in [(0, 1), (1, 0), (5, 4)] {
            let settings = InFlightSettings {
                per_subject,
                total,
                ..InFlightSettings::default()
            };
            assert!(settings.validate(1 << 20).is_err(), "{per_subject} {total}");
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
    #[test]
    fn request_bytes_and_deploy_uploads_are_bounded() {
        let in_flight = InFlight::new(&InFlightSettings {
            bytes: 100,
            deploys: 1,
            ..InFlightSettings::default()
        });
        let call = in_flight.admit("a", CallKind::Call, 60).unwrap();
        let mut deploy = in_flight.admit("b", CallKind::Deploy, 0).unwrap();
        assert_eq!(
            in_flight.admit("c", CallKind::Deploy, 0).unwrap_err().limit,
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
        let shed = in_flight.admit("c", CallKind::Call, 101).unwrap_err();
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
        let _next = in_flight.admit("c", CallKind::Deploy, 0).unwrap();
    }
}
