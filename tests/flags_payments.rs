//! Payment-pattern flags through the real binary (docs/flags.md):
//! DURING_ADMISSION, OVERBOOKED_WORKER and SPIKE, each from a realistic
//! scenario with the exact flag and its near miss, a `ControlsConfigured`
//! that changes a threshold from its sequence on only, and the same flags
//! after a restart.

mod common;

use common::*;
use phb_client::{kinds, Kind, Signer};
use phb_domain::event::Date;
use phb_proto::v1 as pb;

/// Noon UTC on `date` ("YYYY-MM-DD").
fn noon(date: &str) -> prost_types::Timestamp {
    let part = |r: std::ops::Range<usize>| date[r].parse::<u16>().unwrap();
    let d = Date {
        year: part(0..4),
        month: part(5..7) as u8,
        day: part(8..10) as u8,
    };
    prost_types::Timestamp {
        seconds: d.days() * 86_400 + 12 * 3600,
        nanos: 0,
    }
}

/// Appends `kind` on `budget_id` by `signer`, as having happened on `date`.
async fn append_on(
    w: &World,
    signer: &Signer,
    budget_id: &str,
    kind: Kind,
    date: &str,
) -> pb::AppendResult {
    let mut e = w.event(budget_id, kind);
    e.occurred_at = Some(noon(date));
    w.append_signed(signer.sign(&e)).await
}

/// Every flag the auditor sees, by id.
async fn every_flag(w: &World) -> Vec<pb::Flag> {
    all_flags(
        &w.client,
        &w.auditor,
        pb::ListFlagsRequest {
            as_of: Some(prost_types::Timestamp {
                seconds: phb_client::unix_now(),
                nanos: 0,
            }),
            ..Default::default()
        },
    )
    .await
}

/// The flags of `code` among `flags`.
fn of_code(flags: &[pb::Flag], code: &str) -> Vec<pb::Flag> {
    flags
        .iter()
        .filter(|f| flag_codes(std::slice::from_ref(f))[0] == code)
        .cloned()
        .collect()
}

