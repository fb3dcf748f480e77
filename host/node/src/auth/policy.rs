//! Authorisation with casbin: the model (`model.conf`), the permissions of
//! each role (`roles.csv`), and the actions of wasmraft's methods and
//! replicated commands.
//!
//! A [`Policy`] is built from role bindings (the replicated `AccessRule`s):
//! each binding becomes a casbin grouping line (subject → role) and the
//! role's permission lines, a module role's object being the binding's
//! pattern. Patterns are checked when a binding is stored
//! (`check::module_pattern`), and matched by [`check::pattern_matches`],
//! which cannot fail; no casbin built-in that parses patterns is used.
//!
//! The same policy answers at the edge and, for a command whose policy
//! revision is older than the one in force, at apply: a pure function of
//! the bindings, so every replica answers alike.

use std::collections::BTreeSet;
use std::fmt;

use casbin::function_map::OperatorFunction;
use casbin::prelude::*;
use casbin::rhai::Dynamic;

use crate::command::check;
use crate::command::{AccessRule, Command};

/// The casbin model.
pub const MODEL: &str = include_str!("model.conf");
/// The permissions of each role.
pub const ROLES: &str = include_str!("roles.csv");
/// The object of the actions on the cluster as a whole.
pub const CLUSTER_OBJECT: &str = "cluster";

/// What a caller asks to do. The names are the policy's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    ModuleDeploy,
    ModuleRemove,
    ModuleGet,
    ModuleInvoke,
    ModuleQuery,
    SessionOpen,
    ClusterView,
    ClusterMembership,
    ClusterSnapshot,
    ClusterSettings,
    AccessAdmin,
}

impl Action {
    /// Every action, for tests and documentation.
    pub const ALL: [Action; 11] = [
        Action::ModuleDeploy,
        Action::ModuleRemove,
        Action::ModuleGet,
        Action::ModuleInvoke,
        Action::ModuleQuery,
        Action::SessionOpen,
        Action::ClusterView,
        Action::ClusterMembership,
        Action::ClusterSnapshot,
        Action::ClusterSettings,
        Action::AccessAdmin,
    ];

    /// The action's name in `roles.csv`.
    pub fn name(self) -> &'static str {
        match self {
            Action::ModuleDeploy => "module.deploy",
            Action::ModuleRemove => "module.remove",
            Action::ModuleGet => "module.get",
            Action::ModuleInvoke => "module.invoke",
            Action::ModuleQuery => "module.query",
            Action::SessionOpen => "session.open",
            Action::ClusterView => "cluster.view",
            Action::ClusterMembership => "cluster.membership",
            Action::ClusterSnapshot => "cluster.snapshot",
            Action::ClusterSettings => "cluster.settings",
            Action::AccessAdmin => "access.admin",
        }
    }

    /// What a refusal says the caller may not do, with the roles that may.
    pub fn describe(self, object: &str) -> String {
        let (what, roles) = match self {
            Action::ModuleDeploy => (
                format!("deploy module `{object}`"),
                "module_deployer, cluster_operator",
            ),
            Action::ModuleRemove => (
                format!("remove module `{object}`"),
                "module_deployer, cluster_operator",
            ),
            Action::ModuleGet => (
                format!("see module `{object}`"),
                "any module role, cluster_viewer",
            ),
            Action::ModuleInvoke => (format!("invoke module `{object}`"), "module_invoker"),
            Action::ModuleQuery => (
                format!("query module `{object}`"),
                "module_querier, module_invoker",
            ),
            Action::SessionOpen => ("open a client session".to_owned(), "module_invoker"),
            Action::ClusterView => (
                "view the cluster".to_owned(),
                "cluster_viewer, cluster_operator",
            ),
            Action::ClusterMembership => (
                "change the cluster's membership".to_owned(),
                "cluster_operator",
            ),
            Action::ClusterSnapshot => ("trigger a snapshot".to_owned(), "cluster_operator"),
            Action::ClusterSettings => {
                ("change the cluster settings".to_owned(), "cluster_operator")
            }
            Action::AccessAdmin => ("manage roles and tokens".to_owned(), "cluster_admin"),
        };
        format!("{what} (needs {roles}, or cluster_admin)")
    }
}

