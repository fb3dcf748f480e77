//! The bank example under the same faults as the kv histories: clients move
//! money between shared accounts while others pay, one unit at a time, from
//! an account of their own into another of their own. At the end the money
//! is all there (the balances sum to what was opened, none above it), and
//! each client's own pair tells how often its payments were applied: at
//! least once for every acknowledged payment, never more than the payments
//! that may have been (acknowledged or of unknown outcome). A retry applied
//! twice, or an acknowledged payment lost, breaks that count.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmraft::client::{Client, ClientError, Consistency};

use super::Random;

/// Accounts every bank client moves money between.
const SHARED: [&str; 4] = ["a", "b", "c", "d"];
const SHARED_BALANCE: u64 = 100;
/// What each client's own paying account opens with: more than any run
/// pays from it, so a payment is never refused for want of funds.
const SOURCE_BALANCE: u64 = 1_000_000;

fn source(client: usize) -> String {
    format!("source-{client}")
}

fn sink(client: usize) -> String {
    format!("sink-{client}")
}

/// What one client's payments came to.
#[derive(Debug, Default)]
pub struct Payments {
    /// Payments the cluster answered, with the balance it said the paid
    /// account reached: each a different one.
    acknowledged: Vec<u64>,
    /// Payments whose outcome the client cannot know.
    unknown: u64,
}

/// The record of every bank client.
#[derive(Debug, Default)]
pub struct Ledger {
    payments: Mutex<Vec<Payments>>,
    /// Transfers between the shared accounts that were answered: refused
    /// for want of funds, or made.
    transfers_answered: Mutex<(u64, u64)>,
}

/// Opens the shared accounts and each client's pair, through `client`,
/// until each is open (a retry may find it already opened by a first
/// attempt whose answer was lost).
pub async fn open_accounts(client: &Client, clients: usize) {
    let mut accounts: Vec<(String, u64)> = SHARED
        .iter()
        .map(|name| (name.to_string(), SHARED_BALANCE))
        .collect();
    for number in 0..clients {
        accounts.push((source(number), SOURCE_BALANCE));
        accounts.push((sink(number), 0));
    }
    for (account, balance) in accounts {
        let body = serde_json::json!({"op": "open", "account": account, "balance": balance});
        let opened = client.invoke("bank", body.to_string().as_bytes()).await;
        assert!(
            opened.is_ok()
                || opened
                    .as_ref()
                    .is_err_and(|error| error.to_string().contains("already exists")),
            "opening {account}: {opened:?}"
        );
    }
}

/// What was opened in all.
fn opened_total(clients: usize) -> u64 {
    SHARED_BALANCE * SHARED.len() as u64 + SOURCE_BALANCE * clients as u64
}

/// Whether an error of an invoke means it may have been applied.
fn may_have_applied(error: &ClientError) -> bool {
    match error {
        // Nothing was sent.
        ClientError::Unreachable { .. } => false,
        // Applied and refused by the module: it changed nothing.
        ClientError::Status { message, .. } if message.contains("insufficient funds") => false,
        _ => true,
    }
}

