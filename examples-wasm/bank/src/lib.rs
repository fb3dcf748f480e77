//! The bank example: accounts with non-negative balances and transfers between them,
//! where a failed command changes nothing.
//!
//! Protocol (JSON; `A`, `B` account names, 1 to 256 bytes; amounts are u64):
//!
//! | call | input | output |
//! |---|---|---|
//! | apply | `{"op":"open","account":A,"balance":N}` | `{"balance":N}` |
//! | apply | `{"op":"transfer","from":A,"to":B,"amount":N}` | `{"from_balance":X,"to_balance":Y}`, both after the transfer |
//! | query | `{"op":"balance","account":A}` | `{"balance":N}` |
//! | query | `{"op":"total"}` | `{"total":N}`, the sum of all balances |
//!
//! Guest errors (the state is untouched): opening an account that exists; a transfer
//! from or to a missing account, of zero, to the same account, or of more than the
//! source holds; a balance query for a missing account; an open that would take the
//! total past u64.
//!
//! The total is kept under its own key, updated by `open` (a transfer does not change
//! it), so `total` costs one read however many accounts there are.

#![no_std]

extern crate alloc;

use alloc::format;
use alloc::string::String;

use serde::{Deserialize, Serialize};
use wasmraft_guest::{Context, Kv, Result, StateMachine, bail, ensure};

/// The longest account name, in bytes.
pub const ACCOUNT_NAME_MAX_BYTES: usize = 256;
/// Where the sum of all balances lives.
const TOTAL_KEY: &str = "total";

/// The key of an account's balance (a JSON number).
fn account_key(account: &str) -> String {
    format!("account/{account}")
}

/// The state machine.
#[derive(Debug)]
pub struct Bank;

/// A write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    Open {
        account: String,
        balance: u64,
    },
    Transfer {
        from: String,
        to: String,
        amount: u64,
    },
}

/// The response to a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Response {
    /// `transfer`: both balances after it.
    Transferred { from_balance: u64, to_balance: u64 },
    /// `open`: the new account's balance.
    Opened { balance: u64 },
}

/// A read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Query {
    Balance { account: String },
    Total,
}

/// The response to a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum QueryResponse {
    Balance { balance: u64 },
    Total { total: u64 },
}

fn check_account_name(account: &str) -> Result<()> {
    ensure!(!account.is_empty(), "account name must not be empty");
    ensure!(
        account.len() <= ACCOUNT_NAME_MAX_BYTES,
        "account name is {} bytes, the limit is {ACCOUNT_NAME_MAX_BYTES}",
        account.len()
    );
    Ok(())
}

fn balance(kv: &Kv, account: &str) -> Result<u64> {
    check_account_name(account)?;
    match kv.get_json(account_key(account))? {
        Some(balance) => Ok(balance),
        None => bail!("account {account:?} does not exist"),
    }
}

fn total(kv: &Kv) -> Result<u64> {
    Ok(kv.get_json(TOTAL_KEY)?.unwrap_or(0))
}

impl StateMachine for Bank {
    type Command = Command;
    type Response = Response;
    type Query = Query;
    type QueryResponse = QueryResponse;

    fn apply(context: &Context, kv: &mut Kv, command: Command) -> Result<Response> {
        match command {
            Command::Open { account, balance } => {
                check_account_name(&account)?;
                let key = account_key(&account);
                ensure!(!kv.contains(&key), "account {account:?} already exists");
                let Some(new_total) = total(kv)?.checked_add(balance) else {
                    bail!("opening {account:?} with {balance} would overflow the bank's total");
                };
                kv.set_json(&key, &balance)?;
                kv.set_json(TOTAL_KEY, &new_total)?;
                wasmraft_guest::debug!("{:?} opened {account:?} with {balance}", context.caller());
                Ok(Response::Opened { balance })
            }
            Command::Transfer { from, to, amount } => {
                ensure!(amount > 0, "amount must be positive");
                ensure!(from != to, "cannot transfer from {from:?} to itself");
                let from_balance = balance(kv, &from)?;
                let to_balance = balance(kv, &to)?;
                let Some(from_balance) = from_balance.checked_sub(amount) else {
                    bail!(
                        "insufficient funds: {from:?} has {from_balance}, the transfer needs {amount}"
                    );
                };
                // Cannot overflow: the total, which bounds every balance, fits in u64.
                let Some(to_balance) = to_balance.checked_add(amount) else {
                    bail!("balance of {to:?} would overflow");
                };
                kv.set_json(account_key(&from), &from_balance)?;
                kv.set_json(account_key(&to), &to_balance)?;
                Ok(Response::Transferred {
                    from_balance,
                    to_balance,
                })
            }
        }
    }

