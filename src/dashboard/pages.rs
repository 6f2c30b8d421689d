//! The pages, rendered from the API's answers: pure functions from proto
//! messages to HTML blocks and tables (no IO; the handlers in mod.rs fetch).
//! Every figure is the API's own string (exact pence); sums are exact
//! decimals; every per-budget figure links to the statement rows behind it.

use super::render::{enc, esc, money, num, pence, pounds, sum, text, Cell, Table};
use super::svg;
use phb_proto::v1 as pb;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// A page: its title and its blocks, in order.
pub struct Page {
    pub title: String,
    pub blocks: Vec<Block>,
}

pub enum Block {
    Html(String),
    Table(Table),
}

impl Page {
    pub fn new(title: impl Into<String>) -> Page {
        Page {
            title: title.into(),
            blocks: Vec::new(),
        }
    }
    pub fn html(&mut self, h: impl Into<String>) {
        self.blocks.push(Block::Html(h.into()));
    }
    pub fn table(&mut self, t: Table) {
        self.blocks.push(Block::Table(t));
    }
    pub fn table_mut(&mut self, id: &str) -> Option<&mut Table> {
        self.blocks.iter_mut().find_map(|b| match b {
            Block::Table(t) if t.id == id => Some(t),
            _ => None,
        })
    }
}

/// What every page's frame shows.
pub struct Chrome<'a> {
    pub org: &'a str,
    pub active: &'a str,
    pub allow_review: bool,
}

/// The navigation: (path, label).
pub const NAV: [(&str, &str); 5] = [
    ("/", "Overview"),
    ("/flags", "Flags to review"),
    ("/budgets", "Budgets"),
    ("/holdings", "Holdings"),
    ("/return", "Quarterly return"),
];

/// The whole document around a page's body.
/// `counts`: the open flags and head to show before the live updates
/// arrive (the page is complete without JavaScript).
pub fn layout(chrome: &Chrome, title: &str, body: &str, counts: Option<(usize, u64)>) -> String {
    let mut nav = String::new();
    for (path, label) in NAV {
        let current = if chrome.active == path {
            " aria-current=\"page\""
        } else {
            ""
        };
        let _ = write!(nav, "<li><a href=\"{path}\"{current}>{label}</a></li>");
    }
    format!(
        "<!doctype html>\n<html lang=\"en-GB\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{t} – PHB ledger dashboard</title><link rel=\"stylesheet\" href=\"/assets/style.css\"><script src=\"/assets/app.js\" defer></script></head><body><a class=\"skip-link\" href=\"#main\">Skip to main content</a><header class=\"site-header\"><div class=\"width\"><p class=\"service\">PHB ledger dashboard</p><p class=\"who\">Reading as <strong>{org}</strong>{review} · <span class=\"live\">Open flags: <a href=\"/flags\" id=\"live-open-flags\" data-live=\"open_flags\">{open}</a> · head <span id=\"live-head\" data-live=\"head\">{head}</span></span></p></div><nav aria-label=\"Main\"><ul class=\"width\">{nav}</ul></nav></header><main id=\"main\" class=\"width\"><p id=\"live-notice\" role=\"status\" hidden></p><h1>{t}</h1>{body}</main><footer class=\"width\"><p>Figures come from the ledger's signed gRPC API, read with {org}'s key; they are exact to the penny. Pseudonymous references only.</p></footer></body></html>\n",
        t = esc(title),
        org = esc(chrome.org),
        open = counts.map(|c| c.0.to_string()).unwrap_or_else(|| "–".into()),
        head = counts.map(|c| c.1.to_string()).unwrap_or_else(|| "–".into()),
        review = if chrome.allow_review {
            " (may review flags)"
        } else {
            ""
        },
    )
}

/// An error page body: what failed and the gRPC status.
pub fn error_body(what: &str, code: &str, message: &str) -> String {
    format!(
        "<div class=\"error-summary\" role=\"alert\"><h2>{w}</h2><p>The ledger answered <strong>{c}</strong>: {m}</p></div><p><a href=\"/\">Back to the overview</a></p>",
        w = esc(what),
        c = esc(code),
        m = esc(message),
    )
}

pub fn management_name(m: i32) -> String {
    pb::Management::try_from(m)
        .map(|m| {
            m.as_str_name()
                .trim_start_matches("MANAGEMENT_")
                .to_string()
        })
        .unwrap_or_else(|_| "?".into())
}

fn flag_code(c: i32) -> String {
    pb::FlagCode::try_from(c)
        .map(|c| c.as_str_name().trim_start_matches("FLAG_CODE_").to_string())
        .unwrap_or_else(|_| "?".into())
}

fn severity(s: i32) -> String {
    pb::FlagSeverity::try_from(s)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("FLAG_SEVERITY_")
                .to_string()
        })
        .unwrap_or_else(|_| "?".into())
}

