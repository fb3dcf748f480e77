//! The replicated access state: role bindings (`access`), tokens
//! (`tokens`, by id, the secret's hash only) and the policy revision (the
//! log index of the last access change, in `settings`). Applying a change,
//! checking a command again at apply, and reading it all for the edge
//! ([`load`]).

use redb::{ReadTransaction, ReadableTable, WriteTransaction};

use super::apply::decode;
use super::state::{ACCESS, ACCESS_REVISION, SETTINGS, TOKENS};
use crate::auth::AccessView;
use crate::auth::policy::{Policy, command_permission};
use crate::command::check::CLUSTER_ADMIN;
use crate::command::{AccessChange, AccessRule, Authorized, Refusal, Response, TokenGrant, codec};

/// The policy revision recorded (0: no access change yet).
pub(crate) fn revision(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
) -> Result<u64, redb::Error> {
    table
        .get(ACCESS_REVISION)?
        .map(|bytes| decode(bytes.value()))
        .transpose()
        .map(Option::unwrap_or_default)
}

/// The whole access state, for the edge.
pub(crate) fn load(txn: &ReadTransaction) -> Result<AccessView, redb::Error> {
    let revision = revision(&txn.open_table(SETTINGS)?)?;
    let mut rules = Vec::new();
    for item in txn.open_table(ACCESS)?.iter()? {
        let (key, _) = item?;
        rules.push(decode::<AccessRule>(key.value())?);
    }
    rules.sort();
    let mut tokens = Vec::new();
    for item in txn.open_table(TOKENS)?.iter()? {
        let (_, value) = item?;
        tokens.push(decode::<TokenGrant>(value.value())?);
    }
    Ok(AccessView::new(revision, rules, tokens))
}

/// Applies an access change at log index `index`: answers whether it
/// changed anything, and moves the revision to `index` when it did.
pub(crate) fn apply_change(
    txn: &WriteTransaction,
    index: u64,
    change: &AccessChange,
) -> Result<Response, redb::Error> {
    let mut rules = txn.open_table(ACCESS)?;
    let mut tokens = txn.open_table(TOKENS)?;
    let changed = match change {
        AccessChange::Grant(rule) => rules
            .insert(codec::encode(rule).as_slice(), [].as_slice())?
            .is_none(),
        AccessChange::Revoke(rule) => rules.remove(codec::encode(rule).as_slice())?.is_some(),
        AccessChange::CreateToken(grant) => {
            if tokens.get(grant.token_id.as_bytes())?.is_some() {
                return Ok(Response::Refused(Refusal::InvalidCommand(format!(
                    "a token of id `{}` exists already",
                    grant.token_id
                ))));
            }
            tokens.insert(grant.token_id.as_bytes(), codec::encode(grant).as_slice())?;
            true
        }
        AccessChange::RevokeToken { token_id } => tokens.remove(token_id.as_bytes())?.is_some(),
        AccessChange::Bootstrap(grant) => {
            if tokens.first()?.is_some() || rules.first()?.is_some() {
                false
            } else {
                tokens.insert(grant.token_id.as_bytes(), codec::encode(grant).as_slice())?;
                let admin = AccessRule {
                    subject: grant.subject.clone(),
                    role: CLUSTER_ADMIN.to_owned(),
                    module_pattern: None,
                };
                rules.insert(codec::encode(&admin).as_slice(), [].as_slice())?;
                true
            }
        }
    };
    if changed {
        txn.open_table(SETTINGS)?
            .insert(ACCESS_REVISION, codec::encode(&index).as_slice())?;
    }
    Ok(Response::AccessChanged { changed })
}

/// Checks again, at apply, a command authorised at the edge: when the
/// policy changed since its revision, its token must still be held and
/// its caller still hold the permission it needs, by the policy in force
/// now (`current_revision`, as the entry read it). `None` when it may
/// apply; the refusal otherwise. A pure function of the state, so every
/// replica answers alike.
pub(crate) fn recheck(
    txn: &WriteTransaction,
    current_revision: u64,
    caller: &str,
    authorized: &Authorized,
) -> Result<Option<Refusal>, redb::Error> {
    if authorized.revision >= current_revision {
        return Ok(None);
    }
    if let Some(token_id) = &authorized.token_id
        && txn.open_table(TOKENS)?.get(token_id.as_bytes())?.is_none()
    {
        return Ok(Some(Refusal::TokenRevoked {
            token_id: token_id.clone(),
        }));
    }
    let Some((action, object)) = command_permission(&authorized.command) else {
        return Ok(None);
    };
    // The caller's bindings only: keys are encoded rules, which begin with
    // the encoded subject (length-prefixed, so no other subject shares it).
    let prefix = codec::encode(caller);
    let mut held = Vec::new();
    for item in txn.open_table(ACCESS)?.range(prefix.as_slice()..)? {
        let (key, _) = item?;
        if !key.value().starts_with(&prefix) {
            break;
        }
        held.push(decode::<AccessRule>(key.value())?);
    }
    if Policy::new(&held).allows(caller, action, object) {
        return Ok(None);
    }
    Ok(Some(Refusal::PermissionDenied {
        subject: caller.to_owned(),
        action: action.describe(object),
    }))
}
