//! Flags through the real binary (docs/flags.md): what raises each of
//! DUPLICATE_PAYMENT, AFTER_DEATH and EXTERNAL_MATCH and what does not,
//! flags in AppendResult, ListFlags scope, filters and paging, reviews, the
//! thresholds event, and the same flags (same ids) after a restart.

mod common;

use common::*;
use phb_client::kinds;
use phb_proto::v1 as pb;
use tonic::Code;

fn prov() -> pb::PayeeKind {
    pb::PayeeKind::Provider
}

/// Every flag the auditor sees, with a fixed as_of.
async fn flags_of(w: &World, budget_id: &str) -> Vec<pb::Flag> {
    all_flags(
        &w.client,
        &w.auditor,
        pb::ListFlagsRequest {
            budget_id: budget_id.into(),
            as_of: Some(prost_types::Timestamp {
                seconds: phb_client::unix_now(),
                nanos: 0,
            }),
            ..Default::default()
        },
    )
    .await
}

#[tokio::test]
async fn duplicate_payments_are_flagged_not_refused() {
    let w = World::new().await;
    let (b1, b2) = ("dup-1", "dup-2");
    for b in [b1, b2] {
        w.open_direct(b).await;
        w.fund(b, "5000.00", Some("5000.00")).await;
        w.agree(b, prov(), "prov-1", "respite").await;
    }
    // Paid per item, so no hours add up (OVERBOOKED_WORKER is not in play).
    let payer = w.account.clone();
    let first = w
        .pay(&payer, b1, "70.00", prov(), "prov-1", "respite")
        .await;
    // Near miss: the same payee and period, another amount.
    let r = w
        .append(&payer, b1, pay("70.01", prov(), "prov-1", "respite"))
        .await;
    assert_written(&r);
    assert!(r.flags.is_empty(), "{r:?}");
    // The same payee, amount and service period on another budget: written,
    // and flagged in its own result.
    let r = w
        .append(&payer, b2, pay("70.00", prov(), "prov-1", "respite"))
        .await;
    let second = assert_written(&r);
    assert_eq!(flag_codes(&r.flags), ["DUPLICATE_PAYMENT"], "{r:?}");
    let f = &r.flags[0];
    assert_eq!(f.flag_id, format!("DUPLICATE_PAYMENT:{b2}:{second}"));
    assert_eq!(f.sequences, [first, second]);
    assert_eq!(f.raised_at_sequence, second);
    assert_eq!(f.budget_id, b2);
    assert_eq!(f.commissioner_id, w.commissioner.id);
    assert_eq!(f.status, pb::FlagStatus::Open as i32);
    assert_eq!(f.severity, pb::FlagSeverity::Medium as i32);
    assert!(
        f.explanation.contains(&format!("#{first} (budget {b1})")),
        "{}",
        f.explanation
    );
    // The same invoice reference twice (different amounts) is flagged too.
    let mut k = pay("12.00", prov(), "prov-1", "respite");
    let mut k2 = pay("13.00", prov(), "prov-1", "respite");
    for (k, when) in [(&mut k, "2026-04-01"), (&mut k2, "2026-04-01")] {
        if let phb_client::Kind::Payment(p) = k {
            p.reference = "inv-42".into();
            p.service_from = when.into();
        }
    }
    let a = assert_written(&w.append(&payer, b1, k).await);
    let r = w.append(&payer, b1, k2).await;
    let b = assert_written(&r);
    assert_eq!(flag_codes(&r.flags), ["DUPLICATE_PAYMENT"]);
    assert_eq!(r.flags[0].sequences, [a, b]);
    assert!(r.flags[0].explanation.contains("inv-42"));
    // A retry of the flagged payment answers the same flags.
    let log = w.log().await;
    let again = w
        .append_signed(log[(second - 1) as usize].signed_event.clone().unwrap())
        .await;
    assert!(again.duplicate);
    assert_eq!(again.flags, vec![f.clone()]);
    // ListFlags has both, by id.
    let listed = all_flags(&w.client, &w.auditor, Default::default()).await;
    assert_eq!(
        flag_codes(&listed),
        ["DUPLICATE_PAYMENT", "DUPLICATE_PAYMENT"]
    );
    assert!(listed.windows(2).all(|p| p[0].flag_id < p[1].flag_id));
}

