//! Storage format versions: the version of each database this build reads
//! and writes, the release that last wrote a database, and the decision
//! taken at open — use it, migrate it, or refuse it with a message that names
//! the version and the release that wrote it.
//!
//! Rules (README "Upgrading"):
//! - every change to what a database holds raises that database's version;
//! - an older version this build knows is migrated at open, in place, one
//!   step per write transaction that also records the new version (so a
//!   crash leaves either the old or the new version, and the step reruns);
//! - a version this build does not know is refused, never misread.

/// The state database's format (`state/state.redb`, and the snapshots that
/// carry it). 1: the first release. 2: cluster settings (`settings` table),
/// sessions indexed per caller and bounded in bytes (`sessions_by_caller`,
/// the `session_bytes` meta record). 3: module storage usage (`usage`
/// table), settings recorded by name (the `cluster_settings` record).
pub const STATE_FORMAT: u32 = 3;

/// The oldest state format this build migrates.
pub const STATE_FORMAT_OLDEST: u32 = 1;

/// The Raft log database's format (`log.redb`). 1: the first release, which
/// wrote no format record (a log without one is format 1).
pub const LOG_FORMAT: u32 = 1;

/// The name of this build, recorded in each database it writes so that a
/// build that cannot read the database can say which release wrote it.
pub const RELEASE: &str = concat!("wasmraft ", env!("CARGO_PKG_VERSION"));

/// Which database a format belongs to, as the operator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Database {
    Log,
    State,
    Snapshot,
}

impl std::fmt::Display for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Database::Log => "the Raft log (log.redb)",
            Database::State => "the state (state/state.redb)",
            Database::Snapshot => "the snapshot",
        })
    }
}

/// A database's format version and the release that last wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatVersion {
    pub version: u32,
    /// `None` for databases of the first release, which did not record it.
    pub written_by: Option<String>,
}

impl std::fmt::Display for FormatVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.version)?;
        match &self.written_by {
            Some(release) => write!(f, " (written by {release})"),
            None => f.write_str(" (written by wasmraft 0.1.0 or earlier)"),
        }
    }
}

/// A database this build cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{database} has format {found}; this build ({RELEASE}) reads format {supported}. {advice}",
    found = self.found,
    advice = self.advice()
)]
pub struct UnknownFormat {
    pub database: Database,
    pub found: FormatVersion,
    pub supported: u32,
}

impl UnknownFormat {
    fn advice(&self) -> &'static str {
        if self.found.version > self.supported {
            "A newer release wrote it: run that release (or a later one) on this data directory."
        } else {
            "It predates every format this build can migrate: upgrade through an intermediate release."
        }
    }
}

/// What to do with a database of format `found`, when this build writes
/// `supported` and migrates every version from `oldest`: `Ok(None)` to use it
/// as it is, `Ok(Some(version))` to migrate it from `version` first.
pub fn check(
    database: Database,
    found: FormatVersion,
    supported: u32,
    oldest: u32,
) -> Result<Option<u32>, UnknownFormat> {
    if found.version == supported {
        Ok(None)
    } else if (oldest..supported).contains(&found.version) {
        Ok(Some(found.version))
    } else {
        Err(UnknownFormat {
            database,
            found,
            supported,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_version_and_the_release_that_wrote_it() {
        let error = check(
            Database::State,
            FormatVersion {
                version: 7,
                written_by: Some("wasmraft 3.1.0".into()),
            },
            STATE_FORMAT,
            STATE_FORMAT_OLDEST,
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "the state (state/state.redb) has format 7 (written by wasmraft 3.1.0); this build \
                 ({RELEASE}) reads format 3. A newer release wrote it: run that release (or a \
                 later one) on this data directory."
            )
        );
        let current = FormatVersion {
            version: LOG_FORMAT,
            written_by: None,
        };
        assert_eq!(
            check(Database::Log, current, LOG_FORMAT, LOG_FORMAT),
            Ok(None)
        );
        let migratable = FormatVersion {
            version: 1,
            written_by: None,
        };
        assert_eq!(
            check(
                Database::State,
                migratable,
                STATE_FORMAT,
                STATE_FORMAT_OLDEST
            ),
            Ok(Some(1))
        );
        let older = check(
            Database::Log,
            FormatVersion {
                version: 0,
                written_by: None,
            },
            LOG_FORMAT,
            LOG_FORMAT,
        )
        .unwrap_err();
        assert!(
            older
                .to_string()
                .contains("format 0 (written by wasmraft 0.1.0 or earlier)")
        );
        assert!(older.to_string().contains("intermediate release"));
    }
}