/// One bank client: transfers between the shared accounts and payments
/// into its own sink, on random nodes, until `stop`.
pub async fn client_loop(
    number: usize,
    clients: Vec<Client>,
    ledger: Arc<Ledger>,
    stop: Arc<AtomicBool>,
) {
    let mut random = Random(0x51_7cc1_b727_220a ^ ((number as u64 + 1) * 0x2545_f491));
    let mut payments = Payments::default();
    while !stop.load(Ordering::Relaxed) {
        let client = &clients[random.below(clients.len() as u64) as usize];
        let paying = random.below(3) == 0;
        let body = if paying {
            serde_json::json!({"op": "transfer", "from": source(number), "to": sink(number), "amount": 1})
        } else {
            let from = random.below(SHARED.len() as u64) as usize;
            let to = (from + 1 + random.below(SHARED.len() as u64 - 1) as usize) % SHARED.len();
            serde_json::json!({
                "op": "transfer",
                "from": SHARED[from],
                "to": SHARED[to],
                "amount": 1 + random.below(40),
            })
        }
        .to_string();
        // Now and then the caller gives up mid-call, as a killed client would.
        let cut_off = (random.below(20) == 0).then(|| Duration::from_millis(1 + random.below(30)));
        let attempt = client.invoke("bank", body.as_bytes());
        let result = match cut_off {
            Some(after) => tokio::time::timeout(after, attempt).await.ok(),
            None => Some(attempt.await),
        };
        match (paying, result) {
            (true, Some(Ok(answer))) => {
                let answer: serde_json::Value = serde_json::from_slice(&answer.output).unwrap();
                payments
                    .acknowledged
                    .push(answer["to_balance"].as_u64().expect("a transfer's answer"));
            }
            (true, Some(Err(error))) if !may_have_applied(&error) => {}
            (true, _) => payments.unknown += 1,
            (false, Some(Ok(_))) => ledger.transfers_answered.lock().unwrap().1 += 1,
            (false, Some(Err(error))) if error.to_string().contains("insufficient funds") => {
                ledger.transfers_answered.lock().unwrap().0 += 1;
            }
            (false, _) => {}
        }
    }
    let mut all = ledger.payments.lock().unwrap();
    if all.len() <= number {
        all.resize_with(number + 1, Payments::default);
    }
    all[number] = payments;
}

async fn balance(client: &Client, account: &str) -> u64 {
    let body = serde_json::json!({"op": "balance", "account": account}).to_string();
    let answer = client
        .query("bank", body.as_bytes(), Consistency::Linearizable)
        .await
        .unwrap_or_else(|error| panic!("balance of {account}: {error}"));
    let answer: serde_json::Value = serde_json::from_slice(&answer.output).unwrap();
    answer["balance"].as_u64().expect("a balance")
}

/// Checks the bank once the traffic stopped and the replicas converged,
/// and returns a line saying what was checked.
pub async fn check(client: &Client, ledger: &Ledger, clients: usize) -> String {
    let mut sum = 0u64;
    let total = opened_total(clients);
    for account in SHARED {
        let balance = balance(client, account).await;
        assert!(
            balance <= total,
            "{account} holds {balance}, above the {total} opened"
        );
        sum += balance;
    }
    let payments = std::mem::take(&mut *ledger.payments.lock().unwrap());
    assert_eq!(payments.len(), clients, "every bank client reported");
    let (mut acknowledged, mut unknown) = (0u64, 0u64);
    for (number, paid) in payments.iter().enumerate() {
        let source_balance = balance(client, &source(number)).await;
        let sink_balance = balance(client, &sink(number)).await;
        sum += source_balance + sink_balance;
        let answered = paid.acknowledged.len() as u64;
        assert!(
            answered <= sink_balance && sink_balance <= answered + paid.unknown,
            "client {number}: {answered} payments acknowledged and {} of unknown outcome, but {sink_balance} applied",
            paid.unknown
        );
        let distinct: BTreeSet<_> = paid.acknowledged.iter().collect();
        assert_eq!(
            distinct.len(),
            paid.acknowledged.len(),
            "client {number}: two acknowledged payments reported the same balance"
        );
        assert!(
            paid.acknowledged
                .iter()
                .all(|reached| *reached <= sink_balance),
            "client {number}: a payment reported a balance above the final {sink_balance}"
        );
        assert_eq!(
            source_balance + sink_balance,
            SOURCE_BALANCE,
            "client {number}: its own pair gained or lost money"
        );
        acknowledged += answered;
        unknown += paid.unknown;
    }
    assert_eq!(
        sum, total,
        "the balances sum to {sum}, but {total} was opened"
    );
    let (refused, made) = *ledger.transfers_answered.lock().unwrap();
    format!(
        "bank: {total} held in {} accounts; {acknowledged} payments acknowledged, {unknown} unknown, applied exactly once; {made} transfers made, {refused} refused for want of funds",
        SHARED.len() + 2 * clients
    )
}
