//! Statement rows kept on disk, so memory is bounded by the number of
//! budgets rather than of entries (ARCHITECTURE.md, "phb-engine").
//!
//! The `Statements` projection makes a row per entry on a budget as it
//! folds (pure, in memory). After each group's fold the writer hands the
//! group's rows to the store as derived records (`Store::put_derived`,
//! written on the index thread behind the acknowledgement, with the
//! watermark at the group's head) and tells the projection to forget the
//! rows the store already holds (`derived_through`). A reader of a
//! statement takes the budget's resident rows and `forgotten_through`
//! under the view's lock, and reads the forgotten ones from the store
//! (`read`): a row is only forgotten once sled has it, so the two together
//! are always the whole statement.
//!
//! The rows are derived data like the index: a rebuilt index starts
//! without them (watermark 0), and a snapshot whose forgotten rows are
//! beyond the watermark does not fit (`snapshot::load`), so the start
//! replays further and puts the rows again (`open`). A stored row's bytes
//! are a function of the log alone, so putting one twice is harmless.

use phb_domain::event::Event;
use phb_domain::projections::StatementRow;
use phb_domain::projections::{decode_statement_row, encode_statement_row, statement_row_key};
use phb_domain::ReadModel;
use phb_store::{LogReader, Store, StoreError, MAX_DERIVED_RECORDS};
use std::collections::VecDeque;

/// Which rows to forget once the store holds a sequence.
enum Forget {
    /// The rows of these budgets (a group's).
    Budgets(Vec<String>),
    /// Every budget's (after the rows put at a start).
    All,
}

/// The rows handed to the store and not yet forgotten, by the sequence the
/// store's watermark must reach first. At most one item per group the
/// index thread has not applied (its queue is bounded), plus one at start.
#[derive(Default)]
pub(crate) struct RowKeeper {
    waiting: VecDeque<(u64, Forget)>,
}

impl RowKeeper {
    /// At a start: forgets the rows the store holds and puts the resident
    /// rows it lacks (all of them after a full replay), in bounded batches.
    pub(crate) fn open(store: &Store, read: &mut ReadModel) -> RowKeeper {
        let head = read.head().sequence;
        let through = store.derived_through().min(head);
        read.forget_all_statement_rows(through);
        let mut keeper = RowKeeper::default();
        if through == head {
            return keeper;
        }
        let mut batch = Vec::new();
        let mut put = 0usize;
        for (budget_id, row) in read.statements().resident_after(through) {
            batch.push(record(budget_id, row));
            if batch.len() == MAX_DERIVED_RECORDS {
                put += batch.len();
                store.put_derived(std::mem::take(&mut batch), None);
            }
        }
        put += batch.len();
        store.put_derived(batch, Some(head));
        tracing::info!(
            rows = put,
            from = through + 1,
            through = head,
            "storing statement rows the index lacks"
        );
        keeper.waiting.push_back((head, Forget::All));
        keeper
    }

    /// After a group's fold, under the view's write lock: the group's rows
    /// (the entries `committed`, budget events only) as derived records to
    /// put, and every waiting row the store now holds forgotten.
    pub(crate) fn after_fold(
        &mut self,
        view: &mut ReadModel,
        committed: &[(u64, &Event)],
        store_through: u64,
    ) -> Vec<(Vec<u8>, Vec<u8>)> {
        while let Some((at, _)) = self.waiting.front() {
            if *at > store_through {
                break;
            }
            let Some((at, forget)) = self.waiting.pop_front() else {
                break;
            };
            match forget {
                Forget::All => view.forget_all_statement_rows(at),
                Forget::Budgets(ids) => {
                    for id in ids {
                        view.forget_statement_rows(&id, at);
                    }
                }
            }
        }
        let mut records = Vec::new();
        let mut budgets = Vec::new();
        for (sequence, event) in committed {
            if event.kind.is_organisation_event() {
                continue;
            }
            if let Some(row) = view.statements().row(&event.budget_id, *sequence) {
                records.push(record(&event.budget_id, row));
                if budgets.last() != Some(&event.budget_id) {
                    budgets.push(event.budget_id.clone());
                }
            }
        }
        if let Some((last, _)) = committed.last() {
            self.waiting.push_back((*last, Forget::Budgets(budgets)));
        }
        records
    }
}

fn record(budget_id: &str, row: &StatementRow) -> (Vec<u8>, Vec<u8>) {
    let mut value = Vec::with_capacity(128);
    encode_statement_row(row, &mut value);
    (statement_row_key(budget_id, row.sequence), value)
}

/// Up to `max` of `budget_id`'s stored rows with sequence in
/// `after + 1 ..= through`, in sequence order.
pub(crate) fn read(
    reader: &LogReader,
    budget_id: &str,
    after: u64,
    through: u64,
    max: usize,
) -> Result<Vec<StatementRow>, StoreError> {
    if after >= through || max == 0 {
        return Ok(Vec::new());
    }
    let from = statement_row_key(budget_id, after + 1);
    let to = statement_row_key(budget_id, through);
    let bad = |what: String| {
        StoreError::Io(
            format!("reading the statement of {budget_id:?}"),
            std::io::Error::other(what),
        )
    };
    reader
        .derived(&from, &to, max)?
        .into_iter()
        .map(|(key, value)| {
            let row = decode_statement_row(&value).map_err(|e| bad(e.to_string()))?;
            if key[..] != statement_row_key(budget_id, row.sequence)[..] {
                return Err(bad(format!(
                    "a row stored under the wrong key ({})",
                    row.sequence
                )));
            }
            Ok(row)
        })
        .collect()
}
