//! `phb-ledger report`: the commissioners' reports (docs/reports.md).

use anyhow::Result;
use phb_client::Signer;
use phb_proto::v1 as pb;

/// The reports.
#[derive(clap::Subcommand)]
pub enum Report {
    /// Print a commissioner's quarterly return (the national Personal Health
    /// Budgets collection): people in the year to date and active at the
    /// quarter's end, and spending, in total and by age band, cohort and
    /// management option.
    Quarterly {
        /// Who reads (the commissioner itself, an auditor or "root").
        #[command(flatten)]
        read: crate::ReadAs,
        /// The commissioner whose return it is.
        #[arg(long)]
        commissioner: String,
        /// The quarter of the NHS financial year, "YYYYQn": 2026Q3 is October to December 2026.
        #[arg(long)]
        quarter: String,
        /// Print CSV (a header, the totals, then one row per value) instead of a table.
        #[arg(long)]
        csv: bool,
    },
    /// Print a commissioner's spending summary over a date range
    /// (GetSpendingSummary, docs/reports.md): spent by category,
    /// management option and sector, outside the NHS, budgets in surplus and
    /// what they hold, and open flags by code.
    Spending {
        /// Who reads (the commissioner itself, an auditor or "root").
        #[command(flatten)]
        read: crate::ReadAs,
        /// The commissioner whose spending it is.
        #[arg(long)]
        commissioner: String,
        /// First day, YYYY-MM-DD.
        #[arg(long)]
        from: String,
        /// Last day, YYYY-MM-DD (also the day surplus and open flags are judged at).
        #[arg(long)]
        to: String,
        /// Print one JSON object (amounts as exact decimal strings) instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `report` subcommand.
pub async fn run(report: Report) -> Result<()> {
    match report {
        Report::Quarterly {
            read,
            commissioner,
            quarter,
            csv,
        } => {
            let signer = read.signer()?;
            let r = quarterly(&read.server, &signer, commissioner, quarter).await?;
            crate::out(&if csv { csv_of(&r) } else { table_of(&r) });
            Ok(())
        }
        Report::Spending {
            read,
            commissioner,
            from,
            to,
            json,
        } => {
            let signer = read.signer()?;
            let mut client = crate::connect(&read.server).await?;
            let req = signer.request(
                phb_client::methods::GET_SPENDING_SUMMARY,
                pb::GetSpendingSummaryRequest {
                    commissioner_id: commissioner,
                    from,
                    to,
                },
            );
            let r = client
                .get_spending_summary(req)
                .await
                .map_err(crate::rpc_error)?
                .into_inner();
            if json {
                crate::out_line(&spending_json(&r));
            } else {
                crate::out(&spending_table(&r));
            }
            Ok(())
        }
    }
}

fn lines_json(lines: &[pb::SpendLine]) -> serde_json::Value {
    lines
        .iter()
        .map(|l| {
            serde_json::json!({
                "key": l.key, "amount": l.amount, "share": l.share, "budgets": l.budgets,
            })
        })
        .collect()
}

/// The summary as one JSON object, field names as in the proto.
fn spending_json(r: &pb::GetSpendingSummaryResponse) -> serde_json::Value {
    serde_json::json!({
        "commissioner_id": r.commissioner_id,
        "from": r.from,
        "to": r.to,
        "total_spent": r.total_spent,
        "by_category": lines_json(&r.by_category),
        "by_management": lines_json(&r.by_management),
        "by_sector": lines_json(&r.by_sector),
        "outside_nhs_amount": r.outside_nhs_amount,
        "outside_nhs_share": r.outside_nhs_share,
        "surplus_budgets": r.surplus_budgets,
        "surplus_held": r.surplus_held,
        "open_flags": r.open_flags.iter().map(|f| serde_json::json!({
            "code": pb::FlagCode::try_from(f.code).map(|c| c.as_str_name()).unwrap_or("FLAG_CODE_UNSPECIFIED"),
            "count": f.count,
        })).collect::<Vec<_>>(),
        "head_sequence": r.head_sequence,
    })
}

fn spending_table(r: &pb::GetSpendingSummaryResponse) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "Spending of {} from {} to {} (at sequence {}): {} spent; {} ({} %) outside the NHS; {} budgets in surplus holding {}\n",
        r.commissioner_id,
        r.from,
        r.to,
        r.head_sequence,
        r.total_spent,
        r.outside_nhs_amount,
        r.outside_nhs_share,
        r.surplus_budgets,
        r.surplus_held
    );
    for (title, lines) in [
        ("by category", &r.by_category),
        ("by management option", &r.by_management),
        ("by sector", &r.by_sector),
    ] {
        let _ = writeln!(out, "\n{title}:");
        for l in lines {
            let _ = writeln!(
                out,
                "  {:<32} {:>14} {:>6} %  {:>5} budgets",
                l.key, l.amount, l.share, l.budgets
            );
        }
    }
    out
}

