//! When a failed call may be sent again, and how long to wait first: pure
//! decisions over [`ClientError`], kept apart from the I/O so they are
//! tested without a server.

use std::time::Duration;

use tonic::Code;

use super::error::ClientError;

/// What a call does to the cluster, which decides which failures it may
/// retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallKind {
    /// Changes nothing (list, get, query, status): any transient failure may
    /// be retried.
    ReadOnly,
    /// An invoke with a session: a retry with the same (client id,
    /// sequence) cannot apply twice, so every transient failure, including
    /// one where the first attempt may have reached the server, is retried.
    SessionedInvoke,
    /// Changes state without a session (deploy, remove): retried only when
    /// nothing was sent.
    Write,
}

/// Whether `error` is worth another attempt of a call of `kind`.
/// `retry_unreachable` is `ClientConfig::retry_unreachable`.
pub(crate) fn should_retry(kind: CallKind, error: &ClientError, retry_unreachable: bool) -> bool {
    match error {
        ClientError::Unreachable { .. } => retry_unreachable,
        ClientError::TimedOut { .. } | ClientError::Transport { .. } => kind != CallKind::Write,
        // Turned away by a local limit before anything started: any call
        // may try again, after the wait the server asked for.
        ClientError::Status {
            code: Code::ResourceExhausted,
            retry_after: Some(_),
            ..
        } => true,
        ClientError::Status { code, .. } => match code {
            // `CANCELLED` is how tonic servers answer a call past its gRPC
            // deadline.
            Code::Unavailable | Code::Cancelled => kind != CallKind::Write,
            // The server's "no commit in time": the command may still commit,
            // so only a sessioned retry is safe.
            Code::DeadlineExceeded => kind == CallKind::SessionedInvoke,
            _ => false,
        },
        _ => false,
    }
}

/// Whether the attempt that failed with `error` may have reached the server
/// (and so a command may have been applied).
pub(crate) fn may_have_been_sent(error: &ClientError) -> bool {
    !matches!(
        error,
        ClientError::Unreachable { .. }
            | ClientError::InvalidEndpoint { .. }
            | ClientError::InvalidConfig(_)
            | ClientError::InvalidInput(_)
            | ClientError::Randomness(_)
    )
}

/// Whether `error` is the cluster's answer to the command itself (applied
/// with this result, or refused): once an earlier attempt may have reached
/// the cluster, any other failure leaves the outcome unknown. A node that
/// is unreachable, unavailable or timed out on a retry says nothing about
/// whether the first attempt was applied.
pub(crate) fn is_answer(error: &ClientError) -> bool {
    match error {
        // A request shed by a local limit was not looked at.
        ClientError::Status {
            retry_after: Some(_),
            ..
        } => false,
        ClientError::Status { code, .. } => !matches!(
            code,
            Code::Unavailable
                | Code::Cancelled
                | Code::DeadlineExceeded
                | Code::Unknown
                | Code::Internal
                | Code::Aborted
        ),
        _ => false,
    }
}

/// Whether the server refused an invoke because it no longer knows the
/// session (evicted from its bounded table) — `Refusal::SessionExpired`,
/// which the API reports as `FAILED_PRECONDITION` with this wording.
pub(crate) fn is_session_expired(error: &ClientError) -> bool {
    match error {
        ClientError::Status { code, message, .. } => {
            *code == Code::FailedPrecondition
                && message.contains("is not the session's next command")
        }
        _ => false,
    }
}

/// The wait before retry number `retry` (0 for the first retry):
/// exponential from `initial`, capped at `max`, with the upper half
/// jittered by `jitter` (a random value in `0.0..1.0`) so that many clients
/// failing together do not come back together.
pub(crate) fn backoff(retry: u32, initial: Duration, max: Duration, jitter: f64) -> Duration {
    let exponential = initial.saturating_mul(2_u32.saturating_pow(retry.min(20)));
    let ceiling = exponential.min(max);
    let half = ceiling / 2;
    half + half.mul_f64(jitter.clamp(0.0, 1.0))
}

/// The wait before retrying after `error`: `backoff`, or longer when the
/// server asked for a wait (`retry-after-ms`): that wait, stretched by up to
/// half again by `jitter` so that the clients it turned away together do
/// not come back together.
pub(crate) fn retry_delay(error: &ClientError, backoff: Duration, jitter: f64) -> Duration {
    match error {
        ClientError::Status {
            retry_after: Some(wait),
            ..
        } => backoff.max(wait.mul_f64(1.0 + jitter.clamp(0.0, 1.0) / 2.0)),
        _ => backoff,
    }
}