pub fn status_name(s: i32) -> String {
    pb::FlagStatus::try_from(s)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("FLAG_STATUS_")
                .to_string()
        })
        .unwrap_or_else(|_| "?".into())
}

fn budget_href(id: &str) -> String {
    format!("/budget/{}", enc(id))
}

/// The statement row behind sequence `seq` on a budget.
pub fn row_href(budget: &str, seq: u64) -> String {
    format!("/budget/{}#seq-{seq}", enc(budget))
}

fn date_of(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref()
        .map(|t| {
            phb_domain::event::Date::from_unix_micros(t.seconds.saturating_mul(1_000_000))
                .to_string()
        })
        .unwrap_or_default()
}

/// A definition list of figures (label, value, link).
fn figures(items: &[(&str, String, Option<String>)]) -> String {
    let mut out = String::from("<dl class=\"figures\">");
    for (label, value, href) in items {
        let v = match href {
            Some(h) => format!("<a href=\"{}\">{}</a>", esc(h), esc(value)),
            None => esc(value),
        };
        let _ = write!(
            out,
            "<div><dt>{}</dt><dd data-figure=\"{}\">{v}</dd></div>",
            esc(label),
            esc(&label.to_lowercase().replace(' ', "_"))
        );
    }
    out.push_str("</dl>");
    out
}

/// The budgets table: every figure links to the budget's statement.
pub fn budgets_table(balances: &[pb::Balance]) -> Table {
    let mut t = Table::new(
        "budgets",
        "Budgets",
        vec![
            text("budget_id", "Budget"),
            text("holder_ref", "Holder (pseudonym)"),
            text("commissioner_id", "Commissioner"),
            text("management", "Management"),
            num("allocated", "Allocated"),
            num("paid_in", "Paid in"),
            num("spent", "Spent"),
            num("held", "Held"),
            num("available", "Available"),
            text("stopped", "Stopped"),
        ],
    );
    for b in balances {
        let st = format!("{}#statement", budget_href(&b.budget_id));
        t.push(vec![
            Cell::link(&b.budget_id, budget_href(&b.budget_id)),
            b.holder_ref.clone().into(),
            b.commissioner_id.clone().into(),
            management_name(b.management).into(),
            Cell::link(&b.allocated, &st),
            Cell::link(&b.paid_in, &st),
            Cell::link(&b.spent, &st),
            Cell::link(&b.held, &st),
            Cell::link(&b.available, &st),
            (if b.stopped { "yes" } else { "no" }).into(),
        ]);
    }
    t
}

/// Totals over budgets, exact: (allocated, paid in, spent, held).
pub fn totals(balances: &[pb::Balance]) -> [String; 4] {
    let f = |g: fn(&pb::Balance) -> &str| {
        sum(balances.iter().map(g))
            .map(pounds)
            .unwrap_or_else(|| "?".into())
    };
    [
        f(|b| &b.allocated),
        f(|b| &b.paid_in),
        f(|b| &b.spent),
        f(|b| &b.held),
    ]
}

/// One month of the spending chart: its label and the summary the API
/// gave for it.
pub struct Month {
    pub label: String,
    pub summary: pb::GetSpendingSummaryResponse,
}

/// What the overview shows for the chosen commissioner (summary and
/// return need one).
pub struct CommissionerView {
    pub commissioner_id: String,
    pub year: pb::GetSpendingSummaryResponse,
    pub months: Vec<Month>,
    pub quarterly: pb::GetQuarterlyReturnResponse,
}

pub fn overview(
    balances: &[pb::Balance],
    commissioners: &[String],
    view: Result<CommissionerView, (String, String)>,
) -> Page {
    let mut p = Page::new("Overview");
    let [allocated, paid_in, spent, held] = totals(balances);
    let to_budgets = Some("/budgets#budgets".to_string());
    p.html("<h2>Totals over every budget you may see</h2>");
    p.html(figures(&[
        ("Budgets", balances.len().to_string(), to_budgets.clone()),
        ("Allocated", allocated, to_budgets.clone()),
        ("Paid in", paid_in, to_budgets.clone()),
        ("Spent", spent, to_budgets.clone()),
        ("Held", held, to_budgets),
    ]));

    // By management option, summed exactly.
    let mut by: BTreeMap<String, Vec<&pb::Balance>> = BTreeMap::new();
    for b in balances {
        by.entry(management_name(b.management)).or_default().push(b);
    }
    let mut t = Table::new(
        "by_management",
        "Budgets by management option",
        vec![
            text("management", "Management"),
            num("budgets", "Budgets"),
            num("allocated", "Allocated"),
            num("paid_in", "Paid in"),
            num("spent", "Spent"),
            num("held", "Held"),
        ],
    );
    for (m, bs) in &by {
        let owned: Vec<pb::Balance> = bs.iter().map(|b| (*b).clone()).collect();
        let [a, pi, s, h] = totals(&owned);
        let href = format!("/budgets?management={}#budgets", enc(m));
        t.push(vec![
            m.clone().into(),
            Cell::link(bs.len().to_string(), &href),
            Cell::link(a, &href),
            Cell::link(pi, &href),
            Cell::link(s, &href),
            Cell::link(h, &href),
        ]);
    }
    p.table(t);

    if commissioners.len() > 1 {
        let mut links = String::from("<p>Commissioner: ");
        for c in commissioners {
            let _ = write!(
                links,
                "<a href=\"/?commissioner={}\">{}</a> ",
                enc(c),
                esc(c)
            );
        }
        links.push_str("</p>");
        p.html(links);
    }
    match view {
        Err((code, message)) => p.html(format!(
            "<div class=\"inset\"><p>The spending summary and the quarterly return are not shown: the ledger answered <strong>{}</strong>: {}</p></div>",
            esc(&code),
            esc(&message)
        )),
        Ok(v) => overview_commissioner(&mut p, &v),
    }
    p
}

