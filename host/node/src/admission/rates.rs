//! Per-subject rate limits: a token bucket per subject and method class
//! (governor's keyed GCRA limiter), for requests and for input bytes, with
//! the node's defaults and overrides per role and per subject. A subject is
//! who the call authenticated as, so one tenant's flood spends its own
//! buckets and nobody else's: a role's rates are each of its holders' own,
//! not a budget they share. Local admission only: nothing here reaches
//! apply.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};

use super::Shed;

/// What a call is, for its rate limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MethodClass {
    /// `StateMachine.Invoke` and opening a session: writes through Raft.
    Invoke,
    /// `StateMachine.Query`: reads on the query pool.
    Query,
    /// `Modules.Deploy`: validation and compilation on every node.
    Deploy,
    /// Everything else: the cluster, access and module-listing methods.
    Admin,
}

impl MethodClass {
    const ALL: [MethodClass; 4] = [
        MethodClass::Invoke,
        MethodClass::Query,
        MethodClass::Deploy,
        MethodClass::Admin,
    ];

    fn name(self) -> &'static str {
        match self {
            MethodClass::Invoke => "invoke",
            MethodClass::Query => "query",
            MethodClass::Deploy => "deploy",
            MethodClass::Admin => "admin",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One bucket: a steady rate and the burst it may run ahead by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

impl Rate {
    const fn new(per_second: u32, burst: u32) -> Self {
        Self { per_second, burst }
    }

    fn quota(self) -> Quota {
        // `validate` keeps both above zero; saturate rather than trust it.
        let per_second = NonZeroU32::new(self.per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(self.burst).unwrap_or(NonZeroU32::MIN);
        Quota::per_second(per_second).allow_burst(burst)
    }

    fn validate(self, field: &str) -> Result<(), String> {
        if self.per_second == 0 || self.burst == 0 {
            return Err(format!(
                "`{field}` must allow at least 1 per second and a burst of 1 (got {} per second, burst {})",
                self.per_second, self.burst
            ));
        }
        Ok(())
    }
}

/// The rates every subject has unless a role or its own name says
/// otherwise, per method class, and of the input bytes of its invokes and
/// queries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClassRates {
    pub invoke: Rate,
    pub query: Rate,
    pub deploy: Rate,
    pub admin: Rate,
    /// Input bytes of invokes and queries together.
    pub bytes: Rate,
}

impl Default for ClassRates {
    /// Far above what one node serves (a few thousand writes a second):
    /// a backstop against a runaway client, not a quota. Tenants get
    /// tighter ones by role or by name (`[limits.rates.roles.ROLE]`,
    /// `[limits.rates.subjects.NAME]`).
    fn default() -> Self {
        Self {
            invoke: Rate::new(20_000, 40_000),
            query: Rate::new(20_000, 40_000),
            // A pipeline deploys its modules in a burst; each is then
            // bounded by the deploy limits and the open-call caps.
            deploy: Rate::new(10, 100),
            admin: Rate::new(200, 400),
            bytes: Rate::new(256 << 20, 512 << 20),
        }
    }
}

/// The rates a role or a subject sets for itself: each one it leaves out
/// comes from elsewhere (its roles, then the defaults).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateOverrides {
    pub invoke: Option<Rate>,
    pub query: Option<Rate>,
    pub deploy: Option<Rate>,
    pub admin: Option<Rate>,
    /// Input bytes of invokes and queries together.
    pub bytes: Option<Rate>,
}

/// What a bucket limits: a method class's calls (by its index), or input
/// bytes.
const BYTES: usize = MethodClass::ALL.len();
const KINDS: usize = BYTES + 1;

fn kind_name(kind: usize) -> &'static str {
    MethodClass::ALL
        .get(kind)
        .map_or("bytes", |class| class.name())
}

impl RateOverrides {
    fn by_kind(&self) -> [Option<Rate>; KINDS] {
        [self.invoke, self.query, self.deploy, self.admin, self.bytes]
    }
}

