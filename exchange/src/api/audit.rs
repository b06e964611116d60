//! `/v1/audit`: the ledger's invariants checked over every account, entry and transfer.

use std::collections::HashMap;

use serde::Serialize;
use warp::http::StatusCode;

use super::{admin_only, json, Answer, ApiState, Principal};
use crate::model::{Account, Entry, TransferState};
use crate::store::Ledger;

/// Entries read per statement call while auditing.
const PAGE: usize = 1000;

/// What the audit found.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Audit {
    /// Must be 0: every credit is someone's debit.
    pub sum_of_balances: i128,
    pub accounts: usize,
    pub committed: usize,
    pub pending: usize,
    pub rejected: usize,
    pub refused: usize,
    /// Transfers started but not finished (multi-step backends); empty after recovery.
    pub in_flight: Vec<String>,
    /// Every broken invariant, in words.
    pub problems: Vec<String>,
    /// True when `problems` is empty and the sum is 0.
    pub ok: bool,
}

/// Checks every invariant of the ledger.
pub async fn run(ledger: &dyn Ledger) -> crate::store::Result<Audit> {
    let accounts = ledger.accounts().await?;
    let transfers = ledger.transfers().await?;
    let mut audit = Audit {
        accounts: accounts.len(),
        in_flight: ledger.in_flight().await?,
        ..Audit::default()
    };
    // transfer id -> (account, amount) for every statement entry.
    let mut seen: HashMap<String, Vec<(String, i64)>> = HashMap::new();
    for account in &accounts {
        audit.sum_of_balances += i128::from(account.balance);
        let entries = all_entries(ledger, account).await?;
        check_account(account, &entries, &mut audit.problems);
        for e in entries {
            seen.entry(e.transfer)
                .or_default()
                .push((account.code.clone(), e.amount));
        }
    }
    for t in &transfers {
        let found = seen.remove(&t.id).unwrap_or_default();
        match t.state {
            TransferState::Committed => {
                audit.committed += 1;
                let mut want = vec![(t.payer.clone(), -t.amount), (t.payee.clone(), t.amount)];
                let mut got = found;
                want.sort();
                got.sort();
                if got != want {
                    audit.problems.push(format!(
                        "committed transfer {} has entries {got:?}, expected {want:?}",
                        t.id
                    ));
                }
            }
            state => {
                match state {
                    TransferState::Pending => audit.pending += 1,
                    TransferState::Rejected => audit.rejected += 1,
                    _ => audit.refused += 1,
                }
                if !found.is_empty() && !audit.in_flight.contains(&t.id) {
                    audit.problems.push(format!(
                        "transfer {} is {state:?} but has entries {found:?}",
                        t.id
                    ));
                }
            }
        }
    }
    for (id, entries) in seen {
        if !audit.in_flight.contains(&id) {
            audit
                .problems
                .push(format!("entries {entries:?} name unknown transfer {id}"));
        }
    }
    if audit.sum_of_balances != 0 && audit.in_flight.is_empty() {
        audit
            .problems
            .push(format!("balances sum to {}, not 0", audit.sum_of_balances));
    }
    audit.ok = audit.problems.is_empty() && audit.in_flight.is_empty();
    Ok(audit)
}

async fn all_entries(ledger: &dyn Ledger, account: &Account) -> crate::store::Result<Vec<Entry>> {
    let mut entries = Vec::new();
    loop {
        let after = entries.last().map_or(0, |e: &Entry| e.seq);
        let page = ledger.statement(&account.code, after, PAGE).await?;
        if page.is_empty() {
            return Ok(entries);
        }
        entries.extend(page);
    }
}

/// The running balance adds up, stays within limits and ends at the account's balance.
fn check_account(account: &Account, entries: &[Entry], problems: &mut Vec<String>) {
    let code = &account.code;
    let mut balance = 0i64;
    for (i, e) in entries.iter().enumerate() {
        if e.seq != i as u64 + 1 {
            problems.push(format!(
                "{code}: entry {} found at position {}",
                e.seq,
                i + 1
            ));
        }
        balance = balance.saturating_add(e.amount);
        if e.balance != balance {
            problems.push(format!(
                "{code}: entry {} says balance {}, the amounts add up to {balance}",
                e.seq, e.balance
            ));
        }
        if !account.within_limits(e.balance) {
            problems.push(format!(
                "{code}: entry {} balance {} lies beyond the account's limits",
                e.seq, e.balance
            ));
        }
    }
    if balance != account.balance || entries.len() as u64 != account.entries {
        problems.push(format!(
            "{code}: balance {} with {} entries, its statement adds up to {balance} over {}",
            account.balance,
            account.entries,
            entries.len()
        ));
    }
}

pub(super) async fn audit(state: &ApiState, who: &Principal) -> Answer {
    admin_only(who)?;
    let audit = state.db("audit", run(state.ledger.as_ref())).await?;
    Ok(json(StatusCode::OK, &audit))
}