/// A random value in `0.0..1.0` for [`backoff`]; no jitter if the system
/// gives no randomness.
pub(crate) fn jitter() -> f64 {
    getrandom::u32().map_or(0.5, |value| f64::from(value) / (f64::from(u32::MAX) + 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: Code, message: &str) -> ClientError {
        ClientError::Status {
            operation: "invoke",
            code,
            message: message.to_owned(),
            leader_address: None,
            retry_after: None,
        }
    }

    fn unreachable() -> ClientError {
        ClientError::Unreachable {
            endpoint: "http://x:1".to_owned(),
            reason: "refused".to_owned(),
        }
    }

    fn timed_out() -> ClientError {
        ClientError::TimedOut {
            endpoint: "http://x:1".to_owned(),
            operation: "invoke",
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn retry_table() {
        use CallKind::*;
        let rows: &[(CallKind, ClientError, bool)] = &[
            (
                SessionedInvoke,
                status(Code::Unavailable, "no leader"),
                true,
            ),
            (
                SessionedInvoke,
                status(Code::DeadlineExceeded, "no commit"),
                true,
            ),
            (SessionedInvoke, timed_out(), true),
            (SessionedInvoke, unreachable(), true),
            (
                SessionedInvoke,
                status(Code::FailedPrecondition, "trap"),
                false,
            ),
            (SessionedInvoke, status(Code::NotFound, "no module"), false),
            (
                SessionedInvoke,
                status(Code::ResourceExhausted, "fuel"),
                false,
            ),
            (ReadOnly, status(Code::Unavailable, "no leader"), true),
            (ReadOnly, status(Code::Cancelled, "Timeout expired"), true),
            (Write, status(Code::Cancelled, "Timeout expired"), false),
            (
                ReadOnly,
                status(Code::DeadlineExceeded, "slow query"),
                false,
            ),
            (ReadOnly, timed_out(), true),
            (Write, status(Code::Unavailable, "no leader"), false),
            (Write, timed_out(), false),
            (Write, unreachable(), true),
        ];
        for (kind, error, expected) in rows {
            assert_eq!(
                should_retry(*kind, error, true),
                *expected,
                "{kind:?} {error}"
            );
        }
        assert!(!should_retry(SessionedInvoke, &unreachable(), false));
    }

    #[test]
    fn only_an_unreachable_endpoint_means_nothing_was_sent() {
        assert!(!may_have_been_sent(&unreachable()));
        assert!(may_have_been_sent(&timed_out()));
        assert!(may_have_been_sent(&status(Code::Unavailable, "no leader")));
    }

    #[test]
    fn only_the_clusters_verdict_settles_an_outcome() {
        assert!(is_answer(&status(Code::FailedPrecondition, "trap")));
        assert!(is_answer(&status(Code::NotFound, "no module")));
        assert!(is_answer(&status(Code::ResourceExhausted, "fuel")));
        // A later attempt that found the node down, no leader, or no commit
        // in time says nothing of whether an earlier one was applied.
        assert!(!is_answer(&unreachable()));
        assert!(!is_answer(&timed_out()));
        assert!(!is_answer(&status(Code::Unavailable, "no leader")));
        assert!(!is_answer(&status(Code::DeadlineExceeded, "no commit")));
        assert!(!is_answer(&status(Code::Internal, "storage")));
    }

    #[test]
    fn session_expiry_is_recognised() {
        let message = &wasmraft_core::Refusal::SessionExpired {
            client_id: "c1".to_owned(),
            sequence: 3,
        }
        .to_string();
        assert!(is_session_expired(&status(
            Code::FailedPrecondition,
            message
        )));
        assert!(!is_session_expired(&status(
            Code::FailedPrecondition,
            "module aborted"
        )));
        assert!(!is_session_expired(&status(Code::InvalidArgument, message)));
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let initial = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        assert_eq!(backoff(0, initial, max, 0.0), Duration::from_millis(50));
        assert_eq!(backoff(0, initial, max, 1.0), Duration::from_millis(100));
        assert_eq!(backoff(2, initial, max, 0.0), Duration::from_millis(200));
        assert_eq!(backoff(10, initial, max, 0.0), Duration::from_millis(500));
        assert_eq!(backoff(u32::MAX, initial, max, 1.0), max);
        let value = jitter();
        assert!((0.0..1.0).contains(&value));
    }

    #[test]
    fn a_shed_call_is_retried_after_the_wait_the_server_asked_for() {
        let shed = ClientError::Status {
            operation: "query",
            code: Code::ResourceExhausted,
            message: "62 queries run and 248 wait on this node (limit: query slots)".to_owned(),
            leader_address: None,
            retry_after: Some(Duration::from_millis(50)),
        };
        let out_of_fuel = status(Code::ResourceExhausted, "out of fuel");
        for kind in [
            CallKind::ReadOnly,
            CallKind::SessionedInvoke,
            CallKind::Write,
        ] {
            assert!(should_retry(kind, &shed, false), "{kind:?}");
            assert!(!should_retry(kind, &out_of_fuel, false), "{kind:?}");
        }
        assert!(!is_answer(&shed), "a shed request was not looked at");
        assert!(
            is_answer(&out_of_fuel),
            "out of fuel is the command's result"
        );
        let short = Duration::from_millis(10);
        assert_eq!(retry_delay(&shed, short, 0.0), Duration::from_millis(50));
        assert_eq!(retry_delay(&shed, short, 1.0), Duration::from_millis(75));
        assert_eq!(
            retry_delay(&shed, Duration::from_secs(1), 0.5),
            Duration::from_secs(1)
        );
        assert_eq!(retry_delay(&out_of_fuel, short, 1.0), short);
    }
}
