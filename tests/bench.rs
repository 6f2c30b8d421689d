//! `phb-ledger bench` in its smoke mode: it starts its own server, every
//! mode runs, every timed event is accepted, and the figures it reports
//! agree with each other (the log holds the setup and every timed event; the
//! auditor's verify reads that same log). Figures are not asserted: this
//! proves the command works, BENCHMARKS.md holds what it measures.

use std::process::Command;

#[test]
fn smoke_runs_every_mode_and_accepts_every_event() {
    let out = Command::new(env!("CARGO_BIN_EXE_phb-ledger"))
        .args([
            "bench",
            "--smoke",
            "--mode",
            "all",
            "--clients",
            "1,8",
            "--events",
            "120",
            "--budgets",
            "6",
            "--json",
        ])
        .env("RUST_LOG", "warn")
        .output()
        .expect("running phb-ledger bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let json: serde_json::Value = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON line at the end of:\n{stdout}"));

    let runs = json["runs"].as_array().expect("runs");
    let shape: Vec<(&str, u64)> = runs
        .iter()
        .map(|r| {
            (
                r["mode"].as_str().expect("mode"),
                r["clients"].as_u64().expect("clients"),
            )
        })
        .collect();
    assert_eq!(shape, [("append", 1), ("append", 8), ("mixed", 8)]);
    for r in runs {
        assert_eq!(r["events"], 120, "every timed event written: {r}");
        assert_eq!(r["refused"], 0, "{r}");
        assert!(r["events_per_second"].as_f64().expect("rate") > 0.0);
        assert!(r["server_cpu_seconds"].as_f64().is_some(), "{r}");
        assert!(r["server_rss_kib"].as_u64().expect("rss") > 0, "{r}");
    }
    let reads = &runs[2]["reads"];
    assert!(reads["calls"].as_u64().expect("reads") > 0, "{reads}");
    assert_eq!(reads["errors"], 0, "{reads}");

    // The log after the runs: 7 organisations' registrations, the six
    // budgets' setup (all six direct payments: opened, allocated,
    // disbursed, a plan, three agreements), and the 360 timed events; the
    // restart replayed all of it and the verifier read the same.
    assert_eq!(json["restart"]["entries"], 7 + 6 * 7 + 360, "{json}");
    assert_eq!(json["verify"]["entries"], json["restart"]["entries"]);
}