/// The permission a replicated command needs, checked again at apply:
/// `None` for the system's own commands, which no client can propose.
pub fn command_permission(command: &Command) -> Option<(Action, &str)> {
    match command.unwrapped() {
        Command::Deploy(deploy) => Some((Action::ModuleDeploy, &deploy.name)),
        Command::Remove { name } => Some((Action::ModuleRemove, name)),
        Command::Invoke(invoke) => Some((Action::ModuleInvoke, &invoke.module)),
        Command::Access(_) => Some((Action::AccessAdmin, CLUSTER_OBJECT)),
        Command::OpenSession { .. } => Some((Action::SessionOpen, CLUSTER_OBJECT)),
        Command::Settings(_) | Command::ChangeSettings(_) => {
            Some((Action::ClusterSettings, CLUSTER_OBJECT))
        }
        Command::ClusterId { .. }
        | Command::Batch(_)
        | Command::Authorized(_)
        | Command::Traced(_) => None,
    }
}

/// The role bindings of a cluster, as casbin enforces them.
pub struct Policy {
    enforcer: Enforcer,
    bindings: usize,
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("bindings", &self.bindings)
            .finish_non_exhaustive()
    }
}

/// casbin's function for the model's `patternMatch`.
fn pattern_match(name: Dynamic, pattern: Dynamic) -> Dynamic {
    let (Ok(name), Ok(pattern)) = (
        name.into_immutable_string(),
        pattern.into_immutable_string(),
    ) else {
        return Dynamic::from(false);
    };
    Dynamic::from(check::pattern_matches(&pattern, &name))
}

/// One line of `roles.csv`: role, action, object.
fn role_permissions() -> impl Iterator<Item = [&'static str; 3]> {
    ROLES
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let mut fields = line.split(',').map(str::trim);
            let mut next = || fields.next().unwrap_or_default();
            [next(), next(), next()]
        })
}

/// The casbin role a binding makes its subject hold. It starts with `#`,
/// which no subject may contain: casbin takes a name for a holder of
/// itself, so a subject named like a role would otherwise hold it.
fn casbin_role(rule: &AccessRule) -> String {
    match &rule.module_pattern {
        Some(pattern) => format!("#{}:{pattern}", rule.role),
        None => format!("#{}", rule.role),
    }
}