async fn quarterly(
    server: &str,
    signer: &Signer,
    commissioner_id: String,
    quarter: String,
) -> Result<pb::GetQuarterlyReturnResponse> {
    let mut client = crate::connect(server).await?;
    let req = signer.request(
        phb_client::methods::GET_QUARTERLY_RETURN,
        pb::GetQuarterlyReturnRequest {
            commissioner_id,
            quarter,
        },
    );
    Ok(client
        .get_quarterly_return(req)
        .await
        .map_err(crate::rpc_error)?
        .into_inner())
}

/// The CSV columns.
pub const CSV_HEADER: &str =
    "dimension,value,people_year_to_date,people_active_at_quarter_end,spend_year_to_date";

/// The totals row, then one row per (dimension, value), as
/// (dimension, value, people year to date, active at quarter end, spend).
fn rows(r: &pb::GetQuarterlyReturnResponse) -> Vec<[String; 5]> {
    let total = [
        "total".to_string(),
        String::new(),
        r.people_year_to_date.to_string(),
        r.people_active_at_quarter_end.to_string(),
        r.spend_year_to_date.clone(),
    ];
    std::iter::once(total)
        .chain(r.rows.iter().map(|row| {
            [
                row.dimension.clone(),
                row.value.clone(),
                row.people_year_to_date.to_string(),
                row.people_active_at_quarter_end.to_string(),
                row.spend_year_to_date.clone(),
            ]
        }))
        .collect()
}

/// The return as CSV: the header, the totals (dimension "total", no
/// value), then every row. Values are ids, proto names, counts and
/// amounts: nothing needs quoting.
fn csv_of(r: &pb::GetQuarterlyReturnResponse) -> String {
    let mut out = format!("{CSV_HEADER}\n");
    for row in rows(r) {
        out.push_str(&row.join(","));
        out.push('\n');
    }
    out
}

/// The return as a table for a person, naming the sequence it was
/// computed at.
fn table_of(r: &pb::GetQuarterlyReturnResponse) -> String {
    let mut out = format!(
        "Quarterly return {} for {}: the financial year from {}, the quarter ending {}\n",
        r.quarter, r.commissioner_id, r.year_start, r.quarter_end
    );
    out.push_str(&format!(
        "As of sequence {} (the last entry recorded by {}){}\n\n",
        r.as_of_sequence,
        r.quarter_end,
        if r.complete {
            ""
        } else {
            "; not complete: the quarter has not ended, and later entries may change these figures"
        }
    ));
    let head = [
        "dimension",
        "value",
        "people (year to date)",
        "active at quarter end",
        "spend (year to date)",
    ]
    .map(String::from);
    let body = rows(r);
    let mut width = head.clone().map(|h| h.len());
    for row in &body {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    for row in std::iter::once(&head).chain(&body) {
        let line = format!(
            "{:<w0$}  {:<w1$}  {:>w2$}  {:>w3$}  {:>w4$}",
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            w0 = width[0],
            w1 = width[1],
            w2 = width[2],
            w3 = width[3],
            w4 = width[4],
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
