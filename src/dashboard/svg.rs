//! Charts as inline SVG drawn on the server (no script, no external
//! asset; the CSP allows it). Geometry from integer pence, never floats of
//! money. Each chart has a title and description for screen readers, and
//! the page shows the same figures as a table.

use super::render::esc;
use std::fmt::Write as _;

/// Colours from the NHS palette, in an order whose neighbours differ in
/// lightness as well as hue (distinguishable without colour vision too,
/// with the legend's order and each segment's title).
pub const PALETTE: [&str; 8] = [
    "#005eb8", "#ffb81c", "#007f3b", "#330072", "#da291c", "#41b6e6", "#ae2573", "#425563",
];

/// One bar of a stacked chart: its label and (series index, pence) parts.
pub struct Bar {
    pub label: String,
    pub parts: Vec<(usize, i64)>,
    /// Where a click on the bar goes (the figures behind it).
    pub href: Option<String>,
}

/// A stacked bar chart: one bar per period, one colour per series. Negative
/// parts (refunds beyond spending) are drawn as zero; the table beside the
/// chart gives the exact figures.
pub fn stacked_bars(id: &str, title: &str, series: &[String], bars: &[Bar]) -> String {
    const W: i64 = 640;
    const H: i64 = 240;
    const LEFT: i64 = 70;
    const BOTTOM: i64 = 30;
    const TOP: i64 = 10;
    let plot_h = H - BOTTOM - TOP;
    let max = bars
        .iter()
        .map(|b| b.parts.iter().map(|(_, p)| (*p).max(0)).sum::<i64>())
        .max()
        .unwrap_or(0)
        .max(1);
    let n = bars.len().max(1) as i64;
    let slot = (W - LEFT) / n;
    let bar_w = (slot * 7 / 10).max(1);
    let mut out = String::new();
    let _ = write!(
        out,
        "<svg class=\"chart\" id=\"{id}\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-labelledby=\"{id}-t {id}-d\" xmlns=\"http://www.w3.org/2000/svg\"><title id=\"{id}-t\">{t}</title><desc id=\"{id}-d\">{d}</desc>",
        id = esc(id),
        t = esc(title),
        d = esc(&format!(
            "Stacked bars, one per period; the table below gives every figure. Largest bar £{}.",
            pence_text(max)
        )),
    );
    // Axis and a top gridline labelled with the maximum.
    let _ = write!(
        out,
        "<line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{W}\" y2=\"{TOP}\" stroke=\"#d8dde0\"/><line x1=\"{LEFT}\" y1=\"{y0}\" x2=\"{W}\" y2=\"{y0}\" stroke=\"#425563\"/><text x=\"{lx}\" y=\"{ty}\" text-anchor=\"end\" font-size=\"12\" fill=\"#212b32\">£{maxt}</text><text x=\"{lx}\" y=\"{y0}\" text-anchor=\"end\" font-size=\"12\" fill=\"#212b32\">£0</text>",
        y0 = H - BOTTOM,
        lx = LEFT - 6,
        ty = TOP + 10,
        maxt = pence_text(max),
    );
    for (i, b) in bars.iter().enumerate() {
        let x = LEFT + i as i64 * slot + (slot - bar_w) / 2;
        let mut y = H - BOTTOM;
        let mut segs = String::new();
        for (s, p) in &b.parts {
            let p = (*p).max(0);
            let h = p * plot_h / max;
            if h == 0 {
                continue;
            }
            y -= h;
            let name = series.get(*s).map(String::as_str).unwrap_or("?");
            let _ = write!(
                segs,
                "<rect x=\"{x}\" y=\"{y}\" width=\"{bar_w}\" height=\"{h}\" fill=\"{c}\"><title>{l}: {n} £{a}</title></rect>",
                c = PALETTE[s % PALETTE.len()],
                l = esc(&b.label),
                n = esc(name),
                a = pence_text(p),
            );
        }
        match &b.href {
            Some(h) => {
                let _ = write!(out, "<a href=\"{}\">{segs}</a>", esc(h));
            }
            None => out.push_str(&segs),
        }
        let _ = write!(
            out,
            "<text x=\"{cx}\" y=\"{ly}\" text-anchor=\"middle\" font-size=\"12\" fill=\"#212b32\">{l}</text>",
            cx = x + bar_w / 2,
            ly = H - BOTTOM + 16,
            l = esc(&b.label),
        );
    }
    out.push_str("</svg>");
    out.push_str("<ul class=\"legend\">");
    for (i, s) in series.iter().enumerate() {
        let _ = write!(
            out,
            "<li><svg width=\"14\" height=\"14\" aria-hidden=\"true\" focusable=\"false\"><rect width=\"14\" height=\"14\" fill=\"{}\"/></svg> {}</li>",
            PALETTE[i % PALETTE.len()],
            esc(s)
        );
    }
    out.push_str("</ul>");
    out
}

