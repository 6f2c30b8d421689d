//! Pure rendering: HTML escaping, tables (sorted server-side by query
//! parameter, so sorting works with JavaScript off), CSV, money. No IO, so
//! every piece is unit-tested here.

use rust_decimal::Decimal;
use std::fmt::Write as _;
use std::str::FromStr;

/// Text made safe for HTML element content and double-quoted attributes.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A path segment or query value, percent-encoded (ids are
/// `[A-Za-z0-9._:-]`, but a link must never depend on that).
pub fn enc(s: &str) -> String {
    // RFC 3986's unreserved characters stay as they are: ids stay readable.
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, SET).to_string()
}

/// A money string from the API as a decimal (exact pence); anything that
/// is not one is `None` (the page shows the text as given).
pub fn money(s: &str) -> Option<Decimal> {
    Decimal::from_str(s.trim()).ok()
}

/// The sum of money strings; `None` if any is not a number.
pub fn sum<'a>(items: impl IntoIterator<Item = &'a str>) -> Option<Decimal> {
    items.into_iter().try_fold(Decimal::ZERO, |acc, s| {
        money(s).and_then(|m| acc.checked_add(m))
    })
}

/// A decimal as pounds with two places ("1863.72"), as the API spells money.
pub fn pounds(d: Decimal) -> String {
    let mut r = d.round_dp(2);
    r.rescale(2);
    r.to_string()
}

/// Whole pence of a money string, for chart geometry only.
pub fn pence(s: &str) -> i64 {
    money(s)
        .and_then(|d| (d * Decimal::from(100)).round().to_string().parse().ok())
        .unwrap_or(0)
}

/// How a column sorts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// As text.
    Text,
    /// As a number (money, counts, sequences); right-aligned.
    Number,
}

/// A column: its id in `?sort=` and CSV header, its label on the page.
#[derive(Clone, Debug)]
pub struct Col {
    pub id: &'static str,
    pub label: &'static str,
    pub kind: Kind,
}

/// Shorthand for a text column.
pub fn text(id: &'static str, label: &'static str) -> Col {
    Col {
        id,
        label,
        kind: Kind::Text,
    }
}

/// Shorthand for a numeric column.
pub fn num(id: &'static str, label: &'static str) -> Col {
    Col {
        id,
        label,
        kind: Kind::Number,
    }
}

/// One cell: its text, and the page it links to (the statement rows
/// behind a figure, a budget, a flag's review).
#[derive(Clone, Debug, Default)]
pub struct Cell {
    pub text: String,
    pub href: Option<String>,
    /// Already-escaped HTML shown instead of `text` on the page (a usage
    /// bar); CSV always takes `text`.
    pub html: Option<String>,
}

impl Cell {
    pub fn link(text: impl Into<String>, href: impl Into<String>) -> Cell {
        Cell {
            text: text.into(),
            href: Some(href.into()),
            html: None,
        }
    }
}

impl<T: Into<String>> From<T> for Cell {
    fn from(t: T) -> Cell {
        Cell {
            text: t.into(),
            ..Cell::default()
        }
    }
}

/// A table on a page; also downloadable as CSV (`?format=csv&table=ID`).
#[derive(Clone, Debug)]
pub struct Table {
    pub id: &'static str,
    pub caption: String,
    pub cols: Vec<Col>,
    pub rows: Vec<Vec<Cell>>,
    /// An `id` attribute per row (statement rows: `seq-N`), so figures can
    /// link to them.
    pub row_ids: Vec<String>,
}

impl Table {
    pub fn new(id: &'static str, caption: impl Into<String>, cols: Vec<Col>) -> Table {
        Table {
            id,
            caption: caption.into(),
            cols,
            rows: Vec::new(),
            row_ids: Vec::new(),
        }
    }

    pub fn push(&mut self, row: Vec<Cell>) {
        self.row_ids.push(String::new());
        self.rows.push(row);
    }

    pub fn push_with_id(&mut self, id: String, row: Vec<Cell>) {
        self.row_ids.push(id);
        self.rows.push(row);
    }