#[tokio::test]
async fn money_moved_after_a_recorded_death_is_flagged() {
    let w = World::new().await;
    let b = "late";
    w.open_third_party(b).await;
    w.fund(b, "1000.00", Some("500.00")).await;
    let c = w.commissioner.clone();
    let tp = w.third_party.clone();
    // Before the death: no flag.
    let r = w
        .append(&tp, b, kinds::buy("10.00", "equipment", "s-1", "rail"))
        .await;
    assert_written(&r);
    assert!(r.flags.is_empty());
    let death = w.ok(&c, b, kinds::died(&day(0))).await;
    // Dated on the day of death, so the rules let it through; recorded
    // after the death, so a person looks.
    let r = w.append(&c, b, kinds::disburse("100.00")).await;
    let s = assert_written(&r);
    assert_eq!(flag_codes(&r.flags), ["AFTER_DEATH"], "{r:?}");
    assert_eq!(r.flags[0].sequences, [death, s]);
    assert_eq!(r.flags[0].severity, pb::FlagSeverity::High as i32);
    assert!(r.flags[0].explanation.contains("disbursement of 100.00"));
    let r = w
        .append(&tp, b, kinds::buy("5.00", "equipment", "s-1", "grip"))
        .await;
    assert_eq!(flag_codes(&r.flags), ["AFTER_DEATH"]);
    // Events that move no money raise nothing.
    let r = w
        .append(
            &c,
            b,
            kinds::reviewed(&day(0), pb::ReviewKind::CareReview, "closed"),
        )
        .await;
    assert_written(&r);
    assert!(r.flags.is_empty());
}

