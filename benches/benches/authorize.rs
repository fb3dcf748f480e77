//! What authentication and authorisation cost a call at the edge: checking
//! a bearer token (parse, sha256, constant-time compare), casbin's enforce
//! over one subject's bindings (what the edge runs) and over all 1,100 of
//! a thousand tenants (why it does not), the whole `Gate` path, and the
//! view rebuilt after an access change.
//!
//! Run: `cargo bench -p wasmraft-benches --bench authorize`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use tonic::metadata::{MetadataMap, MetadataValue};
use wasmraft::auth::policy::Policy;
use wasmraft::auth::{AccessCache, AccessView, Action, Gate, PeerAuth, Token};
use wasmraft::command::{AccessRule, TokenGrant};

/// Subjects in the policy: each holds a module role on its own pattern,
/// and every tenth one a cluster role too.
const SUBJECTS: usize = 1_000;

fn rules() -> Vec<AccessRule> {
    let mut rules = Vec::new();
    for index in 0..SUBJECTS {
        rules.push(AccessRule {
            subject: format!("app-{index}"),
            role: "module_invoker".to_owned(),
            module_pattern: Some(format!("tenant-{index}-*")),
        });
        if index % 10 == 0 {
            rules.push(AccessRule {
                subject: format!("app-{index}"),
                role: "cluster_viewer".to_owned(),
                module_pattern: None,
            });
        }
    }
    rules
}

fn authorize(c: &mut Criterion) {
    let rules = rules();
    let mut group = c.benchmark_group("authorize");
    // The edge decides a call by its subject's bindings alone (`AccessView`);
    // casbin over every binding, for comparison, walks them all.
    let own: Vec<AccessRule> = rules
        .iter()
        .filter(|rule| rule.subject == "app-500")
        .cloned()
        .collect();
    for (name, policy) in [
        ("subject_bindings", Policy::new(&own)),
        ("all_bindings", Policy::new(&rules)),
    ] {
        group.bench_function(format!("casbin_enforce_allowed_{name}"), |b| {
            b.iter(|| {
                black_box(policy.allows(
                    black_box("app-500"),
                    Action::ModuleInvoke,
                    black_box("tenant-500-orders"),
                ))
            })
        });
        group.bench_function(format!("casbin_enforce_denied_{name}"), |b| {
            b.iter(|| {
                black_box(policy.allows(
                    black_box("app-500"),
                    Action::ModuleInvoke,
                    black_box("tenant-501-orders"),
                ))
            })
        });
    }

    let token = Token::generate().unwrap();
    let mut tokens: Vec<TokenGrant> = (0..SUBJECTS)
        .map(|index| {
            let other = Token::generate().unwrap();
            TokenGrant {
                token_id: other.id().to_owned(),
                subject: format!("app-{index}"),
                secret_sha256: other.secret_sha256(),
            }
        })
        .collect();
    tokens.push(TokenGrant {
        token_id: token.id().to_owned(),
        subject: "app-500".to_owned(),
        secret_sha256: token.secret_sha256(),
    });
    let cache = AccessCache::default();
    cache.replace(AccessView::new(1, rules.clone(), tokens));
    let gate = Gate::new(true, cache, PeerAuth::new(1, None, Box::new(|| None)));
    let mut metadata = MetadataMap::new();
    metadata.insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {token}")).unwrap(),
    );
    group.bench_function("authenticate_token", |b| {
        b.iter(|| black_box(gate.authenticate(black_box(&metadata)).unwrap()))
    });
    group.bench_function("authenticate_and_authorize", |b| {
        b.iter(|| {
            let identity = gate.authenticate(black_box(&metadata)).unwrap();
            black_box(
                gate.authorize(&identity, Action::ModuleInvoke, "tenant-500-orders")
                    .unwrap(),
            )
        })
    });
    group.bench_function("access_view_1000_subjects", |b| {
        b.iter(|| black_box(AccessView::new(2, black_box(rules.clone()), Vec::new())))
    });
    group.finish();
}

criterion_group!(benches, authorize);
criterion_main!(benches);