    /// Sorts by column `col` (stable; numbers as exact decimals, text
    /// case-insensitively). An unknown column leaves the order as the API
    /// gave it.
    pub fn sort(&mut self, col: &str, descending: bool) {
        let Some(i) = self.cols.iter().position(|c| c.id == col) else {
            return;
        };
        let numeric = self.cols[i].kind == Kind::Number;
        let mut order: Vec<usize> = (0..self.rows.len()).collect();
        order.sort_by(|&a, &b| {
            let (x, y) = (&self.rows[a][i].text, &self.rows[b][i].text);
            let o = if numeric {
                match (money(x), money(y)) {
                    (Some(p), Some(q)) => p.cmp(&q),
                    (Some(_), None) => std::cmp::Ordering::Less,
                    (None, Some(_)) => std::cmp::Ordering::Greater,
                    (None, None) => x.cmp(y),
                }
            } else {
                x.to_lowercase().cmp(&y.to_lowercase())
            };
            if descending {
                o.reverse()
            } else {
                o
            }
        });
        self.rows = order.iter().map(|&k| self.rows[k].clone()).collect();
        self.row_ids = order.iter().map(|&k| self.row_ids[k].clone()).collect();
    }

    /// The table as CSV (RFC 4180): a header of column ids, then the rows.
    pub fn csv(&self) -> String {
        let mut out = String::new();
        let head: Vec<String> = self.cols.iter().map(|c| csv_field(c.id)).collect();
        out.push_str(&head.join(","));
        out.push_str("\r\n");
        for row in &self.rows {
            let cells: Vec<String> = row.iter().map(|c| csv_field(&c.text)).collect();
            out.push_str(&cells.join(","));
            out.push_str("\r\n");
        }
        out
    }

    /// The table as HTML. `query` is the page's other query parameters
    /// (already encoded, without `sort`), kept in the sort and CSV links;
    /// `sorted` the current `(column, descending)` if this table is sorted.
    pub fn html(&self, query: &str, sorted: Option<(&str, bool)>) -> String {
        let keep = if query.is_empty() {
            String::new()
        } else {
            format!("{query}&")
        };
        let mut out = String::new();
        let _ = write!(
            out,
            "<div class=\"table-wrap\"><table id=\"{id}\" class=\"data\"><caption>{cap} <a class=\"csv\" href=\"{href}\" download>Download CSV<span class=\"visually-hidden\"> of {cap}</span></a></caption><thead><tr>",
            id = self.id,
            cap = esc(&self.caption),
            href = esc(&format!("?{keep}format=csv&table={}", self.id)),
        );
        for c in &self.cols {
            let (aria, next_desc, mark) = match sorted {
                Some((col, desc)) if col == c.id => (
                    if desc {
                        " aria-sort=\"descending\""
                    } else {
                        " aria-sort=\"ascending\""
                    },
                    !desc,
                    if desc { " ▼" } else { " ▲" },
                ),
                _ => ("", c.kind == Kind::Number, ""),
            };
            let class = if c.kind == Kind::Number {
                " class=\"num\""
            } else {
                ""
            };
            let _ = write!(
                out,
                "<th scope=\"col\"{class}{aria}><a href=\"{href}\">{label}{mark}<span class=\"visually-hidden\"> (sort)</span></a></th>",
                href = esc(&format!(
                    "?{keep}sort={t}.{col}.{dir}#{t}",
                    t = self.id,
                    col = c.id,
                    dir = if next_desc { "desc" } else { "asc" },
                )),
                label = esc(c.label),
            );
        }
        out.push_str("</tr></thead><tbody>");
        if self.rows.is_empty() {
            let _ = write!(
                out,
                "<tr><td colspan=\"{}\">None.</td></tr>",
                self.cols.len().max(1)
            );
        }
        for (row, rid) in self.rows.iter().zip(&self.row_ids) {
            if rid.is_empty() {
                out.push_str("<tr>");
            } else {
                let _ = write!(out, "<tr id=\"{}\">", esc(rid));
            }
            for (cell, col) in row.iter().zip(&self.cols) {
                let class = if col.kind == Kind::Number {
                    " class=\"num\""
                } else {
                    ""
                };
                let inner = match (&cell.html, &cell.href) {
                    (Some(h), _) => h.clone(),
                    (None, Some(href)) => {
                        format!("<a href=\"{}\">{}</a>", esc(href), esc(&cell.text))
                    }
                    (None, None) => esc(&cell.text),
                };
                let _ = write!(out, "<td{class}>{inner}</td>");
            }
            out.push_str("</tr>");
        }
        out.push_str("</tbody></table></div>");
        out
    }
}