#[tokio::test]
async fn external_matches_are_flagged_and_reviewed_by_the_commissioner() {
    let mut w = World::new().await;
    let b = "nfi";
    w.open_direct(b).await;
    w.fund(b, "1000.00", Some("1000.00")).await;
    let c = w.commissioner.clone();
    let match_kind = |k| kinds::external_match("NFI-2026", k, "m-77");
    // Only the commissioner records a match.
    w.refused(
        &w.account.clone(),
        b,
        match_kind(pb::MatchKind::Deceased),
        Code::PermissionDenied,
    )
    .await;
    let r = w.append(&c, b, match_kind(pb::MatchKind::Payroll)).await;
    let payroll_match = assert_written(&r);
    assert_eq!(flag_codes(&r.flags), ["EXTERNAL_MATCH"]);
    assert_eq!(r.flags[0].severity, pb::FlagSeverity::Medium as i32);
    // A deceased match with no death recorded: also AFTER_DEATH.
    let r = w.append(&c, b, match_kind(pb::MatchKind::Deceased)).await;
    let deceased = assert_written(&r);
    let mut codes = flag_codes(&r.flags);
    codes.sort();
    assert_eq!(codes, ["AFTER_DEATH", "EXTERNAL_MATCH"]);
    assert!(r
        .flags
        .iter()
        .all(|f| f.severity == pb::FlagSeverity::High as i32));

    // Reviews: the commissioner only, on the flag's budget, and the flag
    // stays listed with its outcome.
    let id = format!("EXTERNAL_MATCH:{b}:{payroll_match}");
    let review = kinds::flag_reviewed(
        &id,
        pb::FlagOutcome::Dismissed,
        "PA works nights elsewhere; hours do not overlap",
    );
    w.refused(
        &w.account.clone(),
        b,
        review.clone(),
        Code::PermissionDenied,
    )
    .await;
    let other = w.open_direct("other").await;
    assert!(other > 0);
    let r = w.append(&c, "other", review.clone()).await;
    assert_refused(&r, Code::InvalidArgument);
    assert_eq!(r.error.unwrap().field, "kind.flag_reviewed.flag_id");
    let r = w
        .append(
            &c,
            b,
            kinds::flag_reviewed("NO_SUCH_CODE:nfi:1", pb::FlagOutcome::Confirmed, "x"),
        )
        .await;
    assert_refused(&r, Code::InvalidArgument);
    let reviewed_at = w.ok(&c, b, review).await;
    let flags = flags_of(&w, b).await;
    assert_eq!(flags.len(), 3, "{flags:?}");
    let f = flags
        .iter()
        .find(|f| f.flag_id == id)
        .expect("the reviewed flag");
    assert_eq!(f.status, pb::FlagStatus::Dismissed as i32);
    assert_eq!(f.reviewed_by, c.id);
    assert_eq!(f.review_sequence, reviewed_at);
    assert!(f.review_note.contains("nights"));
    // Filters: status, code, since_sequence.
    let open = all_flags(
        &w.client,
        &w.auditor,
        pb::ListFlagsRequest {
            status: pb::FlagStatus::Open as i32,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(open.len(), 2);
    assert!(open.iter().all(|f| f.raised_at_sequence == deceased));
    let after = all_flags(
        &w.client,
        &w.auditor,
        pb::ListFlagsRequest {
            since_sequence: payroll_match,
            code: pb::FlagCode::ExternalMatch as i32,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].sequences, [deceased]);

    // Scope: the commissioner sees its own; the other commissioner none and
    // may not ask for the first's; a funds holder may not list.
    let mine = all_flags(&w.client, &c, Default::default()).await;
    assert_eq!(mine.len(), 3);
    let theirs = all_flags(&w.client, &w.commissioner2, Default::default()).await;
    assert!(theirs.is_empty());
    let s = list_flags(
        &w.client,
        &w.commissioner2,
        pb::ListFlagsRequest {
            commissioner_id: c.id.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_status(s, Code::PermissionDenied);
    let s = list_flags(&w.client, &w.account, Default::default()).await;
    assert_status(s, Code::PermissionDenied);
    let s = list_flags(
        &w.client,
        &w.auditor,
        pb::ListFlagsRequest {
            page_token: "after:nonsense".into(),
            ..Default::default()
        },
    )
    .await;
    assert_status(s, Code::InvalidArgument);

    // A restart rebuilds the same flags, ids, reviews and all.
    let before = flags_of(&w, b).await;
    w.server.restart();
    w.reconnect().await;
    assert_eq!(flags_of(&w, b).await, before);
    // So does an auditor's own replay of the log.
    let log = w.log().await;
    let read = auditor_read_model(&log, &w.server.root.public_key());
    let today = phb_domain::event::Date::from_unix_micros(phb_client::unix_now() * 1_000_000);
    let replayed = read
        .flags()
        .list(read.balances(), today, read.head().sequence);
    let ids = |flags: &[pb::Flag]| flags.iter().map(|f| f.flag_id.clone()).collect::<Vec<_>>();
    assert_eq!(
        replayed.iter().map(|f| f.id.clone()).collect::<Vec<_>>(),
        ids(&all_flags(&w.client, &w.auditor, Default::default()).await)
    );
    for f in &replayed {
        let listed = before.iter().find(|l| l.flag_id == f.id).expect("listed");
        assert_eq!(f.sequences, listed.sequences);
        assert_eq!(f.explanation, listed.explanation);
        assert_eq!(
            read.flags().review(&f.id).map(|r| r.sequence).unwrap_or(0),
            listed.review_sequence
        );
    }
}

#[tokio::test]
async fn controls_are_set_by_commissioners_only_and_checked() {
    let w = World::new().await;
    let c = w.commissioner.clone();
    let controls = |c: pb::ControlsConfigured| kinds::controls(c);
    w.ok(
        &c,
        "",
        controls(pb::ControlsConfigured {
            surplus_weeks: 10,
            spike_multiple: "2.5".into(),
            ..Default::default()
        }),
    )
    .await;
    w.refused(
        &w.third_party.clone(),
        "",
        controls(Default::default()),
        Code::PermissionDenied,
    )
    .await;
    let r = w
        .append(&c, "some-budget", controls(Default::default()))
        .await;
    assert_refused(&r, Code::InvalidArgument);
    assert_eq!(r.error.unwrap().field, "budget_id");
    let r = w
        .append(
            &c,
            "",
            controls(pb::ControlsConfigured {
                worker_hours_per_day: 25,
                ..Default::default()
            }),
        )
        .await;
    assert_refused(&r, Code::InvalidArgument);
    assert_eq!(
        r.error.unwrap().field,
        "kind.controls_configured.worker_hours_per_day"
    );
}
