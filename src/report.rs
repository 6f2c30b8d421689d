//! `phb-ledger report`: the commissioners' reports (docs/reports.md).

use anyhow::Result;
use phb_client::Signer;
use phb_proto::v1 as pb;
use std::path::PathBuf;

/// The reports.
#[derive(clap::Subcommand)]
pub enum Report {
    /// Print a commissioner's quarterly return (the national Personal Health
    /// Budgets collection): people in the year to date and active at the
    /// quarter's end, and spending, in total and by age band, cohort and
    /// management option.
    Quarterly {
        /// Server URL.
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        server: String,
        /// The reading organisation id: the commissioner itself, an auditor or "root".
        #[arg(long)]
        signer: String,
        /// File holding the reader's secret key (hex).
        #[arg(long)]
        key: PathBuf,
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
}

/// Runs a `report` subcommand.
pub async fn run(report: Report) -> Result<()> {
    match report {
        Report::Quarterly {
            server,
            signer,
            key,
            commissioner,
            quarter,
            csv,
        } => {
            let signer = crate::load_signer(&signer, &key)?;
            let r = quarterly(&server, &signer, commissioner, quarter).await?;
            print!("{}", if csv { csv_of(&r) } else { table_of(&r) });
            Ok(())
        }
    }
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