/// A horizontal usage bar: `used` of `total` pence, with its figures as
/// text for screen readers (the bar itself is decoration). Over 100 % is
/// drawn full and in red.
pub fn usage_bar(used: i64, total: i64) -> String {
    const W: i64 = 120;
    let filled = if total <= 0 {
        if used > 0 {
            W
        } else {
            0
        }
    } else {
        (used.max(0).saturating_mul(W) / total).min(W)
    };
    let over = used > total;
    let percent = if total > 0 {
        used.max(0).saturating_mul(100) / total
    } else {
        0
    };
    format!(
        "<svg class=\"usage\" width=\"{W}\" height=\"12\" aria-hidden=\"true\" focusable=\"false\"><rect width=\"{W}\" height=\"12\" fill=\"#e8edee\"/><rect width=\"{filled}\" height=\"12\" fill=\"{c}\"/></svg> <span>{percent}%</span>",
        c = if over { "#d5281b" } else { "#005eb8" },
    )
}

/// Pence as pounds text, for chart labels.
pub fn pence_text(p: i64) -> String {
    let sign = if p < 0 { "-" } else { "" };
    let a = p.unsigned_abs();
    format!("{sign}{}.{:02}", a / 100, a % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_to_the_largest_and_carry_titles() {
        let series = vec!["respite".to_string(), "pa <x>".to_string()];
        let bars = vec![
            Bar {
                label: "Apr".into(),
                parts: vec![(0, 10_000), (1, 10_000)],
                href: Some("/budgets?month=2026-04".into()),
            },
            Bar {
                label: "May".into(),
                parts: vec![(0, 5_000)],
                href: None,
            },
        ];
        let svg = stacked_bars("c", "Spend", &series, &bars);
        // Plot height 200: April's 200.00 fills it, its halves 100 each;
        // May's 50.00 is a quarter.
        assert!(
            svg.contains("height=\"100\" fill=\"#005eb8\"><title>Apr: respite £100.00"),
            "{svg}"
        );
        assert!(
            svg.contains("height=\"50\" fill=\"#005eb8\"><title>May: respite £50.00"),
            "{svg}"
        );
        assert!(svg.contains("pa &lt;x&gt;"), "series names escaped: {svg}");
        assert!(svg.contains("<a href=\"/budgets?month=2026-04\">"), "{svg}");
        assert!(svg.contains("role=\"img\""));
        assert!(
            svg.contains("£200.00"),
            "the top gridline names the largest bar"
        );
    }

    #[test]
    fn empty_and_negative_charts_do_not_divide_by_zero() {
        let svg = stacked_bars("e", "Nothing", &[], &[]);
        assert!(svg.starts_with("<svg"));
        let svg = stacked_bars(
            "n",
            "Refunds",
            &["x".into()],
            &[Bar {
                label: "Apr".into(),
                parts: vec![(0, -500)],
                href: None,
            }],
        );
        assert!(
            !svg.contains("<rect x="),
            "a negative part draws nothing: {svg}"
        );
    }

    #[test]
    fn usage_bars_clamp_and_show_overspend() {
        assert!(usage_bar(50, 100).contains("width=\"60\" height=\"12\" fill=\"#005eb8\""));
        assert!(usage_bar(150, 100).contains("width=\"120\" height=\"12\" fill=\"#d5281b\""));
        assert!(usage_bar(0, 0).contains("<span>0%</span>"));
        assert_eq!(pence_text(-5), "-0.05");
        assert_eq!(pence_text(20204), "202.04");
    }
}