impl ClassRates {
    fn by_kind(&self) -> [Option<Rate>; KINDS] {
        [self.invoke, self.query, self.deploy, self.admin, self.bytes].map(Some)
    }
}

/// `[limits.rates]`: the defaults, and the roles and subjects that have
/// their own. Each rate of a subject is, in this order: its own, the most
/// generous among the roles it holds (a binding of any module pattern
/// counts; the first role by name among equals), the default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateSettings {
    #[serde(flatten)]
    pub defaults: ClassRates,
    /// Subjects with rates of their own, by name.
    pub subjects: BTreeMap<String, RateOverrides>,
    /// Roles with rates of their own, by role name (`module_invoker`, …).
    pub roles: BTreeMap<String, RateOverrides>,
}

/// The most subjects with rates of their own: each holds its own buckets.
const SUBJECTS_WITH_RATES_MAX: usize = 10_000;

impl RateSettings {
    /// Why these rates cannot be used, naming the field, or `Ok`.
    pub fn validate(&self, payload_bytes_max: u64) -> Result<(), String> {
        if self.subjects.len() > SUBJECTS_WITH_RATES_MAX {
            return Err(format!(
                "`limits.rates.subjects` names {} subjects; at most {SUBJECTS_WITH_RATES_MAX}",
                self.subjects.len()
            ));
        }
        for subject in self.subjects.keys() {
            crate::command::check::subject(subject)
                .map_err(|reason| format!("`limits.rates.subjects.{subject}`: {reason}"))?;
        }
        for role in self.roles.keys() {
            crate::command::check::role(role)
                .map_err(|reason| format!("`limits.rates.roles.{role}`: {reason}"))?;
        }
        let tables = std::iter::once(("limits.rates".to_owned(), self.defaults.by_kind()))
            .chain(self.subjects.iter().map(|(subject, rates)| {
                (format!("limits.rates.subjects.{subject}"), rates.by_kind())
            }))
            .chain(
                self.roles
                    .iter()
                    .map(|(role, rates)| (format!("limits.rates.roles.{role}"), rates.by_kind())),
            );
        for (table, rates) in tables {
            for (kind, rate) in rates.iter().enumerate() {
                let Some(rate) = rate else { continue };
                rate.validate(&format!("{table}.{}", kind_name(kind)))?;
                // One input must fit in a bucket, or it could never pass.
                if kind == BYTES && u64::from(rate.burst) < payload_bytes_max {
                    return Err(format!(
                        "the bytes burst of `{table}` ({}) is below `limits.payload_bytes_max` ({payload_bytes_max}): the largest input could never pass",
                        rate.burst
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The buckets of one set of rates, a keyed limiter per rate it sets,
/// keyed by subject.
struct Buckets {
    rates: [Option<Rate>; KINDS],
    limiters: [Option<DefaultKeyedRateLimiter<String>>; KINDS],
}

impl Buckets {
    fn new(rates: [Option<Rate>; KINDS]) -> Self {
        Self {
            rates,
            limiters: rates.map(|rate| rate.map(|rate| RateLimiter::keyed(rate.quota()))),
        }
    }

    fn prune(&self) {
        for limiter in self.limiters.iter().flatten() {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    fn keys(&self) -> usize {
        self.limiters
            .iter()
            .flatten()
            .map(|limiter| limiter.len())
            .sum()
    }
}

/// How many admissions pass between two prunings of idle subjects.
const PRUNE_EVERY_CALLS: u64 = 4096;

/// The rate limits of one node, shared by every call.
pub struct RateLimits {
    defaults: Arc<Buckets>,
    /// The subjects with rates of their own; each keyed by its one name.
    subjects: HashMap<String, Arc<Buckets>>,
    /// The roles with rates of their own, in name order; each keyed by the
    /// subjects that take a rate of it.
    roles: Vec<(String, Arc<Buckets>)>,
    calls: AtomicU64,
    clock: DefaultClock,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits")
            .field("defaults", &self.defaults.rates)
            .field("subjects", &self.subjects.len())
            .field("roles", &self.roles.len())
            .finish_non_exhaustive()
    }
}

/// Where a subject's rate comes from, for the name of the limit.
enum Source<'a> {
    Subject(&'a str),
    Role(&'a str),
    Defaults,
}

impl Source<'_> {
    fn limit(&self, kind: usize) -> std::borrow::Cow<'static, str> {
        let what = kind_name(kind);
        match self {
            Source::Subject(subject) => format!("limits.rates.subjects.{subject}.{what}").into(),
            Source::Role(role) => format!("limits.rates.roles.{role}.{what}").into(),
            Source::Defaults => format!("limits.rates.{what}").into(),
        }
    }
}

impl RateLimits {
    pub fn new(settings: &RateSettings) -> Self {
        Self::keeping(None, settings)
    }

    /// The limits of `settings`, keeping the buckets (and what callers
    /// spent of them) of every set of rates that did not change: a reload
    /// neither refills a flooding subject's buckets nor empties anyone's.
    pub fn reloaded(&self, settings: &RateSettings) -> Self {
        Self::keeping(Some(self), settings)
    }

    fn keeping(held: Option<&Self>, settings: &RateSettings) -> Self {
        let keep = |held: Option<&Arc<Buckets>>, rates: [Option<Rate>; KINDS]| match held {
            Some(held) if held.rates == rates => held.clone(),
            _ => Arc::new(Buckets::new(rates)),
        };
        Self {
            defaults: keep(held.map(|held| &held.defaults), settings.defaults.by_kind()),
            subjects: settings
                .subjects
                .iter()
                .map(|(subject, rates)| {
                    let before = held.and_then(|held| held.subjects.get(subject));
                    (subject.clone(), keep(before, rates.by_kind()))
                })
                .collect(),
            roles: settings
                .roles
                .iter()
                .map(|(role, rates)| {
                    let before = held.and_then(|held| {
                        held.roles
                            .iter()
                            .find_map(|(name, buckets)| (name == role).then_some(buckets))
                    });
                    (role.clone(), keep(before, rates.by_kind()))
                })
                .collect(),
            calls: AtomicU64::new(0),
            clock: DefaultClock::default(),
        }
    }

    /// Whether any role has rates of its own: only then does a call's
    /// admission need its subject's roles.
    pub fn has_role_rates(&self) -> bool {
        !self.roles.is_empty()
    }

    /// Takes one call of `class` and `bytes` of input from `subject`'s
    /// buckets, or says which limit refuses and when to retry. `roles` are
    /// the roles `subject` holds (any order, repeats allowed); they matter
    /// only when [`has_role_rates`](Self::has_role_rates).
    pub fn admit(
        &self,
        subject: &str,
        roles: &[&str],
        class: MethodClass,
        bytes: usize,
    ) -> Result<(), Shed> {
        if self.calls.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY_CALLS == PRUNE_EVERY_CALLS - 1 {
            // A subject idle for longer than its bucket takes to fill again
            // is indistinguishable from a new one: forget it, so the
            // limiter's memory follows the callers of the last moments.
            self.defaults.prune();
            for (_, buckets) in &self.roles {
                buckets.prune();
            }
        }
        let key = subject.to_owned();
        let kind = class.index();
        let (limiter, rate, source) = self.bucket(subject, roles, kind);
        if let Err(not_until) = limiter.check_key(&key) {
            return Err(Shed {
                limit: source.limit(kind),
                detail: format!(
                    "`{subject}` sent {} calls faster than {} a second (burst {})",
                    class.name(),
                    rate.per_second,
                    rate.burst
                ),
                retry_after_ms: retry_after_ms(not_until.wait_time_from(self.clock.now())),
            });
        }
        let Some(bytes) = NonZeroU32::new(u32::try_from(bytes).unwrap_or(u32::MAX)) else {
            return Ok(());
        };
        let (limiter, rate, source) = self.bucket(subject, roles, BYTES);
        match limiter.check_key_n(&key, bytes) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(Shed {
                limit: source.limit(BYTES),
                detail: format!(
                    "`{subject}` sent input faster than {} bytes a second (burst {})",
                    rate.per_second, rate.burst
                ),
                retry_after_ms: retry_after_ms(not_until.wait_time_from(self.clock.now())),
            }),
            // Validation keeps the burst above the largest input; an input
            // larger than the burst could never pass, so waiting is no use.
            Err(_) => Err(Shed {
                limit: source.limit(BYTES),
                detail: format!(
                    "one input of {bytes} bytes is more than `{subject}`'s byte burst ({})",
                    rate.burst
                ),
                retry_after_ms: 1000,
            }),
        }
    }

    /// The bucket that holds `subject`'s rate of `kind`: its own, else the
    /// most generous of its roles' (the first by name among equals), else
    /// the default.
    fn bucket<'a>(
        &'a self,
        subject: &'a str,
        roles: &[&str],
        kind: usize,
    ) -> (&'a DefaultKeyedRateLimiter<String>, Rate, Source<'a>) {
        let set = |buckets: &'a Buckets| buckets.limiters[kind].as_ref().zip(buckets.rates[kind]);
        if let Some((limiter, rate)) = self.subjects.get(subject).and_then(|own| set(own)) {
            return (limiter, rate, Source::Subject(subject));
        }
        let generous = |rate: Rate| (rate.per_second, rate.burst);
        let mut best: Option<(&'a DefaultKeyedRateLimiter<String>, Rate, &'a str)> = None;
        for (role, buckets) in &self.roles {
            if !roles.contains(&role.as_str()) {
                continue;
            }
            let Some((limiter, rate)) = set(buckets) else {
                continue;
            };
            if best.is_none_or(|(_, best, _)| generous(rate) > generous(best)) {
                best = Some((limiter, rate, role));
            }
        }
        if let Some((limiter, rate, role)) = best {
            return (limiter, rate, Source::Role(role));
        }
        let (limiter, rate) = set(&self.defaults).expect("the defaults set every rate");
        (limiter, rate, Source::Defaults)
    }

    /// The subjects whose buckets are held (a subject counts once per
    /// bucket it used), for memory accounting.
    pub fn held_keys(&self) -> usize {
        self.defaults.keys()
            + self
                .subjects
                .values()
                .chain(self.roles.iter().map(|(_, buckets)| buckets))
                .map(|buckets| buckets.keys())
                .sum::<usize>()
    }
}

fn retry_after_ms(wait: std::time::Duration) -> u64 {
    u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> RateSettings {
        let mut settings = RateSettings::default();
        settings.subjects.insert(
            "tenant".to_owned(),
            RateOverrides {
                invoke: Some(Rate::new(1, 3)),
                // One byte a second: what a test spends stays spent.
                bytes: Some(Rate::new(1, 2 << 20)),
                ..RateOverrides::default()
            },
        );
        settings
    }

    #[test]
    fn the_defaults_are_valid() {
        RateSettings::default().validate(1 << 20).unwrap();
        settings().validate(1 << 20).unwrap();
    }

    /// The README's example, as a node's configuration reads it; a typo
    /// is refused.
    #[test]
    fn rates_read_from_toml() {
        let text = r#"
            invoke = { per_second = 20000, burst = 40000 }
            deploy = { per_second = 10, burst = 100 }
            [subjects.shop]
            invoke = { per_second = 100, burst = 200 }
            bytes  = { per_second = 1048576, burst = 2097152 }
        "#;
        let settings: RateSettings = toml::from_str(text).unwrap();
        assert_eq!(settings.defaults, ClassRates::default());
        let shop = &settings.subjects["shop"];
        assert_eq!(shop.invoke, Some(Rate::new(100, 200)));
        assert_eq!(shop.query, None);
        settings.validate(1 << 20).unwrap();
        for typo in [
            "invokes = { per_second = 1, burst = 1 }",
            "[subjects.shop]\nqueries = { per_second = 1, burst = 1 }",
        ] {
            assert!(toml::from_str::<RateSettings>(typo).is_err(), "{typo}");
        }
    }

    #[test]
    fn bad_rates_name_their_field() {
        let mut zero = settings();
        zero.subjects.get_mut("tenant").unwrap().query = Some(Rate::new(0, 1));
        let error = zero.validate(1 << 20).unwrap_err();
        assert!(
            error.contains("`limits.rates.subjects.tenant.query`"),
            "{error}"
        );
        let mut small = RateSettings::default();
        small.defaults.bytes = Rate::new(1000, 1000);
        let error = small.validate(1 << 20).unwrap_err();
        assert!(
            error.contains("below `limits.payload_bytes_max`"),
            "{error}"
        );
        let mut nameless = RateSettings::default();
        nameless
            .subjects
            .insert("bad name".to_owned(), RateOverrides::default());
        assert!(nameless.validate(1 << 20).is_err());
    }

    /// A subject's burst passes, the next call is refused with a wait of
    /// about one period, and neither another subject nor another class of
    /// the same subject is touched.
    #[test]
    fn a_subject_spends_its_own_buckets_only() {
        let limits = RateLimits::new(&settings());
        for _ in 0..3 {
            limits
                .admit("tenant", &[], MethodClass::Invoke, 10)
                .unwrap();
        }
        // Governor's clock is real: a slow machine may refill a token or
        // two meanwhile, but not ten.
        let shed = (0..10)
            .find_map(|_| limits.admit("tenant", &[], MethodClass::Invoke, 10).err())
            .expect("ten calls past a burst of 3 at 1 a second");
        assert_eq!(shed.limit, "limits.rates.subjects.tenant.invoke");
        assert!(
            shed.detail
                .contains("`tenant` sent invoke calls faster than 1 a second (burst 3)"),
            "{}",
            shed.detail
        );
        assert!(
            (1..=1000).contains(&shed.retry_after_ms),
            "{}",
            shed.retry_after_ms
        );
        limits.admit("tenant", &[], MethodClass::Query, 10).unwrap();
        limits.admit("other", &[], MethodClass::Invoke, 10).unwrap();
    }

    /// A role's rates are each holder's own; a subject holding several
    /// roles takes the most generous rate of each class; a subject's own
    /// rates come before any role's.
    #[test]
    fn a_roles_rates_bind_each_of_its_holders() {
        let mut settings = settings();
        settings.roles.insert(
            "module_invoker".to_owned(),
            RateOverrides {
                invoke: Some(Rate::new(1, 2)),
                query: Some(Rate::new(1, 1)),
                ..RateOverrides::default()
            },
        );
        settings.roles.insert(
            "module_querier".to_owned(),
            RateOverrides {
                query: Some(Rate::new(1, 4)),
                ..RateOverrides::default()
            },
        );
        settings.validate(1 << 20).unwrap();
        let limits = RateLimits::new(&settings);
        assert!(limits.has_role_rates());
        let spent = |subject: &str, roles: &[&str], class| {
            (0..20)
                .position(|_| limits.admit(subject, roles, class, 0).is_err())
                .map(|passed| (passed, limits.admit(subject, roles, class, 0).unwrap_err()))
        };
        // Governor's clock is real: a slow machine may refill a token, not ten.
        let (passed, shed) = spent("a", &["module_invoker"], MethodClass::Invoke).unwrap();
        assert!((2..=4).contains(&passed), "{passed}");
        assert_eq!(shed.limit, "limits.rates.roles.module_invoker.invoke");
        // Another holder has its own bucket; a subject without the role has
        // the defaults.
        assert!(spent("b", &["module_invoker"], MethodClass::Invoke).is_some());
        assert!(spent("c", &[], MethodClass::Invoke).is_none());
        // Two roles: the querier's burst of 4 beats the invoker's 1, class
        // by class, and the invoker's rate still holds for invokes.
        let both = ["module_invoker", "module_querier", "module_invoker"];
        let (passed, shed) = spent("d", &both, MethodClass::Query).unwrap();
        assert!((4..=6).contains(&passed), "{passed}");
        assert_eq!(shed.limit, "limits.rates.roles.module_querier.query");
        let (_, shed) = spent("d", &both, MethodClass::Invoke).unwrap();
        assert_eq!(shed.limit, "limits.rates.roles.module_invoker.invoke");
        // A subject's own rates come first: `tenant` has a burst of 3.
        let (passed, shed) = spent("tenant", &["module_querier"], MethodClass::Invoke).unwrap();
        assert!((3..=5).contains(&passed), "{passed}");
        assert_eq!(shed.limit, "limits.rates.subjects.tenant.invoke");
        // What `tenant` leaves out comes from its roles.
        let (_, shed) = spent("tenant", &["module_querier"], MethodClass::Query).unwrap();
        assert_eq!(shed.limit, "limits.rates.roles.module_querier.query");
        assert!(limits.held_keys() >= 4);
    }

    #[test]
    fn rates_of_an_unknown_role_are_refused() {
        let mut settings = RateSettings::default();
        settings
            .roles
            .insert("module_invokers".to_owned(), RateOverrides::default());
        let error = settings.validate(1 << 20).unwrap_err();
        assert!(
            error.contains("`limits.rates.roles.module_invokers`: unknown role")
                && error.contains("module_invoker,"),
            "{error}"
        );
        let parsed: RateSettings =
            toml::from_str("[roles.module_invoker]\ninvoke = { per_second = 5, burst = 10 }")
                .unwrap();
        assert_eq!(
            parsed.roles["module_invoker"].invoke,
            Some(Rate::new(5, 10))
        );
        parsed.validate(1 << 20).unwrap();
    }

    #[test]
    fn bytes_are_limited_apart_from_calls() {
        let limits = RateLimits::new(&settings());
        limits
            .admit("tenant", &[], MethodClass::Query, 2 << 20)
            .unwrap();
        let shed = limits
            .admit("tenant", &[], MethodClass::Query, 1 << 20)
            .unwrap_err();
        assert!(shed.detail.contains("bytes a second"), "{}", shed.detail);
        let shed = limits
            .admit("tenant", &[], MethodClass::Query, 3 << 20)
            .unwrap_err();
        assert!(shed.detail.contains("more than"), "{}", shed.detail);
    }

    #[test]
    fn idle_subjects_are_forgotten() {
        let limits = RateLimits::new(&RateSettings {
            defaults: ClassRates {
                admin: Rate::new(1_000_000, 1),
                ..ClassRates::default()
            },
            ..RateSettings::default()
        });
        for subject in 0..100 {
            limits
                .admit(&format!("s{subject}"), &[], MethodClass::Admin, 0)
                .unwrap();
        }
        assert_eq!(limits.held_keys(), 100);
        // A bucket of 1 at a million a second is full again after 1 µs:
        // wait until the clock has moved well past it.
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_millis(2) {
            std::hint::spin_loop();
        }
        limits.defaults.prune();
        assert_eq!(limits.held_keys(), 0);
    }

    /// A reload keeps what callers spent of the rates it leaves alone and
    /// gives a changed rate fresh buckets.
    #[test]
    fn a_reload_keeps_the_buckets_of_unchanged_rates() {
        let limits = RateLimits::new(&settings());
        let spend = |limits: &RateLimits, subject: &str| {
            (0..10)
                .find_map(|_| limits.admit(subject, &[], MethodClass::Invoke, 0).err())
                .is_some()
        };
        assert!(spend(&limits, "tenant"), "a burst of 3 at 1 a second");
        // Unchanged: still spent.
        let reloaded = limits.reloaded(&settings());
        assert!(
            reloaded
                .admit("tenant", &[], MethodClass::Invoke, 0)
                .is_err()
        );
        // Raised: in force at once.
        let mut raised = settings();
        raised.subjects.get_mut("tenant").unwrap().invoke = Some(Rate::new(1, 1000));
        let reloaded = reloaded.reloaded(&raised);
        for _ in 0..100 {
            reloaded
                .admit("tenant", &[], MethodClass::Invoke, 0)
                .unwrap();
        }
        // A subject's own rates removed: it falls back to the defaults.
        let reloaded = reloaded.reloaded(&RateSettings::default());
        for _ in 0..100 {
            reloaded
                .admit("tenant", &[], MethodClass::Invoke, 0)
                .unwrap();
        }
    }
}