/// One CSV field: quoted when it holds a comma, quote or line break; a
/// leading `=`, `+`, `@` or tab (a spreadsheet formula) is defused with a
/// quote mark. A leading `-` only if the field is not a number, so
/// negative amounts stay numbers.
pub fn csv_field(s: &str) -> String {
    let formula =
        s.starts_with(['=', '+', '@', '\t', '\r']) || (s.starts_with('-') && money(s).is_none());
    let s = if formula {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// `?sort=TABLE.COL.asc|desc` split: (table, column, descending).
pub fn parse_sort(v: &str) -> Option<(&str, &str, bool)> {
    let mut parts = v.splitn(3, '.');
    let (t, c, d) = (parts.next()?, parts.next()?, parts.next()?);
    let desc = match d {
        "asc" => false,
        "desc" => true,
        _ => return None,
    };
    Some((t, c, desc))
}

/// A query string as (name, value) pairs, percent- and `+`-decoded.
pub fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let s = s.replace('+', " ");
    percent_encoding::percent_decode_str(&s)
        .decode_utf8_lossy()
        .into_owned()
}

/// A query string without the named parameters, re-encoded.
pub fn query_without(pairs: &[(String, String)], drop: &[&str]) -> String {
    pairs
        .iter()
        .filter(|(k, _)| !drop.contains(&k.as_str()))
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_and_attributes() {
        assert_eq!(
            esc(r#"<script>"x" & 'y'</script>"#),
            "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/script&gt;"
        );
    }

    #[test]
    fn money_sums_exactly_in_pence() {
        // 0.1 + 0.2 in f64 is 0.30000000000000004; in pence it is 0.30.
        assert_eq!(sum(["0.10", "0.20"]).map(pounds), Some("0.30".into()));
        assert_eq!(
            sum(["4800.00", "-587.20", "2936.28"]).map(pounds),
            Some("7149.08".into())
        );
        assert_eq!(sum(["1.00", "x"]), None);
        assert_eq!(pence("202.04"), 20204);
        assert_eq!(pence("-0.01"), -1);
    }

    fn table() -> Table {
        let mut t = Table::new(
            "b",
            "Budgets",
            vec![text("id", "Budget"), num("held", "Held")],
        );
        t.push(vec!["b-2".into(), "100.00".into()]);
        t.push(vec!["b-10".into(), "-5.00".into()]);
        t.push(vec!["B-1".into(), "20.50".into()]);
        t
    }

    #[test]
    fn numeric_columns_sort_as_numbers_text_case_insensitively() {
        let mut t = table();
        t.sort("held", false);
        let held: Vec<&str> = t.rows.iter().map(|r| r[1].text.as_str()).collect();
        assert_eq!(held, ["-5.00", "20.50", "100.00"]);
        t.sort("held", true);
        assert_eq!(t.rows[0][1].text, "100.00");
        t.sort("id", false);
        let ids: Vec<&str> = t.rows.iter().map(|r| r[0].text.as_str()).collect();
        assert_eq!(ids, ["B-1", "b-10", "b-2"]);
        // An unknown column changes nothing.
        t.sort("nope", true);
        assert_eq!(t.rows[0][0].text, "B-1");
    }

    #[test]
    fn csv_quotes_and_defuses_formulas_but_keeps_negative_numbers() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=HYPERLINK(1)"), "'=HYPERLINK(1)");
        assert_eq!(csv_field("-587.20"), "-587.20");
        assert_eq!(csv_field("-x"), "'-x");
        assert_eq!(
            table().csv(),
            "id,held\r\nb-2,100.00\r\nb-10,-5.00\r\nB-1,20.50\r\n"
        );
    }

    #[test]
    fn html_marks_the_sorted_column_and_links_the_other_order() {
        let h = table().html("q=1", Some(("held", true)));
        assert!(h.contains("aria-sort=\"descending\""), "{h}");
        assert!(h.contains("href=\"?q=1&amp;sort=b.held.asc#b\""), "{h}");
        assert!(
            h.contains("href=\"?q=1&amp;format=csv&amp;table=b\""),
            "{h}"
        );
        assert!(
            h.contains("<th scope=\"col\"><a href=\"?q=1&amp;sort=b.id.asc#b\">"),
            "{h}"
        );
    }

    #[test]
    fn cells_are_escaped_and_links_kept() {
        let mut t = Table::new("x", "X <1>", vec![text("a", "A")]);
        t.push(vec![Cell::link("<b>", "/budget/a?x=1&y=2")]);
        let h = t.html("", None);
        assert!(
            h.contains("<a href=\"/budget/a?x=1&amp;y=2\">&lt;b&gt;</a>"),
            "{h}"
        );
        assert!(h.contains("X &lt;1&gt;"), "{h}");
    }

    #[test]
    fn queries_parse_and_sort_parameters_split() {
        let q = parse_query("quarter=2026Q3&sort=b.held.desc&n=a%20b+c");
        assert_eq!(q[2], ("n".into(), "a b c".into()));
        assert_eq!(parse_sort(&q[1].1), Some(("b", "held", true)));
        assert_eq!(parse_sort("b.held.sideways"), None);
        assert_eq!(query_without(&q, &["sort", "n"]), "quarter=2026Q3");
    }
}
