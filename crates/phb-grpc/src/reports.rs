//! The commissioners' reports on the wire: GetSpendingSummary and
//! GetQuarterlyReturn (docs/reports.md). Checks the arguments and the
//! caller's scope, asks the read model's `Reports` for the figures and
//! converts them. The server's clock enters here only, to say whether a
//! quarter is complete.

use crate::status;
use phb_domain::event::{parse_date, Date};
use phb_domain::projections::reports::{Quarter, QuarterlyReturn, SpendLine, SpendingSummary};
use phb_domain::{ReadModel, Reader, Role};
use phb_proto::v1 as pb;
use tonic::Status;

/// Checks `commissioner_id`: required, an id.
fn commissioner_id(id: &str) -> Result<(), Status> {
    if id.is_empty() {
        return Err(status::invalid(
            "commissioner_id",
            "commissioner_id is required: the commissioner whose figures you want (a commissioner may ask only for itself)",
        ));
    }
    phb_domain::event::check_id("commissioner_id", id, phb_domain::event::MAX_ID_LEN)
        .map_err(|r| status::from_reject(&r))
}

/// Who may read `commissioner`'s reports: the commissioner itself,
/// auditors and root.
fn check_scope(reader: Reader<'_>, commissioner: &str) -> Result<(), Status> {
    match reader {
        Reader::Root => Ok(()),
        Reader::Organisation(o) if o.has(Role::Auditor) => Ok(()),
        Reader::Organisation(o) if o.has(Role::Commissioner) && o.id == commissioner => Ok(()),
        Reader::Organisation(o) if o.has(Role::Commissioner) => Err(Status::permission_denied(format!(
            "{:?} may not read the reports of commissioner {commissioner:?}; a commissioner reads its own",
            o.id
        ))),
        Reader::Organisation(o) => Err(Status::permission_denied(format!(
            "{:?} may not read commissioners' reports: the commissioner itself, auditors and root read them",
            o.id
        ))),
    }
}

fn date(field: &str, s: &str) -> Result<Date, Status> {
    parse_date(field, s).map_err(|r| status::from_reject(&r))
}

use phb_domain::wire::flag_code_pb as code_pb;

fn lines_pb(lines: Vec<SpendLine>) -> Vec<pb::SpendLine> {
    lines
        .into_iter()
        .map(|l| pb::SpendLine {
            key: l.key,
            amount: l.amount.to_string(),
            share: l.share,
            budgets: l.budgets,
        })
        .collect()
}

fn summary_pb(
    req: &pb::GetSpendingSummaryRequest,
    s: SpendingSummary,
) -> pb::GetSpendingSummaryResponse {
    pb::GetSpendingSummaryResponse {
        commissioner_id: req.commissioner_id.clone(),
        from: req.from.clone(),
        to: req.to.clone(),
        total_spent: s.total_spent.to_string(),
        by_category: lines_pb(s.by_category),
        by_management: lines_pb(s.by_management),
        by_sector: lines_pb(s.by_sector),
        outside_nhs_amount: s.outside_nhs_amount.to_string(),
        outside_nhs_share: s.outside_nhs_share,
        surplus_budgets: s.surplus_budgets,
        surplus_held: s.surplus_held.to_string(),
        open_flags: s
            .open_flags
            .into_iter()
            .map(|(code, count)| pb::FlagCount {
                code: code_pb(code) as i32,
                count,
            })
            .collect(),
        head_sequence: s.head_sequence,
    }
}

fn return_pb(
    req: &pb::GetQuarterlyReturnRequest,
    r: QuarterlyReturn,
    complete: bool,
) -> pb::GetQuarterlyReturnResponse {
    pb::GetQuarterlyReturnResponse {
        commissioner_id: req.commissioner_id.clone(),
        quarter: req.quarter.clone(),
        year_start: r.year_start.to_string(),
        quarter_end: r.quarter_end.to_string(),
        as_of_sequence: r.as_of_sequence,
        complete,
        people_year_to_date: r.people_year_to_date,
        people_active_at_quarter_end: r.people_active_at_quarter_end,
        spend_year_to_date: r.spend_year_to_date.to_string(),
        rows: r
            .rows
            .into_iter()
            .map(|row| pb::ReturnRow {
                dimension: row.dimension.to_string(),
                value: row.value.to_string(),
                people_year_to_date: row.people_year_to_date,
                people_active_at_quarter_end: row.people_active_at_quarter_end,
                spend_year_to_date: row.spend_year_to_date.to_string(),
            })
            .collect(),
    }
}

/// GetSpendingSummary for `reader_id` (authenticated) on `view`.
pub fn spending_summary(
    view: &ReadModel,
    reader_id: &str,
    req: &pb::GetSpendingSummaryRequest,
) -> Result<pb::GetSpendingSummaryResponse, Status> {
    commissioner_id(&req.commissioner_id)?;
    let from = date("from", &req.from)?;
    let to = date("to", &req.to)?;
    if from > to {
        return Err(status::invalid(
            "to",
            &format!("to {to} is before from {from}; give the first and last day of the range"),
        ));
    }
    let reader = view
        .reader(reader_id)
        .ok_or_else(|| Status::unauthenticated("caller is no longer registered"))?;
    check_scope(reader, &req.commissioner_id)?;
    let s = view.reports().spending_summary(
        &req.commissioner_id,
        from,
        to,
        view.flags(),
        view.balances(),
        view.head().sequence,
    );
    Ok(summary_pb(req, s))
}

/// GetQuarterlyReturn for `reader_id` (authenticated) on `view`; `today`
/// is the server's UTC date (is the quarter over?).
pub fn quarterly_return(
    view: &ReadModel,
    reader_id: &str,
    req: &pb::GetQuarterlyReturnRequest,
    today: Date,
) -> Result<pb::GetQuarterlyReturnResponse, Status> {
    commissioner_id(&req.commissioner_id)?;
    let quarter = Quarter::parse(&req.quarter).ok_or_else(|| {
        status::invalid(
            "quarter",
            &format!(
                "quarter {} is not a quarter of an NHS financial year: \"YYYYQn\", the year the financial year starts in and n from 1 to 4 (\"2026Q3\" is October to December 2026)",
                phb_domain::error::quote(&req.quarter)
            ),
        )
    })?;
    let reader = view
        .reader(reader_id)
        .ok_or_else(|| Status::unauthenticated("caller is no longer registered"))?;
    check_scope(reader, &req.commissioner_id)?;
    let r = view
        .reports()
        .quarterly_return(&req.commissioner_id, quarter);
    let complete = today > r.quarter_end;
    Ok(return_pb(req, r, complete))
}