fn overview_commissioner(p: &mut Page, v: &CommissionerView) {
    let c = &v.commissioner_id;
    p.html(format!(
        "<h2>Commissioner {} — financial year to date ({} to {})</h2>",
        esc(c),
        esc(&v.year.from),
        esc(&v.year.to)
    ));
    let flags_href = Some("/flags".to_string());
    let open: u32 = v.year.open_flags.iter().map(|f| f.count).sum();
    p.html(figures(&[
        (
            "Spent this year",
            v.year.total_spent.clone(),
            Some("/budgets#budgets".into()),
        ),
        (
            "Budgets in surplus",
            v.year.surplus_budgets.to_string(),
            Some("/flags?code=SURPLUS".into()),
        ),
        (
            "Surplus held",
            v.year.surplus_held.clone(),
            Some("/flags?code=SURPLUS".into()),
        ),
        ("Open flags", open.to_string(), flags_href),
        ("As of sequence", v.year.head_sequence.to_string(), None),
    ]));

    let mut t = Table::new(
        "open_flags",
        "Open flags by code",
        vec![text("code", "Code"), num("count", "Open")],
    );
    for f in &v.year.open_flags {
        let code = flag_code(f.code);
        let href = format!("/flags?code={}", enc(&code));
        t.push(vec![
            Cell::link(&code, &href),
            Cell::link(f.count.to_string(), &href),
        ]);
    }
    p.table(t);

    // Spend by category over time: one bar a month.
    let mut series: Vec<String> = Vec::new();
    for m in &v.months {
        for l in &m.summary.by_category {
            if !series.contains(&l.key) {
                series.push(l.key.clone());
            }
        }
    }
    series.sort();
    let bars: Vec<svg::Bar> = v
        .months
        .iter()
        .map(|m| svg::Bar {
            label: m.label.clone(),
            parts: m
                .summary
                .by_category
                .iter()
                .filter_map(|l| {
                    series
                        .iter()
                        .position(|s| *s == l.key)
                        .map(|i| (i, pence(&l.amount)))
                })
                .collect(),
            href: None,
        })
        .collect();
    p.html(format!(
        "<h2>Spend by category, month by month</h2><figure>{}<figcaption>Spending dated in each month, by category (GetSpendingSummary per month). The table below has every figure.</figcaption></figure>",
        svg::stacked_bars("spend-chart", "Spend by category per month", &series, &bars)
    ));
    let mut t = Table::new(
        "spend_by_month",
        "Spend by category and month",
        vec![
            text("month", "Month"),
            text("category", "Category"),
            num("amount", "Amount"),
            num("budgets", "Budgets"),
        ],
    );
    for m in &v.months {
        for l in &m.summary.by_category {
            t.push(vec![
                m.label.clone().into(),
                l.key.clone().into(),
                Cell::link(&l.amount, "/budgets#budgets"),
                l.budgets.to_string().into(),
            ]);
        }
    }
    p.table(t);

    let mut t = Table::new(
        "by_category",
        "Spend by category, year to date",
        vec![
            text("category", "Category"),
            num("amount", "Amount"),
            num("share", "Share %"),
            num("budgets", "Budgets"),
        ],
    );
    for l in &v.year.by_category {
        t.push(vec![
            l.key.clone().into(),
            Cell::link(&l.amount, "/budgets#budgets"),
            l.share.clone().into(),
            l.budgets.to_string().into(),
        ]);
    }
    p.table(t);

    // Cohort and age band: the quarterly return's people and spend.
    for (dim, id, caption) in [
        (
            "cohort",
            "by_cohort",
            "Budgets by cohort (quarterly return, year to date)",
        ),
        (
            "age_band",
            "by_age_band",
            "Budgets by age band (quarterly return, year to date)",
        ),
    ] {
        let mut t = Table::new(
            id,
            caption,
            vec![
                text("value", "Value"),
                num("people_year_to_date", "People (year to date)"),
                num("people_active_at_quarter_end", "Active at quarter end"),
                num("spend_year_to_date", "Spend (year to date)"),
            ],
        );
        for r in v.quarterly.rows.iter().filter(|r| r.dimension == dim) {
            t.push(vec![
                r.value.clone().into(),
                r.people_year_to_date.to_string().into(),
                r.people_active_at_quarter_end.to_string().into(),
                Cell::link(&r.spend_year_to_date, "/return#return"),
            ]);
        }
        p.table(t);
    }
}