impl Policy {
    /// The policy of `rules`. A rule that does not pass
    /// [`check::access_rule`] is left out (apply never stores one).
    pub fn new<'a>(rules: impl IntoIterator<Item = &'a AccessRule>) -> Self {
        let mut grouping = BTreeSet::new();
        let mut permissions = BTreeSet::new();
        for rule in rules {
            if check::access_rule(rule).is_err() {
                continue;
            }
            let role = casbin_role(rule);
            for [holder, action, object] in role_permissions() {
                if holder != rule.role {
                    continue;
                }
                let object = match &rule.module_pattern {
                    Some(pattern) => object.replace("{pattern}", pattern),
                    None => object.to_owned(),
                };
                permissions.insert(vec![role.clone(), action.to_owned(), object]);
            }
            grouping.insert(vec![rule.subject.clone(), role]);
        }
        let bindings = grouping.len();
        // Nothing here waits on anything: casbin's API is async for its
        // file and database adapters, and the memory adapter never yields.
        let enforcer = futures::executor::block_on(async {
            let model = DefaultModel::from_str(MODEL)
                .await
                .expect("the access model in the repository is valid");
            let mut enforcer = Enforcer::new(model, MemoryAdapter::default())
                .await
                .expect("an enforcer over an empty memory adapter builds");
            enforcer.add_function("patternMatch", OperatorFunction::Arg2(pattern_match));
            if !permissions.is_empty() {
                enforcer
                    .add_policies(permissions.into_iter().collect())
                    .await
                    .expect("new permission lines are added");
            }
            if !grouping.is_empty() {
                enforcer
                    .add_grouping_policies(grouping.into_iter().collect())
                    .await
                    .expect("new grouping lines are added");
            }
            enforcer
        });
        Self { enforcer, bindings }
    }

    /// Whether `subject` may take `action` on `object`.
    pub fn allows(&self, subject: &str, action: Action, object: &str) -> bool {
        // casbin takes any name for a holder of itself: a name no subject
        // may have (a role's `#…`) must not reach it as one.
        if check::subject(subject).is_err() {
            return false;
        }
        match self.enforcer.enforce((subject, action.name(), object)) {
            Ok(allowed) => allowed,
            Err(error) => {
                tracing::warn!(%error, subject, action = action.name(), object, "casbin failed to evaluate a request; refused");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::check::{CLUSTER_ROLES, MODULE_ROLES};

    fn rule(subject: &str, role: &str, pattern: Option<&str>) -> AccessRule {
        AccessRule {
            subject: subject.to_owned(),
            role: role.to_owned(),
            module_pattern: pattern.map(str::to_owned),
        }
    }

    #[test]
    fn every_role_of_the_roles_file_is_known_and_every_action_named() {
        let names: Vec<&str> = Action::ALL.iter().map(|action| action.name()).collect();
        for [role, action, object] in role_permissions() {
            assert!(
                CLUSTER_ROLES.contains(&role) || MODULE_ROLES.contains(&role),
                "{role}"
            );
            assert!(
                action == "*" || action.ends_with(".*") || names.contains(&action),
                "{action}"
            );
            assert!(object == "*" || object == "{pattern}", "{object}");
        }
    }

    #[test]
    fn roles_allow_what_access_proto_says() {
        use Action::*;
        let policy = Policy::new(&[
            rule("admin", "cluster_admin", None),
            rule("ops", "cluster_operator", None),
            rule("view", "cluster_viewer", None),
            rule("dep", "module_deployer", Some("bank-*")),
            rule("app", "module_invoker", Some("bank-*")),
            rule("reader", "module_querier", Some("counter")),
        ]);
        let rows: &[(&str, Action, &str, bool)] = &[
            ("admin", AccessAdmin, CLUSTER_OBJECT, true),
            ("admin", ModuleInvoke, "anything", true),
            ("ops", ClusterMembership, CLUSTER_OBJECT, true),
            ("ops", ClusterSettings, CLUSTER_OBJECT, true),
            ("ops", ModuleDeploy, "counter", true),
            ("ops", ModuleInvoke, "counter", false),
            ("ops", AccessAdmin, CLUSTER_OBJECT, false),
            ("view", ClusterView, CLUSTER_OBJECT, true),
            ("view", ModuleGet, "counter", true),
            ("view", ClusterSnapshot, CLUSTER_OBJECT, false),
            ("view", ModuleQuery, "counter", false),
            ("dep", ModuleDeploy, "bank-eu", true),
            ("dep", ModuleRemove, "bank-eu", true),
            ("dep", ModuleDeploy, "counter", false),
            ("dep", ModuleInvoke, "bank-eu", false),
            ("app", ModuleInvoke, "bank-eu", true),
            ("app", ModuleQuery, "bank-eu", true),
            ("app", SessionOpen, CLUSTER_OBJECT, true),
            ("app", ModuleInvoke, "bank", false),
            ("app", ModuleInvoke, "counter", false),
            ("app", ClusterView, CLUSTER_OBJECT, false),
            ("reader", ModuleQuery, "counter", true),
            ("reader", ModuleInvoke, "counter", false),
            ("reader", SessionOpen, CLUSTER_OBJECT, false),
            ("nobody", ModuleGet, "counter", false),
            // A subject named like a role holds nothing by it.
            ("cluster_admin", AccessAdmin, CLUSTER_OBJECT, false),
            ("module_invoker:bank-*", ModuleInvoke, "bank-eu", false),
            ("#cluster_admin", AccessAdmin, CLUSTER_OBJECT, false),
        ];
        for &(subject, action, object, allowed) in rows {
            assert_eq!(
                policy.allows(subject, action, object),
                allowed,
                "{subject} {action:?} {object}"
            );
        }
    }
}
