//! The figures a scrape reads from the node when it asks (Raft's term,
//! role and indexes, open calls, the log's size, the modules): gauges whose
//! callbacks look at the node, so the request path pays nothing for them.

use std::sync::{Arc, Weak};

use opentelemetry::KeyValue;
use opentelemetry::metrics::AsyncInstrument;

use super::handle::{Inner, NodeHandle};
use crate::raft::Role;

/// Registers the node's gauges on its meter. They hold the node weakly: a
/// stopped node reports nothing.
pub(super) fn register(handle: &NodeHandle, log_file: std::path::PathBuf) {
    let meter = handle.metrics().meter().clone();
    let node = Arc::downgrade(&handle.inner);
    let gauge = |name: &'static str,
                 description: &'static str,
                 read: fn(&NodeHandle, &dyn AsyncInstrument<u64>)| {
        let node: Weak<Inner> = node.clone();
        meter
            .u64_observable_gauge(name)
            .with_description(description)
            .with_callback(move |observer| {
                if let Some(inner) = node.upgrade() {
                    read(&NodeHandle { inner }, observer);
                }
            })
            .build();
    };
    gauge(
        "wasmraft.raft.term",
        "The current Raft term",
        |node, observer| {
            let term = node.consensus().with_metrics(|metrics| metrics.term());
            observer.observe(term, &[]);
        },
    );
    gauge(
        "wasmraft.raft.role",
        "1 for this node's Raft role (label `role`), 0 for the others",
        |node, observer| {
            let role = node.consensus().with_metrics(|metrics| metrics.role());
            for (name, candidate) in [
                ("leader", Role::Leader),
                ("follower", Role::Follower),
                ("candidate", Role::Candidate),
                ("learner", Role::Learner),
                ("shutting_down", Role::ShuttingDown),
            ] {
                observer.observe(u64::from(role == candidate), &[KeyValue::new("role", name)]);
            }
        },
    );
    gauge(
        "wasmraft.raft.log.index",
        "Indexes of this node's log: `last` written, `committed` (on the leader), `applied`, `snapshot`, `purged`",
        |node, observer| {
            let indexes = node.consensus().with_metrics(|metrics| {
                [
                    ("last", metrics.last_log_index()),
                    ("committed", metrics.commit_index()),
                    ("applied", metrics.applied_index()),
                    ("snapshot", metrics.snapshot_index()),
                    ("purged", metrics.purged_index()),
                ]
            });
            for (kind, index) in indexes {
                if let Some(index) = index {
                    observer.observe(index, &[KeyValue::new("kind", kind)]);
                }
            }
        },
    );
    gauge(
        "wasmraft.raft.apply.lag",
        "Entries in this node's log not applied yet",
        |node, observer| {
            let lag = node.consensus().with_metrics(|metrics| {
                metrics
                    .last_log_index()
                    .unwrap_or(0)
                    .saturating_sub(metrics.applied_index().unwrap_or(0))
            });
            observer.observe(lag, &[]);
        },
    );
    gauge(
        "wasmraft.requests.in_flight",
        "Calls open on this node (invokes, queries, deploy uploads), running or waiting for a slot",
        |node, observer| observer.observe(u64::from(node.in_flight().open()), &[]),
    );
    gauge(
        "wasmraft.requests.queued",
        "Calls waiting for one of the node's limits.in_flight.total slots",
        |node, observer| observer.observe(u64::from(node.in_flight().queued()), &[]),
    );
    gauge(
        "wasmraft.requests.in_flight.bytes",
        "Request bytes the open calls hold (inputs, deploy uploads), against limits.in_flight.bytes",
        |node, observer| observer.observe(node.in_flight().bytes(), &[]),
    );
    gauge("wasmraft.modules", "Modules deployed", |node, observer| {
        if let Ok(modules) = node.reader().modules() {
            observer.observe(modules.len() as u64, &[]);
        }
    });
    let log_size = meter
        .u64_observable_gauge("wasmraft.log.size")
        .with_unit("By")
        .with_description("Size of the Raft log's file")
        .with_callback(move |observer| {
            if let Ok(metadata) = std::fs::metadata(&log_file) {
                observer.observe(metadata.len(), &[]);
            }
        });
    log_size.build();
    meter
        .u64_observable_counter("wasmraft.trace.spans.dropped")
        .with_description("Spans this process dropped because the export queue was full")
        .with_callback(|observer| {
            observer.observe(crate::telemetry::traces::spans_dropped(), &[]);
        })
        .build();
    let metrics = handle.metrics().clone();
    handle
        .consensus()
        .on_leader_change(move || metrics.leader_changed());
}