/// The flags table. `review` adds a link to review each open flag.
pub fn flags_table(flags: &[pb::Flag], review: bool) -> Table {
    let mut cols = vec![
        text("flag_id", "Flag"),
        text("code", "Code"),
        text("severity", "Severity"),
        text("budget_id", "Budget"),
        text("explanation", "Explanation"),
        text("sequences", "Evidence (statement rows)"),
        text("thresholds", "Thresholds"),
        text("status", "Status"),
        text("reviewed_by", "Reviewed by"),
    ];
    if review {
        cols.push(text("review", "Action"));
    }
    let mut t = Table::new("flags", "Flags", cols);
    for f in flags {
        let seq_text = f
            .sequences
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(" ");
        let seq_html = f
            .sequences
            .iter()
            .map(|s| format!("<a href=\"{}\">#{s}</a>", esc(&row_href(&f.budget_id, *s))))
            .collect::<Vec<_>>()
            .join(" ");
        let thresholds = f
            .thresholds
            .iter()
            .map(|t| format!("{}={}", t.name, t.value))
            .collect::<Vec<_>>()
            .join("; ");
        let status = status_name(f.status);
        let reviewed = if f.review_sequence > 0 {
            Cell::link(
                format!("{} at #{}", f.reviewed_by, f.review_sequence),
                row_href(&f.budget_id, f.review_sequence),
            )
        } else {
            Cell::from("")
        };
        let mut row = vec![
            // A break opportunity after each ':' keeps the long ids narrow.
            Cell {
                text: f.flag_id.clone(),
                href: None,
                html: Some(esc(&f.flag_id).replace(':', ":<wbr>")),
            },
            flag_code(f.code).into(),
            severity(f.severity).into(),
            Cell::link(&f.budget_id, budget_href(&f.budget_id)),
            f.explanation.clone().into(),
            Cell {
                text: seq_text,
                href: None,
                html: Some(seq_html),
            },
            thresholds.into(),
            status.into(),
            reviewed,
        ];
        if review {
            let href = format!(
                "/flags/review?flag_id={}&budget_id={}",
                enc(&f.flag_id),
                enc(&f.budget_id)
            );
            // Every row's link says "Review"; a screen reader also hears which flag.
            row.push(Cell {
                text: "Review".into(),
                html: Some(format!(
                    "<a href=\"{}\">Review<span class=\"visually-hidden\"> flag {}</span></a>",
                    esc(&href),
                    esc(&f.flag_id)
                )),
                href: Some(href),
            });
        }
        t.push_with_id(format!("flag-{}", f.flag_id), row);
    }
    t
}

pub fn flags_page(flags: &[pb::Flag], head: u64, showing: &str, review: bool) -> Page {
    let mut p = Page::new("Flags to review");
    let other = if showing == "open" {
        "<a href=\"/flags?status=all\">Show reviewed flags too</a>"
    } else {
        "<a href=\"/flags\">Show open flags only</a>"
    };
    p.html(format!(
        "<p>Things a person must look at that the rules do not refuse (docs/flags.md). Derived at sequence <strong data-figure=\"head\">{head}</strong>; showing <strong>{}</strong> flags ({}). {other}</p>",
        esc(showing),
        flags.len()
    ));
    if !review {
        p.html("<p class=\"hint\">Reviewing is off: start the dashboard with <code>--allow-review</code> to confirm or dismiss flags from here.</p>");
    }
    p.table(flags_table(flags, review));
    p
}

/// The review form (step 1 of 2): choose an outcome and write a note.
pub fn review_form(flag: &pb::Flag, csrf: &str) -> Page {
    let mut p = Page::new("Review a flag");
    p.html(flag_summary(flag));
    p.html(format!(
        "<form method=\"post\" action=\"/flags/review\" class=\"form\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><input type=\"hidden\" name=\"step\" value=\"preview\"><input type=\"hidden\" name=\"flag_id\" value=\"{fid}\"><input type=\"hidden\" name=\"budget_id\" value=\"{bid}\"><fieldset><legend>Outcome</legend><div class=\"radio\"><input type=\"radio\" id=\"outcome-dismissed\" name=\"outcome\" value=\"DISMISSED\" required><label for=\"outcome-dismissed\">Dismiss: nothing wrong</label></div><div class=\"radio\"><input type=\"radio\" id=\"outcome-confirmed\" name=\"outcome\" value=\"CONFIRMED\"><label for=\"outcome-confirmed\">Confirm: action needed</label></div></fieldset><div class=\"field\"><label for=\"note\">Note (what you found; no personal data; at most 256 characters)</label><textarea id=\"note\" name=\"note\" rows=\"3\" maxlength=\"256\" required></textarea></div><button type=\"submit\" class=\"button\">Continue</button> <a href=\"/flags\">Cancel</a></form>",
        csrf = esc(csrf),
        fid = esc(&flag.flag_id),
        bid = esc(&flag.budget_id),
    ));
    p
}