    fn query(_context: &Context, kv: &Kv, query: Query) -> Result<QueryResponse> {
        match query {
            Query::Balance { account } => Ok(QueryResponse::Balance {
                balance: balance(kv, &account)?,
            }),
            Query::Total => Ok(QueryResponse::Total { total: total(kv)? }),
        }
    }
}

wasmraft_guest::export!(Bank);

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use alloc::string::ToString;
    use alloc::vec::Vec;
    use wasmraft_guest::Level;
    use wasmraft_guest::serde_json::json;
    use wasmraft_guest::testing::Harness;

    fn open(bank: &mut Harness<Bank>, account: &str, balance: u64) {
        let response = bank.apply(&json!({"op":"open","account":account,"balance":balance}));
        assert_eq!(response, Ok(Response::Opened { balance }));
    }

    fn balance_of(bank: &mut Harness<Bank>, account: &str) -> u64 {
        match bank.query(&Query::Balance {
            account: account.to_string(),
        }) {
            Ok(QueryResponse::Balance { balance }) => balance,
            other => panic!("unexpected {other:?}"),
        }
    }

    /// The stored total equals the sum of the stored balances.
    fn assert_total_consistent(bank: &mut Harness<Bank>) {
        let sum: u64 = bank
            .kv()
            .iter()
            .filter(|(key, _)| key.starts_with(b"account/"))
            .map(|(_, value)| wasmraft_guest::serde_json::from_slice::<u64>(value).unwrap())
            .sum();
        assert_eq!(
            bank.query(&Query::Total),
            Ok(QueryResponse::Total { total: sum })
        );
    }

    #[test]
    fn open_transfer_and_read_back() {
        let mut bank = Harness::<Bank>::new();
        open(&mut bank, "alice", 100);
        open(&mut bank, "bob", 5);
        assert_eq!(
            bank.apply_raw(br#"{"op":"transfer","from":"alice","to":"bob","amount":30}"#),
            Ok(br#"{"from_balance":70,"to_balance":35}"#.to_vec())
        );
        assert_eq!(balance_of(&mut bank, "alice"), 70);
        assert_eq!(balance_of(&mut bank, "bob"), 35);
        assert_eq!(
            bank.query_raw(br#"{"op":"total"}"#),
            Ok(br#"{"total":105}"#.to_vec())
        );
        assert_eq!(
            bank.query_raw(br#"{"op":"balance","account":"bob"}"#),
            Ok(br#"{"balance":35}"#.to_vec())
        );
        assert_total_consistent(&mut bank);
    }

    #[test]
    fn a_transfer_can_empty_an_account() {
        let mut bank = Harness::<Bank>::new();
        open(&mut bank, "alice", 10);
        open(&mut bank, "bob", 0);
        let response = bank.apply(&json!({"op":"transfer","from":"alice","to":"bob","amount":10}));
        assert_eq!(
            response,
            Ok(Response::Transferred {
                from_balance: 0,
                to_balance: 10
            })
        );
        assert_total_consistent(&mut bank);
    }

    #[test]
    fn failed_commands_leave_the_state_untouched() {
        let mut bank = Harness::<Bank>::new();
        open(&mut bank, "alice", 100);
        open(&mut bank, "bob", 0);
        let before = bank.kv().clone();
        let cases = [
            (
                json!({"op":"open","account":"alice","balance":1}),
                "account \"alice\" already exists",
            ),
            (
                json!({"op":"transfer","from":"alice","to":"bob","amount":101}),
                "insufficient funds: \"alice\" has 100, the transfer needs 101",
            ),
            (
                json!({"op":"transfer","from":"alice","to":"carol","amount":1}),
                "account \"carol\" does not exist",
            ),
            (
                json!({"op":"transfer","from":"carol","to":"alice","amount":1}),
                "account \"carol\" does not exist",
            ),
            (
                json!({"op":"transfer","from":"alice","to":"alice","amount":1}),
                "cannot transfer from \"alice\" to itself",
            ),
            (
                json!({"op":"transfer","from":"alice","to":"bob","amount":0}),
                "amount must be positive",
            ),
            (
                json!({"op":"open","account":"carol","balance":u64::MAX}),
                "opening \"carol\" with 18446744073709551615 would overflow the bank's total",
            ),
            (
                json!({"op":"open","account":"","balance":1}),
                "account name must not be empty",
            ),
            (
                json!({"op":"open","account":"x".repeat(257),"balance":1}),
                "account name is 257 bytes, the limit is 256",
            ),
            (
                json!({"op":"transfer","from":"alice","to":"bob","amount":-1}),
                "invalid command: invalid value: integer `-1`, expected u64",
            ),
            (
                json!({"op":"withdraw","account":"alice","amount":1}),
                "invalid command: unknown variant `withdraw`, expected `open` or `transfer`",
            ),
        ];
        for (command, expected) in cases {
            let error = bank.apply(&command).unwrap_err();
            // Decoding errors go on with the position (" at line 1 column 45").
            let message = error.guest_message();
            assert!(message.starts_with(expected), "{command}: {message:?}");
            assert_eq!(bank.kv(), &before, "{command} changed the state");
        }
        let error = bank.apply_raw(b"[1,2]").unwrap_err();
        let message = error.guest_message();
        assert!(message.starts_with("invalid command: "), "{message:?}");
        assert_eq!(bank.kv(), &before);
    }

    #[test]
    fn queries_of_missing_accounts_fail() {
        let mut bank = Harness::<Bank>::new();
        assert_eq!(
            bank.query(&Query::Total),
            Ok(QueryResponse::Total { total: 0 })
        );
        let error = bank
            .query(&Query::Balance {
                account: "nobody".into(),
            })
            .unwrap_err();
        assert_eq!(error.guest_message(), "account \"nobody\" does not exist");
    }

    #[test]
    fn many_transfers_keep_the_total() {
        let mut bank = Harness::<Bank>::new();
        let accounts: Vec<_> = (0..5).map(|index| std::format!("acct{index}")).collect();
        for account in &accounts {
            open(&mut bank, account, 1000);
        }
        let mut failures = 0;
        for step in 0..200_u64 {
            let from = &accounts[(step % 5) as usize];
            let to = &accounts[((step * 7 + 1) % 5) as usize];
            let amount = (step * 37) % 700;
            if bank
                .apply(&json!({"op":"transfer","from":from,"to":to,"amount":amount}))
                .is_err()
            {
                failures += 1;
            }
        }
        assert!(failures > 0, "the walk should hit some failing transfers");
        assert_eq!(
            bank.query(&Query::Total),
            Ok(QueryResponse::Total { total: 5000 })
        );
        assert_total_consistent(&mut bank);
    }

    #[test]
    fn open_logs_the_caller() {
        let mut bank = Harness::<Bank>::new();
        bank.caller("alice");
        open(&mut bank, "savings", 1);
        let logs = bank.take_logs();
        assert_eq!(logs.len(), 1);
        assert_eq!(logs[0].level, Level::Debug);
        assert_eq!(logs[0].message, "\"alice\" opened \"savings\" with 1");
    }
}