fn thresholds(f: &pb::Flag) -> Vec<(String, String)> {
    f.thresholds
        .iter()
        .map(|t| (t.name.clone(), t.value.clone()))
        .collect()
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// A restart replays the log and lists exactly the same flags.
async fn same_after_restart(w: &mut World) {
    let before = every_flag(w).await;
    w.server.restart();
    w.reconnect().await;
    assert_eq!(every_flag(w).await, before);
}

/// The commissioner approves an hourly agreement `id` with personal
/// assistant `payee_ref` at `rate` an hour for `category`.
async fn hourly(w: &World, budget_id: &str, id: &str, payee_ref: &str, category: &str, rate: &str) {
    let c = w.commissioner.clone();
    w.ok(
        &c,
        budget_id,
        kinds::agreement(id, payee_ref, category, rate, 0),
    )
    .await;
}

/// The payroll provider pays personal assistant `payee_ref` under agreement
/// `id` for `units` hours from `from` to `to`.
#[allow(clippy::too_many_arguments)]
async fn pay_hours(
    w: &World,
    budget_id: &str,
    id: &str,
    payee_ref: &str,
    amount: &str,
    units: &str,
    from: &str,
    to: &str,
) -> pb::AppendResult {
    let payroll = w.payroll.clone();
    let k = kinds::pay_under(amount, payee_ref, "personal_assistant", id, units, from, to);
    w.append(&payroll, budget_id, k).await
}

#[tokio::test]
async fn care_paid_beyond_day_28_of_a_hospital_stay_is_flagged_not_refused() {
    let mut w = World::new().await;
    let b = "adm-1";
    let c = w.commissioner.clone();
    let acct = w.account.clone();
    w.open_direct(b).await;
    w.fund(b, "20000.00", Some("20000.00")).await;
    hourly(&w, b, "agr-cara", "pa-cara", "personal_assistant", "14.50").await;

    // A 27-day stay: admitted 3 August, home on 30 August (3-29 August in
    // hospital). Cara's retainer for the whole of it raises nothing.
    w.ok(&c, b, kinds::admitted("2026-08-03")).await;
    w.ok(&c, b, kinds::discharged("2026-08-30")).await;
    let r = pay_hours(
        &w,
        b,
        "agr-cara",
        "pa-cara",
        "812.00",
        "56.00",
        "2026-08-03",
        "2026-08-30",
    )
    .await;
    assert_written(&r);
    assert!(r.flags.is_empty(), "{r:?}");

    // A second stay from 7 September. Up to day 28 (4 October), nothing.
    let admitted = w.ok(&c, b, kinds::admitted("2026-09-07")).await;
    let r = pay_hours(
        &w,
        b,
        "agr-cara",
        "pa-cara",
        "203.00",
        "14.00",
        "2026-09-28",
        "2026-10-04",
    )
    .await;
    assert_written(&r);
    assert!(r.flags.is_empty(), "day 28 is not beyond 28: {r:?}");
    // Home on 6 October: 29 days in hospital (7 September - 5 October). The
    // week from 5 October, paid after the discharge, includes day 29.
    let discharged = w.ok(&c, b, kinds::discharged("2026-10-06")).await;
    let r = pay_hours(
        &w,
        b,
        "agr-cara",
        "pa-cara",
        "406.00",
        "28.00",
        "2026-10-05",
        "2026-10-11",
    )
    .await;
    let s = assert_written(&r);
    assert_eq!(flag_codes(&r.flags), ["DURING_ADMISSION"], "{r:?}");
    let f = &r.flags[0];
    assert_eq!(f.flag_id, format!("DURING_ADMISSION:{b}:{s}"));
    assert_eq!(f.sequences, [admitted, discharged, s]);
    assert_eq!(f.raised_at_sequence, s);
    assert_eq!(f.severity, pb::FlagSeverity::Medium as i32);
    assert_eq!(f.budget_id, b);
    assert_eq!(f.commissioner_id, c.id);
    assert_eq!(thresholds(f), pairs(&[("admission_days", "28")]));
    assert!(
        f.explanation
            .contains("2026-10-05 (day 29) of the hospital stay from 2026-09-07")
            && f.explanation.contains("discharged on 2026-10-06")
            && f.explanation.contains("more than 28 days"),
        "{}",
        f.explanation
    );

    // A therapist's invoice for those days is not care at home: no flag.
    w.agree(b, pb::PayeeKind::Provider, "physio-1", "therapy")
        .await;
    let mut k = pay("60.00", pb::PayeeKind::Provider, "physio-1", "therapy");
    if let Kind::Payment(p) = &mut k {
        p.service_from = "2026-10-05".into();
        p.service_to = "2026-10-05".into();
    }
    let r = w.append(&acct, b, k).await;
    assert_written(&r);
    assert!(r.flags.is_empty(), "{r:?}");
    // A payment for the first stay, recorded late: still against its days.
    let r = pay_hours(
        &w,
        b,
        "agr-cara",
        "pa-cara",
        "29.00",
        "2.00",
        "2026-08-29",
        "2026-08-29",
    )
    .await;
    assert_written(&r);
    assert!(r.flags.is_empty(), "day 27: {r:?}");

    let listed = of_code(&every_flag(&w).await, "DURING_ADMISSION");
    assert_eq!(listed, vec![f.clone()]);
    same_after_restart(&mut w).await;
}

#[tokio::test]
async fn admission_days_change_from_the_controls_sequence_on_only() {
    let w = World::new().await;
    let b = "adm-2";
    let c = w.commissioner.clone();
    w.open_direct(b).await;
    w.fund(b, "20000.00", Some("20000.00")).await;
    hourly(&w, b, "agr-dev", "pa-dev", "personal_assistant", "15.00").await;
    let admitted = w.ok(&c, b, kinds::admitted("2026-10-01")).await;
    // Days 15-21 of a stay still open: nothing under the default 28.
    let r = pay_hours(
        &w,
        b,
        "agr-dev",
        "pa-dev",
        "210.00",
        "14.00",
        "2026-10-15",
        "2026-10-21",
    )
    .await;
    let early = assert_written(&r);
    assert!(r.flags.is_empty(), "{r:?}");
    // The commissioner lowers the threshold to 14 days.
    w.ok(
        &c,
        "",
        kinds::controls(pb::ControlsConfigured {
            admission_days: 14,
            ..Default::default()
        }),
    )
    .await;
    let r = pay_hours(
        &w,
        b,
        "agr-dev",
        "pa-dev",
        "210.00",
        "14.00",
        "2026-10-22",
        "2026-10-28",
    )
    .await;
    let s = assert_written(&r);
    assert_eq!(flag_codes(&r.flags), ["DURING_ADMISSION"], "{r:?}");
    let f = &r.flags[0];
    assert_eq!(f.flag_id, format!("DURING_ADMISSION:{b}:{s}"));
    assert_eq!(f.sequences, [admitted, s]);
    assert_eq!(thresholds(f), pairs(&[("admission_days", "14")]));
    assert!(
        f.explanation.contains("days 22 to 28") && f.explanation.contains("still in hospital"),
        "{}",
        f.explanation
    );
    // The payment before the controls keeps the thresholds of its time.
    let listed = of_code(&every_flag(&w).await, "DURING_ADMISSION");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(listed.iter().all(|f| !f.sequences.contains(&early)));
}

#[tokio::test]
async fn one_assistant_paid_for_too_many_hours_across_budgets_is_flagged() {
    let mut w = World::new().await;
    let budgets = ["ob-1", "ob-2", "ob-3"];
    let acct = w.account.clone();
    for b in budgets {
        w.open_direct(b).await;
        w.fund(b, "20000.00", Some("20000.00")).await;
        // Ann and Bob work for all three people, at 13.00 an hour.
        hourly(&w, b, "agr-ann", "pa-ann", "personal_assistant", "13.00").await;
        hourly(&w, b, "agr-bob", "pa-bob", "personal_assistant", "13.00").await;
    }
    let [b1, b2, b3] = budgets;

    // The week of Monday 9 November: 40 hours over the seven days on ob-1
    // (40/7 a day) and 20 over Monday-Friday on ob-2: exactly 60.
    let r = pay_hours(
        &w,
        b1,
        "agr-ann",
        "pa-ann",
        "520.00",
        "40.00",
        "2026-11-09",
        "2026-11-15",
    )
    .await;
    let a1 = assert_written(&r);
    assert!(r.flags.is_empty(), "{r:?}");
    let r = pay_hours(
        &w,
        b2,
        "agr-ann",
        "pa-ann",
        "260.00",
        "20.00",
        "2026-11-09",
        "2026-11-13",
    )
    .await;
    let a2 = assert_written(&r);
    assert!(r.flags.is_empty(), "60 hours is not more than 60: {r:?}");
    // Half an hour on Saturday for ob-3: 60.5.
    let r = pay_hours(
        &w,
        b3,
        "agr-ann",
        "pa-ann",
        "6.50",
        "0.50",
        "2026-11-14",
        "2026-11-14",
    )
    .await;
    let a3 = assert_written(&r);
    assert_eq!(flag_codes(&r.flags), ["OVERBOOKED_WORKER"], "{r:?}");
    let f = &r.flags[0];
    assert_eq!(f.flag_id, format!("OVERBOOKED_WORKER:{b3}:{a3}"));
    assert_eq!(f.sequences, [a1, a2, a3]);
    assert_eq!(f.raised_at_sequence, a3);
    assert_eq!(f.severity, pb::FlagSeverity::High as i32);
    assert_eq!(f.budget_id, b3);
    assert_eq!(
        thresholds(f),
        pairs(&[
            ("worker_hours_per_week", "60"),
            ("worker_hours_per_day", "16")
        ])
    );
    assert!(
        f.explanation
            .contains("60.50 hours in the week of 2026-11-09 (more than 60 a week)")
            && f.explanation.contains(&format!("#{a1} (budget {b1})"))
            && !f.explanation.contains(" on 2026-11-14"),
        "{}",
        f.explanation
    );

    // Bob, Tuesday 17 November: 8 hours a day for ob-1 (24 over Monday to
    // Wednesday) and 8 for ob-2 that day: exactly 16.
    let r = pay_hours(
        &w,
        b1,
        "agr-bob",
        "pa-bob",
        "312.00",
        "24.00",
        "2026-11-16",
        "2026-11-18",
    )
    .await;
    let d1 = assert_written(&r);
    assert!(r.flags.is_empty(), "{r:?}");
    let r = pay_hours(
        &w,
        b2,
        "agr-bob",
        "pa-bob",
        "104.00",
        "8.00",
        "2026-11-17",
        "2026-11-17",
    )
    .await;
    let d2 = assert_written(&r);
    assert!(r.flags.is_empty(), "16 hours is not more than 16: {r:?}");
    let r = pay_hours(
        &w,
        b3,
        "agr-bob",
        "pa-bob",
        "6.50",
        "0.50",
        "2026-11-17",
        "2026-11-17",
    )
    .await;
    let d3 = assert_written(&r);
    assert_eq!(flag_codes(&r.flags), ["OVERBOOKED_WORKER"], "{r:?}");
    let f = &r.flags[0];
    assert_eq!(f.flag_id, format!("OVERBOOKED_WORKER:{b3}:{d3}"));
    assert_eq!(f.sequences, [d1, d2, d3]);
    assert!(
        f.explanation
            .contains("16.50 hours on 2026-11-17 (more than 16 a day)")
            && !f.explanation.contains("in the week"),
        "{}",
        f.explanation
    );
    // Thursday for ob-2: 8 hours that day, 40.5 in the week: nothing.
    let r = pay_hours(
        &w,
        b2,
        "agr-bob",
        "pa-bob",
        "104.00",
        "8.00",
        "2026-11-19",
        "2026-11-19",
    )
    .await;
    assert_written(&r);
    assert!(r.flags.is_empty(), "{r:?}");

    // An agency's hours are many workers' hours: 70 in a week, no flag.
    let c = w.commissioner.clone();
    let mut k = kinds::agreement("agr-agency", "agency-x", "agency_care", "25.00", 0);
    if let Kind::ServiceAgreementApproved(a) = &mut k {
        a.payee_kind = pb::PayeeKind::Provider as i32;
        a.payee_sector = pb::Sector::Independent as i32;
    }
    w.ok(&c, b1, k).await;
    let mut k = kinds::pay_under(
        "1750.00",
        "agency-x",
        "agency_care",
        "agr-agency",
        "70.00",
        "2026-11-09",
        "2026-11-15",
    );
    if let Kind::Payment(p) = &mut k {
        p.payee_kind = pb::PayeeKind::Provider as i32;
    }
    let r = w.append(&acct, b1, k).await;
    assert_written(&r);
    assert!(r.flags.is_empty(), "{r:?}");

    assert_eq!(of_code(&every_flag(&w).await, "OVERBOOKED_WORKER").len(), 2);
    same_after_restart(&mut w).await;
}

#[tokio::test]
async fn a_week_above_three_times_the_trailing_average_is_a_spike() {
    let mut w = World::new().await;
    let acct = w.account.clone();
    let (b, young) = ("sp-1", "sp-2");
    for id in [b, young] {
        w.open_direct(id).await;
        w.fund(id, "20000.00", Some("20000.00")).await;
    }
    // Twelve ordinary weeks on sp-1: 100.00 of equipment each Wednesday,
    // from the week of 31 August to the week of 16 November.
    let monday = noon("2026-08-31").seconds / 86_400;
    let week = |n: i64, plus: i64| Date::from_days(monday + 7 * n + plus).to_string();
    for n in 0..12 {
        let k = kinds::buy("100.00", "equipment", "shop-1", "supplies");
        assert_written(&append_on(&w, &acct, b, k, &week(n, 2)).await);
    }
    // sp-2 spends from the week of 7 September only: 11 weeks of history.
    for n in 1..12 {
        let k = kinds::buy("100.00", "equipment", "shop-1", "supplies");
        assert_written(&append_on(&w, &acct, young, k, &week(n, 2)).await);
    }
    // The week of 23 November: 250.00 on Monday and a 50.00 gym card
    // payment on Tuesday make exactly 3 x 100.00: nothing.
    let k = kinds::buy("250.00", "equipment", "shop-1", "hoist sling");
    let r = append_on(&w, &acct, b, k, &week(12, 0)).await;
    let s1 = assert_written(&r);
    assert!(r.flags.is_empty(), "{r:?}");
    let k = kinds::card("50.00", 7997, pb::CardChannel::Pos);
    let r = append_on(&w, &acct, b, k, &week(12, 1)).await;
    let s2 = assert_written(&r);
    assert!(r.flags.is_empty(), "exactly 3 times is not above it: {r:?}");
    // A penny more on Wednesday.
    let k = kinds::buy("0.01", "equipment", "shop-1", "cable tie");
    let r = append_on(&w, &acct, b, k, &week(12, 2)).await;
    let s3 = assert_written(&r);
    assert_eq!(flag_codes(&r.flags), ["SPIKE"], "{r:?}");
    let f = &r.flags[0];
    assert_eq!(week(12, 0), "2026-11-23");
    assert_eq!(f.flag_id, format!("SPIKE:{b}:2026-11-23"));
    assert_eq!(f.sequences, [s1, s2, s3]);
    assert_eq!(f.raised_at_sequence, s3);
    assert_eq!(f.severity, pb::FlagSeverity::Medium as i32);
    assert_eq!(
        thresholds(f),
        pairs(&[("spike_multiple", "3"), ("spike_weeks", "12")])
    );
    assert!(
        f.explanation
            .contains("spending of 300.01 in the week of 2026-11-23")
            && f.explanation.contains("weekly average of 100.00")
            && f.explanation
                .contains("from 2026-08-31 to 2026-11-22 (1200.00 in all)"),
        "{}",
        f.explanation
    );
    // Once per week: more that week raises nothing more.
    let k = kinds::buy("500.00", "equipment", "shop-1", "chair");
    let r = append_on(&w, &acct, b, k, &week(12, 3)).await;
    assert_written(&r);
    assert!(r.flags.is_empty(), "{r:?}");

    // sp-2 spends 1000.00 the same week: ten times its average, but its
    // history is only 11 weeks old.
    let k = kinds::buy("1000.00", "equipment", "shop-1", "chair");
    let r = append_on(&w, &acct, young, k, &week(12, 2)).await;
    assert_written(&r);
    assert!(r.flags.is_empty(), "{r:?}");

    assert_eq!(of_code(&every_flag(&w).await, "SPIKE"), vec![f.clone()]);
    same_after_restart(&mut w).await;
}