fn flag_summary(f: &pb::Flag) -> String {
    let seqs = f
        .sequences
        .iter()
        .map(|s| format!("<a href=\"{}\">#{s}</a>", esc(&row_href(&f.budget_id, *s))))
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "<dl class=\"summary\"><div><dt>Flag</dt><dd>{id}</dd></div><div><dt>Budget</dt><dd><a href=\"{bh}\">{b}</a></dd></div><div><dt>Explanation</dt><dd>{e}</dd></div><div><dt>Evidence</dt><dd>{seqs}</dd></div><div><dt>Status</dt><dd>{s}</dd></div></dl>",
        id = esc(&f.flag_id),
        bh = esc(&budget_href(&f.budget_id)),
        b = esc(&f.budget_id),
        e = esc(&f.explanation),
        s = esc(&status_name(f.status)),
    )
}

/// Step 2 of 2: exactly what will be signed, and the button that signs it.
/// The event id is fixed here, so pressing the button twice records one
/// event (the second is answered as a duplicate).
pub fn review_confirm(
    flag: &pb::Flag,
    org: &str,
    outcome: &str,
    note: &str,
    event_id: &str,
    csrf: &str,
) -> Page {
    let mut p = Page::new("Confirm the review");
    p.html(flag_summary(flag));
    p.html(format!(
        "<div class=\"warning\"><p>You are about to sign, as <strong>{org}</strong>, a <code>FlagReviewed</code> event: outcome <strong>{o}</strong>, note “{n}”. It is recorded in the ledger permanently; a later review can replace the outcome but not remove this one.</p></div><form method=\"post\" action=\"/flags/review\" class=\"form\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><input type=\"hidden\" name=\"step\" value=\"sign\"><input type=\"hidden\" name=\"flag_id\" value=\"{fid}\"><input type=\"hidden\" name=\"budget_id\" value=\"{bid}\"><input type=\"hidden\" name=\"outcome\" value=\"{o}\"><input type=\"hidden\" name=\"note\" value=\"{n}\"><input type=\"hidden\" name=\"event_id\" value=\"{eid}\"><button type=\"submit\" class=\"button\">Sign and record</button> <a href=\"/flags\">Cancel</a></form>",
        org = esc(org),
        o = esc(outcome),
        n = esc(note),
        csrf = esc(csrf),
        fid = esc(&flag.flag_id),
        bid = esc(&flag.budget_id),
        eid = esc(event_id),
    ));
    p
}

/// The outcome of signing: the sequence written, or the refusal.
pub fn review_done(flag_id: &str, budget_id: &str, r: &pb::AppendResult) -> Page {
    let mut p = Page::new("Review recorded");
    match &r.error {
        Some(e) if e.code != 0 => {
            p.title = "Review refused".into();
            p.html(error_body(
                "The ledger refused the review",
                crate::json_event::code_name(e.code),
                &e.message,
            ));
        }
        _ => p.html(format!(
            "<div class=\"confirmation\" role=\"status\"><p>FlagReviewed for <strong>{f}</strong> recorded at sequence <strong id=\"review-sequence\">{s}</strong>{d}.</p></div><p><a href=\"{row}\">See it on the budget's statement</a> · <a href=\"/flags?status=all\">Back to the flags</a></p>",
            f = esc(flag_id),
            s = r.sequence,
            d = if r.duplicate { " (already recorded: this is the same event)" } else { "" },
            row = esc(&row_href(budget_id, r.sequence)),
        )),
    }
    p
}

/// Statement rows of these kinds, as a table (agreements, hospital stays,
/// reviews): the statement carries their sequence, date and signer.
fn rows_of_kind(
    id: &'static str,
    caption: &str,
    budget: &str,
    rows: &[pb::StatementRow],
    kinds: &[&str],
) -> Table {
    let mut t = Table::new(
        id,
        caption,
        vec![
            num("sequence", "Sequence"),
            text("kind", "What"),
            text("occurred", "Date"),
            text("signer_id", "Signed by"),
        ],
    );
    for r in rows
        .iter()
        .filter(|r| !r.refused && kinds.contains(&r.kind.as_str()))
    {
        t.push(vec![
            Cell::link(r.sequence.to_string(), row_href(budget, r.sequence)),
            r.kind.replace('_', " ").into(),
            date_of(&r.occurred_at).into(),
            r.signer_id.clone().into(),
        ]);
    }
    t
}

pub fn budget_page(
    b: &pb::Balance,
    plan: Option<&pb::GetCarePlanResponse>,
    rows: &[pb::StatementRow],
    flags: &[pb::Flag],
    review: bool,
) -> Page {
    let id = &b.budget_id;
    let mut p = Page::new(format!("Budget {id}"));
    let last = Some(row_href(id, b.last_sequence));
    p.html(format!(
        "<p>Holder <strong>{}</strong> (pseudonym) · commissioner {} · {} · period {} to {}{}</p>",
        esc(&b.holder_ref),
        esc(&b.commissioner_id),
        esc(&management_name(b.management)),
        esc(&b.period_start),
        esc(&b.period_end),
        if b.stopped {
            " · <strong>stopped</strong>"
        } else {
            ""
        }
    ));
    p.html(figures(&[
        ("Allocated", b.allocated.clone(), last.clone()),
        ("Paid in", b.paid_in.clone(), last.clone()),
        ("Spent", b.spent.clone(), last.clone()),
        ("Held", b.held.clone(), last.clone()),
        ("Available", b.available.clone(), last),
    ]));
    match plan {
        None => p.html("<h2>Care plan</h2><p>No care plan approved yet.</p>"),
        Some(plan) => {
            p.html(format!(
                "<h2>Care plan {}</h2><p>Approved by {} at <a href=\"{}\">#{}</a>; valid {} to {}; review due {}. Total {}, contingency {} (used {}).</p>",
                esc(&plan.plan_id),
                esc(&plan.approved_by),
                esc(&row_href(id, plan.approved_at_sequence)),
                plan.approved_at_sequence,
                esc(&plan.valid_from),
                esc(&plan.valid_to),
                esc(&plan.review_due),
                esc(&plan.total),
                esc(&plan.contingency_amount),
                esc(&plan.contingency_used),
            ));
            let mut t = Table::new(
                "plan",
                "Care plan lines: spent and remaining",
                vec![
                    text("line_id", "Line"),
                    text("category", "Category"),
                    text("description", "Description"),
                    num("annual_amount", "Annual"),
                    num("spent", "Spent"),
                    num("remaining", "Remaining"),
                    text("usage", "Used"),
                ],
            );
            for l in &plan.lines {
                let used = svg::usage_bar(pence(&l.spent), pence(&l.annual_amount));
                let percent = match (money(&l.spent), money(&l.annual_amount)) {
                    (Some(s), Some(a)) if !a.is_zero() => {
                        format!("{}%", (s * rust_decimal::Decimal::from(100) / a).round())
                    }
                    _ => String::new(),
                };
                t.push(vec![
                    l.line_id.clone().into(),
                    l.category.clone().into(),
                    l.description.clone().into(),
                    l.annual_amount.clone().into(),
                    Cell::link(&l.spent, format!("{}#statement", budget_href(id))),
                    l.remaining.clone().into(),
                    Cell {
                        text: percent,
                        href: None,
                        html: Some(used),
                    },
                ]);
            }
            p.table(t);
        }
    }
    p.table(rows_of_kind(
        "agreements",
        "Service agreements",
        id,
        rows,
        &["service_agreement_approved"],
    ));
    p.table(rows_of_kind(
        "hospital",
        "Hospital stays",
        id,
        rows,
        &["hospital_admission", "hospital_discharge"],
    ));
    p.table(rows_of_kind(
        "reviews",
        "Reviews",
        id,
        rows,
        &["review_recorded", "review_adjustment", "flag_reviewed"],
    ));
    p.html("<h2>Flags on this budget</h2>");
    p.table(flags_table(flags, review));
    p.html("<h2 id=\"statement\">Statement</h2><p>One row per entry on the budget, applied or refused, with the running figures after it.</p>");
    let mut t = Table::new(
        "statement",
        "Statement with running balance",
        vec![
            num("sequence", "Seq"),
            text("recorded", "Recorded"),
            text("occurred", "Occurred"),
            text("kind", "Kind"),
            text("signer_id", "Signed by"),
            num("amount", "Amount"),
            num("allocated", "Allocated"),
            num("paid_in", "Paid in"),
            num("spent", "Spent"),
            num("held", "Held (running)"),
            text("refused", "Refused"),
        ],
    );
    for r in rows {
        t.push_with_id(
            format!("seq-{}", r.sequence),
            vec![
                Cell::link(r.sequence.to_string(), row_href(id, r.sequence)),
                date_of(&r.recorded_at).into(),
                date_of(&r.occurred_at).into(),
                r.kind.clone().into(),
                r.signer_id.clone().into(),
                r.amount.clone().into(),
                r.allocated.clone().into(),
                r.paid_in.clone().into(),
                r.spent.clone().into(),
                r.held.clone().into(),
                if r.refused {
                    format!(
                        "{}: {}",
                        crate::json_event::code_name(r.refusal_code as i32),
                        r.refusal_message
                    )
                } else {
                    String::new()
                }
                .into(),
            ],
        );
    }
    p.table(t);
    p
}

pub fn holdings_page(h: &pb::GetHoldingsResponse, others: &[String]) -> Page {
    let mut p = Page::new(format!("Holdings of {}", h.organisation_id));
    if !others.is_empty() {
        let mut links = String::from("<p>Funds holders: ");
        for o in others {
            let _ = write!(
                links,
                "<a href=\"/holdings?org={}\">{}</a> ",
                enc(o),
                esc(o)
            );
        }
        links.push_str("</p>");
        p.html(links);
    }
    let rows_sum = |g: fn(&pb::Holding) -> &str| sum(h.holdings.iter().map(g));
    let checks = [
        ("paid in", rows_sum(|r| &r.paid_in), &h.total_paid_in),
        ("spent", rows_sum(|r| &r.spent), &h.total_spent),
        ("held", rows_sum(|r| &r.held), &h.total_held),
    ];
    let reconciles = checks
        .iter()
        .all(|(_, rows, total)| rows.is_some() && *rows == money(total));
    p.html(format!(
        "<p>What {} holds for whom{}, as of sequence {}.</p>",
        esc(&h.organisation_id),
        if h.restricted {
            " (only the budgets you commission)"
        } else {
            ""
        },
        h.as_of_sequence
    ));
    p.html(figures(&[
        (
            "Budgets",
            h.holdings.len().to_string(),
            Some("#holdings".into()),
        ),
        (
            "Total paid in",
            h.total_paid_in.clone(),
            Some("#holdings".into()),
        ),
        (
            "Total spent",
            h.total_spent.clone(),
            Some("#holdings".into()),
        ),
        ("Total held", h.total_held.clone(), Some("#holdings".into())),
    ]));
    let detail = checks
        .iter()
        .map(|(what, rows, total)| {
            format!(
                "{what}: rows sum to {}, total {}",
                rows.map(pounds).unwrap_or_else(|| "?".into()),
                total
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    p.html(if reconciles {
        format!("<p class=\"reconciled\" id=\"reconciliation\" data-reconciles=\"true\"><strong>Reconciles to the penny</strong> ({}).</p>", esc(&detail))
    } else {
        format!("<div class=\"error-summary\" id=\"reconciliation\" data-reconciles=\"false\" role=\"alert\"><p><strong>Does not reconcile</strong>: {}.</p></div>", esc(&detail))
    });
    let mut t = Table::new(
        "holdings",
        "Holdings by budget",
        vec![
            text("budget_id", "Budget"),
            text("holder_ref", "Holder (pseudonym)"),
            text("commissioner_id", "Commissioner"),
            text("management", "Management"),
            num("paid_in", "Paid in"),
            num("spent", "Spent"),
            num("held", "Held"),
            num("last_movement_sequence", "Last movement"),
            text("stopped", "Stopped"),
        ],
    );
    for r in &h.holdings {
        let st = format!("{}#statement", budget_href(&r.budget_id));
        t.push(vec![
            Cell::link(&r.budget_id, budget_href(&r.budget_id)),
            r.holder_ref.clone().into(),
            r.commissioner_id.clone().into(),
            management_name(r.management).into(),
            Cell::link(&r.paid_in, &st),
            Cell::link(&r.spent, &st),
            Cell::link(&r.held, &st),
            Cell::link(
                r.last_movement_sequence.to_string(),
                row_href(&r.budget_id, r.last_movement_sequence),
            ),
            (if r.stopped { "yes" } else { "no" }).into(),
        ]);
    }
    p.table(t);
    p
}

pub fn return_page(r: &pb::GetQuarterlyReturnResponse, commissioners: &[String]) -> Page {
    let mut p = Page::new(format!(
        "Quarterly return {} for {}",
        r.quarter, r.commissioner_id
    ));
    if commissioners.len() > 1 {
        let mut links = String::from("<p>Commissioner: ");
        for c in commissioners {
            let _ = write!(
                links,
                "<a href=\"/return?quarter={}&amp;commissioner={}\">{}</a> ",
                enc(&r.quarter),
                enc(c),
                esc(c)
            );
        }
        links.push_str("</p>");
        p.html(links);
    }
    p.html(format!(
        "<p>The financial year from {} to the quarter's end {}. Computed at sequence <strong data-figure=\"as_of_sequence\">{}</strong> (the last entry recorded by the quarter's end){}.</p>",
        esc(&r.year_start),
        esc(&r.quarter_end),
        r.as_of_sequence,
        if r.complete {
            ""
        } else {
            "; <strong>not complete</strong>: the quarter has not ended, and later entries may change these figures"
        }
    ));
    p.html(figures(&[
        (
            "People year to date",
            r.people_year_to_date.to_string(),
            Some("#return".into()),
        ),
        (
            "Active at quarter end",
            r.people_active_at_quarter_end.to_string(),
            Some("#return".into()),
        ),
        (
            "Spend year to date",
            r.spend_year_to_date.clone(),
            Some("/budgets#budgets".into()),
        ),
    ]));
    let mut t = Table::new(
        "return",
        "The return (download as CSV for the national collection)",
        vec![
            text("dimension", "Dimension"),
            text("value", "Value"),
            num("people_year_to_date", "People (year to date)"),
            num("people_active_at_quarter_end", "Active at quarter end"),
            num("spend_year_to_date", "Spend (year to date)"),
        ],
    );
    t.push(vec![
        "total".into(),
        "".into(),
        r.people_year_to_date.to_string().into(),
        r.people_active_at_quarter_end.to_string().into(),
        r.spend_year_to_date.clone().into(),
    ]);
    for row in &r.rows {
        t.push(vec![
            row.dimension.clone().into(),
            row.value.clone().into(),
            row.people_year_to_date.to_string().into(),
            row.people_active_at_quarter_end.to_string().into(),
            row.spend_year_to_date.clone().into(),
        ]);
    }
    p.table(t);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bal(id: &str, m: pb::Management, held: &str) -> pb::Balance {
        pb::Balance {
            budget_id: id.into(),
            holder_ref: "holder-1".into(),
            commissioner_id: "icb".into(),
            management: m as i32,
            allocated: "100.10".into(),
            paid_in: "50.05".into(),
            spent: "0.20".into(),
            held: held.into(),
            available: "1.00".into(),
            ..Default::default()
        }
    }

    #[test]
    fn totals_are_exact_and_figures_link_to_statements() {
        let bs = [
            bal("b-1", pb::Management::DirectPayment, "0.10"),
            bal("b-2", pb::Management::Notional, "0.20"),
        ];
        assert_eq!(totals(&bs), ["200.20", "100.10", "0.40", "0.30"]);
        let t = budgets_table(&bs);
        assert_eq!(t.rows[0][7].href.as_deref(), Some("/budget/b-1#statement"));
        let html = t.html("", None);
        assert!(
            html.contains("<a href=\"/budget/b-2#statement\">0.20</a>"),
            "{html}"
        );
    }

    #[test]
    fn holdings_reconcile_only_when_rows_sum_to_the_totals() {
        let row = |paid: &str| pb::Holding {
            budget_id: "b".into(),
            paid_in: paid.into(),
            spent: "0.00".into(),
            held: paid.into(),
            ..Default::default()
        };
        let mut h = pb::GetHoldingsResponse {
            organisation_id: "tp".into(),
            holdings: vec![row("0.10"), row("0.20")],
            total_paid_in: "0.30".into(),
            total_spent: "0.00".into(),
            total_held: "0.30".into(),
            ..Default::default()
        };
        let render = |h: &pb::GetHoldingsResponse| {
            holdings_page(h, &[])
                .blocks
                .iter()
                .filter_map(|b| match b {
                    Block::Html(s) => Some(s.clone()),
                    Block::Table(_) => None,
                })
                .collect::<String>()
        };
        assert!(render(&h).contains("data-reconciles=\"true\""));
        h.total_held = "0.31".into();
        assert!(render(&h).contains("data-reconciles=\"false\""));
    }

    #[test]
    fn flags_link_their_evidence_rows_and_review_only_when_allowed() {
        let f = pb::Flag {
            flag_id: "EXTERNAL_MATCH:b-9:41".into(),
            code: pb::FlagCode::ExternalMatch as i32,
            budget_id: "b-9".into(),
            sequences: vec![41],
            explanation: "a <match>".into(),
            status: pb::FlagStatus::Open as i32,
            ..Default::default()
        };
        let t = flags_table(std::slice::from_ref(&f), true);
        let html = t.html("", None);
        assert!(
            html.contains("<a href=\"/budget/b-9#seq-41\">#41</a>"),
            "{html}"
        );
        assert!(html.contains("a &lt;match&gt;"));
        assert!(
            html.contains("/flags/review?flag_id=EXTERNAL_MATCH%3Ab-9%3A41&amp;budget_id=b-9"),
            "{html}"
        );
        assert_eq!(flags_table(&[f], false).cols.len(), 9);
    }

    #[test]
    fn statement_rows_carry_anchors_for_figures() {
        let b = bal("b-1", pb::Management::DirectPayment, "1.00");
        let rows = vec![pb::StatementRow {
            sequence: 7,
            kind: "hospital_admission".into(),
            ..Default::default()
        }];
        let mut p = budget_page(&b, None, &rows, &[], false);
        let st = p
            .table_mut("statement")
            .map(|t| t.html("", None))
            .unwrap_or_default();
        assert!(st.contains("<tr id=\"seq-7\">"), "{st}");
        let hospital = p.table_mut("hospital").map(|t| t.rows.len());
        assert_eq!(hospital, Some(1));
    }
}
