//! The commissioners' reports through the real binary (docs/reports.md):
//! a seeded ledger of two commissioners whose quarterly return and
//! spending summary match figures computed by hand, to the penny and the
//! count; the quarter's last sequence; the same answers after a restart;
//! `phb-ledger report quarterly`; who may ask, and bad arguments.

mod common;

use common::*;
use phb_client::{kinds, methods, Kind, Signer};
use phb_domain::event::{parse_date, Date};
use phb_domain::projections::reports::Quarter;
use phb_proto::v1 as pb;
use tonic::Code;

/// Today (UTC), as the server's clock has it.
fn today() -> Date {
    parse_date("today", &day(0)).unwrap()
}

/// The quarter today falls in, and the one before it.
fn quarters() -> (Quarter, Quarter) {
    let q = Quarter::containing(today());
    let previous = match q.n {
        1 => Quarter {
            year: q.year - 1,
            n: 4,
        },
        n => Quarter {
            year: q.year,
            n: n - 1,
        },
    };
    (q, previous)
}

/// Noon (UTC) of `date` as a timestamp; today is "now".
fn noon(date: &str) -> prost_types::Timestamp {
    if date == day(0) {
        return phb_client::now_timestamp();
    }
    let days = parse_date("date", date).unwrap().days();
    prost_types::Timestamp {
        seconds: days * 86_400 + 12 * 3_600,
        nanos: 0,
    }
}

/// Appends `kind` on `budget` by `signer`, occurring on `date`; it must be
/// written. Returns its sequence.
async fn on(w: &World, signer: &Signer, budget: &str, kind: Kind, date: &str) -> u64 {
    let mut e = w.event(budget, kind);
    e.occurred_at = Some(noon(date));
    assert_written(&w.append_signed(signer.sign(&e)).await)
}

/// The people and period of a budget to open.
struct Opening<'a> {
    id: &'a str,
    holder: &'a str,
    management: pb::Management,
    cohort: pb::Cohort,
    age_band: pb::AgeBand,
    period: (&'a str, &'a str),
}

/// Opens a budget for `commissioner` (direct payment: the account and
/// payroll providers; third party: the third party) and approves the
/// standing plan, in force over the budget's period.
async fn open(w: &World, commissioner: &Signer, o: Opening<'_>) {
    let (holder, payroll) = match o.management {
        pb::Management::DirectPayment => (w.account.id.as_str(), w.payroll.id.as_str()),
        pb::Management::ThirdParty => (w.third_party.id.as_str(), ""),
        _ => ("", ""),
    };
    let mut k = kinds::open(o.holder, &commissioner.id, o.management, holder, payroll);
    if let Kind::BudgetOpened(b) = &mut k {
        b.cohort = o.cohort as i32;
        b.age_band = o.age_band as i32;
        b.period_start = o.period.0.into();
        b.period_end = o.period.1.into();
    }
    w.ok(commissioner, o.id, k).await;
    let mut plan = standing_plan();
    if let Kind::CarePlanApproved(p) = &mut plan {
        p.valid_from = o.period.0.into();
        p.valid_to = o.period.1.into();
    }
    w.ok(commissioner, o.id, plan).await;
}

/// A purchase with a supplier sector (UNSPECIFIED: none recorded).
fn buy(amount: &str, category: &str, sector: pb::Sector) -> Kind {
    let mut k = kinds::buy(amount, category, "supplier-1", "goods");
    if let Kind::Purchase(p) = &mut k {
        p.supplier_sector = sector as i32;
    }
    k
}

const YEAR: (&str, &str) = ("2026-04-01", "2027-03-31");

/// The seeded ledger (docs/reports.md's worked example follows it).
///
/// icb-north:
/// - b-a1 direct payment, p-1, CHC, adult: a personal assistant paid 400.00
///   under an agreement (sector INDIVIDUAL) today; equipment bought for
///   150.00 from an INDEPENDENT supplier on 2026-04-02.
/// - b-a2 third party, p-2, learning disability/autism, adult: a provider
///   paid 1000.00 for clinical services under an agreement (sector NHS);
///   respite bought for 200.00 (VOLUNTARY), 50.00 of it refunded.
/// - b-a3 notional, p-1 again (opened after b-a1), wheelchair, adult:
///   equipment 300.00 (NHS).
/// - b-a4 notional, p-3, children EHC, child: education 75.50, no sector
///   recorded; then stopped.
/// - b-a5 direct payment, p-4, end of life, adult: a card payment of 20.00
///   at a gym; then the holder died today.
/// - b-a6 notional, p-5, maternity, age not recorded, its period April
///   2026 only: nothing spent.
/// - b-a7 notional, p-6, other, adult, the previous financial year: 60.00
///   of transport (LOCAL_AUTHORITY) on 2026-03-20.
/// - two external matches on b-a2, one reviewed (dismissed); an
///   overspend refused (recorded, changing nothing).
///
/// icb-south:
/// - b-b1 notional, p-1 (another commissioner's person), s117: equipment
///   500.00 (NHS).
/// - b-b2 direct payment, p-9, CHC, child: 5000.00 held under a small plan.
async fn seed(w: &World) {
    use pb::{AgeBand as A, Cohort as C, Management as M};
    let (north, south) = (w.commissioner.clone(), w.commissioner2.clone());
    let (payroll, acct, tp) = (w.payroll.clone(), w.account.clone(), w.third_party.clone());
    let today = day(0);
    let budgets = [
        (
            "b-a1",
            "p-1",
            M::DirectPayment,
            C::ContinuingHealthcare,
            A::Adult,
            YEAR,
        ),
        (
            "b-a2",
            "p-2",
            M::ThirdParty,
            C::LearningDisabilityAutism,
            A::Adult,
            YEAR,
        ),
        ("b-a3", "p-1", M::Notional, C::Wheelchair, A::Adult, YEAR),
        ("b-a4", "p-3", M::Notional, C::ChildrenEhc, A::Child, YEAR),
        (
            "b-a5",
            "p-4",
            M::DirectPayment,
            C::EndOfLife,
            A::Adult,
            YEAR,
        ),
        (
            "b-a6",
            "p-5",
            M::Notional,
            C::Maternity,
            A::Unspecified,
            ("2026-04-01", "2026-04-30"),
        ),
        (
            "b-a7",
            "p-6",
            M::Notional,
            C::Other,
            A::Adult,
            ("2025-04-01", "2026-03-31"),
        ),
    ];
    for (id, holder, management, cohort, age_band, period) in budgets {
        let o = Opening {
            id,
            holder,
            management,
            cohort,
            age_band,
            period,
        };
        open(w, &north, o).await;
        let disbursed = (management != M::Notional).then_some("10000.00");
        w.fund(id, "10000.00", disbursed).await;
    }
    // b-a1: wages under the harness agreement (a personal assistant,
    // SECTOR_INDIVIDUAL), and equipment early in the year.
    let pa = pb::PayeeKind::PersonalAssistant;
    w.pay(&payroll, "b-a1", "400.00", pa, "pa-1", "personal_assistant")
        .await;
    let equipment = buy("150.00", "equipment", pb::Sector::Independent);
    on(w, &acct, "b-a1", equipment, "2026-04-02").await;
    // b-a2: an NHS provider under an agreement; respite, part refunded.
    let mut agreement = kinds::agreement("agr-nhs", "trust-1", "clinical_service", "1.00", 0);
    if let Kind::ServiceAgreementApproved(a) = &mut agreement {
        a.payee_kind = pb::PayeeKind::Provider as i32;
        a.payee_sector = pb::Sector::Nhs as i32;
        a.unit = pb::Unit::Item as i32;
    }
    w.ok(&north, "b-a2", agreement).await;
    let mut clinic = kinds::pay_under(
        "1000.00",
        "trust-1",
        "clinical_service",
        "agr-nhs",
        "1000",
        "2026-04-01",
        "2026-04-01",
    );
    if let Kind::Payment(p) = &mut clinic {
        p.payee_kind = pb::PayeeKind::Provider as i32;
    }
    w.ok(&tp, "b-a2", clinic).await;
    let respite = on(
        w,
        &tp,
        "b-a2",
        buy("200.00", "respite", pb::Sector::Voluntary),
        &today,
    )
    .await;
    w.ok(&tp, "b-a2", kinds::refund(respite, "50.00")).await;
    // b-a3: p-1's second budget.
    on(
        w,
        &north,
        "b-a3",
        buy("300.00", "equipment", pb::Sector::Nhs),
        &today,
    )
    .await;
    // b-a4: no sector, then stopped.
    on(
        w,
        &north,
        "b-a4",
        buy("75.50", "education", pb::Sector::Unspecified),
        &today,
    )
    .await;
    w.ok(&north, "b-a4", kinds::stop("moved away")).await;
    // b-a5: a card payment, then the death.
    w.ok(
        &acct,
        "b-a5",
        kinds::card("20.00", 7997, pb::CardChannel::Pos),
    )
    .await;
    w.ok(&north, "b-a5", kinds::died(&today)).await;
    // b-a7: last year's spending.
    on(
        w,
        &north,
        "b-a7",
        buy("60.00", "transport", pb::Sector::LocalAuthority),
        "2026-03-20",
    )
    .await;
    // Two external matches on b-a2; one is reviewed.
    let m = pb::MatchKind::Payroll;
    let first = w
        .ok(&north, "b-a2", kinds::external_match("NFI-2026", m, "m-1"))
        .await;
    w.ok(&north, "b-a2", kinds::external_match("NFI-2026", m, "m-2"))
        .await;
    let flag_id = format!("EXTERNAL_MATCH:b-a2:{first}");
    let review = kinds::flag_reviewed(&flag_id, pb::FlagOutcome::Dismissed, "known");
    w.ok(&north, "b-a2", review).await;

    // icb-south.
    for (id, holder, management, cohort, age_band) in [
        ("b-b1", "p-1", M::Notional, C::MentalHealthS117, A::Adult),
        (
            "b-b2",
            "p-9",
            M::DirectPayment,
            C::ContinuingHealthcare,
            A::Child,
        ),
    ] {
        let o = Opening {
            id,
            holder,
            management,
            cohort,
            age_band,
            period: YEAR,
        };
        open(w, &south, o).await;
    }
    let allocate = |a| kinds::allocate(a, pb::AllocationBasis::NeedsBased);
    w.ok(&south, "b-b1", allocate("1000.00")).await;
    on(
        w,
        &south,
        "b-b1",
        buy("500.00", "equipment", pb::Sector::Nhs),
        &today,
    )
    .await;
    // b-b2: 100.00 a week planned, 5000.00 held (a surplus, by the
    // SURPLUS rule's defaults).
    let small = [("line-1", "equipment", "5200.00", "equipment")];
    w.ok(&south, "b-b2", kinds::plan("small", &small, "0.00"))
        .await;
    w.ok(&south, "b-b2", allocate("5000.00")).await;
    w.ok(&south, "b-b2", kinds::disburse("5000.00")).await;

    // Last: an overspend, refused and recorded: an entry, but no figure.
    w.refused(
        &tp,
        "b-a2",
        buy("100000.00", "respite", pb::Sector::Voluntary),
        Code::FailedPrecondition,
    )
    .await;
}

async fn summary_as(
    w: &World,
    reader: &Signer,
    commissioner: &str,
    from: &str,
    to: &str,
) -> Result<pb::GetSpendingSummaryResponse, tonic::Status> {
    let req = reader.request(
        methods::GET_SPENDING_SUMMARY,
        pb::GetSpendingSummaryRequest {
            commissioner_id: commissioner.into(),
            from: from.into(),
            to: to.into(),
        },
    );
    Ok(w.client
        .clone()
        .get_spending_summary(req)
        .await?
        .into_inner())
}

async fn return_as(
    w: &World,
    reader: &Signer,
    commissioner: &str,
    quarter: &str,
) -> Result<pb::GetQuarterlyReturnResponse, tonic::Status> {
    let req = reader.request(
        methods::GET_QUARTERLY_RETURN,
        pb::GetQuarterlyReturnRequest {
            commissioner_id: commissioner.into(),
            quarter: quarter.into(),
        },
    );
    Ok(w.client
        .clone()
        .get_quarterly_return(req)
        .await?
        .into_inner())
}

fn lines(l: &[pb::SpendLine]) -> Vec<(&str, &str, &str, u32)> {
    l.iter()
        .map(|l| {
            (
                l.key.as_str(),
                l.amount.as_str(),
                l.share.as_str(),
                l.budgets,
            )
        })
        .collect()
}

fn rows(r: &pb::GetQuarterlyReturnResponse) -> Vec<(&str, &str, u32, u32, &str)> {
    r.rows
        .iter()
        .map(|r| {
            (
                r.dimension.as_str(),
                r.value.as_str(),
                r.people_year_to_date,
                r.people_active_at_quarter_end,
                r.spend_year_to_date.as_str(),
            )
        })
        .collect()
}

/// icb-north's return, computed by hand (see `seed`): five people in the
/// year to date (p-1 once, under b-a1; p-6's budget ended before the year
/// began), two active at the quarter's end (p-3's budget is stopped, p-4
/// died, p-5's period ended), 2095.50 spent in the year.
const NORTH_ROWS: [(&str, &str, u32, u32, &str); 16] = [
    ("age_band", "AGE_BAND_UNSPECIFIED", 1, 0, "0.00"),
    ("age_band", "AGE_BAND_ADULT", 3, 2, "2020.00"),
    ("age_band", "AGE_BAND_CHILD", 1, 0, "75.50"),
    ("cohort", "COHORT_UNSPECIFIED", 0, 0, "0.00"),
    ("cohort", "COHORT_CONTINUING_HEALTHCARE", 1, 1, "550.00"),
    ("cohort", "COHORT_FAST_TRACK_CHC", 0, 0, "0.00"),
    // p-1 counts under b-a1; b-a3's spending stays with b-a3.
    ("cohort", "COHORT_WHEELCHAIR", 0, 0, "300.00"),
    ("cohort", "COHORT_MENTAL_HEALTH_S117", 0, 0, "0.00"),
    (
        "cohort",
        "COHORT_LEARNING_DISABILITY_AUTISM",
        1,
        1,
        "1150.00",
    ),
    ("cohort", "COHORT_END_OF_LIFE", 1, 0, "20.00"),
    ("cohort", "COHORT_MATERNITY", 1, 0, "0.00"),
    ("cohort", "COHORT_CHILDREN_EHC", 1, 0, "75.50"),
    ("cohort", "COHORT_OTHER", 0, 0, "0.00"),
    ("management", "MANAGEMENT_DIRECT_PAYMENT", 2, 1, "570.00"),
    ("management", "MANAGEMENT_THIRD_PARTY", 1, 1, "1150.00"),
    ("management", "MANAGEMENT_NOTIONAL", 2, 0, "375.50"),
];

/// The flags ListFlags gives for `commissioner` as of `to`: the budgets
/// with a SURPLUS flag, and the open flags per code (in code order).
async fn flag_figures(
    w: &World,
    commissioner: &str,
    to: &str,
) -> (Vec<String>, Vec<pb::FlagCount>) {
    let flags = all_flags(
        &w.client,
        &w.auditor,
        pb::ListFlagsRequest {
            commissioner_id: commissioner.into(),
            as_of: Some(prost_types::Timestamp {
                seconds: parse_date("to", to).unwrap().days() * 86_400,
                nanos: 0,
            }),
            ..Default::default()
        },
    )
    .await;
    let mut surplus: Vec<String> = flags
        .iter()
        .filter(|f| f.code == pb::FlagCode::Surplus as i32)
        .map(|f| f.budget_id.clone())
        .collect();
    surplus.sort();
    surplus.dedup();
    let mut open = std::collections::BTreeMap::<i32, u32>::new();
    for f in flags
        .iter()
        .filter(|f| f.status == pb::FlagStatus::Open as i32)
    {
        *open.entry(f.code).or_default() += 1;
    }
    let open = open
        .into_iter()
        .map(|(code, count)| pb::FlagCount { code, count })
        .collect();
    (surplus, open)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeded_ledger_reports_the_figures_computed_by_hand() {
    let mut w = World::new().await;
    seed(&w).await;
    let (quarter, previous) = quarters();
    let (q, today) = (quarter.to_string(), day(0));
    let auditor = w.auditor.clone();
    let head = w.log_len().await;

    // The quarterly return of this quarter: as of the last entry so far.
    let r = return_as(&w, &auditor, "icb-north", &q).await.unwrap();
    assert_eq!(r.commissioner_id, "icb-north");
    assert_eq!(r.quarter, q);
    assert_eq!(r.year_start, quarter.year_start().to_string());
    assert_eq!(r.quarter_end, quarter.last_day().to_string());
    assert_eq!(r.as_of_sequence, head, "the last entry recorded so far");
    assert!(!r.complete, "the quarter has not ended");
    assert_eq!(
        (r.people_year_to_date, r.people_active_at_quarter_end),
        (5, 2)
    );
    assert_eq!(r.spend_year_to_date, "2095.50");
    assert_eq!(rows(&r), NORTH_ROWS);
    // Each breakdown adds up to the totals.
    for d in ["age_band", "cohort", "management"] {
        let of: Vec<_> = r.rows.iter().filter(|r| r.dimension == d).collect();
        assert_eq!(of.iter().map(|r| r.people_year_to_date).sum::<u32>(), 5);
        assert_eq!(
            of.iter()
                .map(|r| r.people_active_at_quarter_end)
                .sum::<u32>(),
            2
        );
        let spend: i64 = of.iter().map(|r| pence(&r.spend_year_to_date)).sum();
        assert_eq!(spend, 209_550);
    }
    // icb-south: p-1 is its person too; nothing of icb-north's counts.
    let s = return_as(&w, &auditor, "icb-south", &q).await.unwrap();
    assert_eq!(
        (s.people_year_to_date, s.people_active_at_quarter_end),
        (2, 2)
    );
    assert_eq!(s.spend_year_to_date, "500.00");
    assert_eq!(s.as_of_sequence, head);
    // The quarter before: nothing had been recorded by its end.
    let p = return_as(&w, &auditor, "icb-north", &previous.to_string())
        .await
        .unwrap();
    assert_eq!(p.as_of_sequence, 0);
    assert!(p.complete);
    assert_eq!(
        (p.people_year_to_date, p.people_active_at_quarter_end),
        (0, 0)
    );
    assert_eq!(p.spend_year_to_date, "0.00");
    assert!(p
        .rows
        .iter()
        .all(|r| r.people_year_to_date == 0 && r.spend_year_to_date == "0.00"));

    // The spending summary for the year so far.
    let sum = summary_as(&w, &auditor, "icb-north", "2026-04-01", &today)
        .await
        .unwrap();
    assert_eq!(
        (sum.from.as_str(), sum.to.as_str()),
        ("2026-04-01", today.as_str())
    );
    assert_eq!(sum.total_spent, "2095.50");
    assert_eq!(
        lines(&sum.by_category),
        [
            ("clinical_service", "1000.00", "47.7", 1),
            ("equipment", "450.00", "21.5", 2),
            ("personal_assistant", "400.00", "19.1", 1),
            ("respite", "150.00", "7.2", 1),
            ("education", "75.50", "3.6", 1),
            ("exercise_wellbeing", "20.00", "1.0", 1),
        ]
    );
    assert_eq!(
        lines(&sum.by_management),
        [
            ("MANAGEMENT_THIRD_PARTY", "1150.00", "54.9", 1),
            ("MANAGEMENT_DIRECT_PAYMENT", "570.00", "27.2", 2),
            ("MANAGEMENT_NOTIONAL", "375.50", "17.9", 2),
        ]
    );
    assert_eq!(
        lines(&sum.by_sector),
        [
            ("SECTOR_NHS", "1300.00", "62.0", 2),
            ("SECTOR_INDIVIDUAL", "400.00", "19.1", 1),
            // A tie: by key.
            ("SECTOR_INDEPENDENT", "150.00", "7.2", 1),
            ("SECTOR_VOLUNTARY", "150.00", "7.2", 1),
            ("SECTOR_UNSPECIFIED", "95.50", "4.6", 2),
        ]
    );
    // 700.00 of the 2000.00 with a recorded sector went outside the NHS.
    assert_eq!(sum.outside_nhs_amount, "700.00");
    assert_eq!(sum.outside_nhs_share, "35.0");
    assert_eq!(sum.head_sequence, head);
    // Surplus and open flags are the flags ListFlags lists as of `to`.
    let (surplus, open) = flag_figures(&w, "icb-north", &today).await;
    assert_eq!(sum.surplus_budgets as usize, surplus.len());
    assert_eq!(sum.open_flags, open);
    let external = pb::FlagCode::ExternalMatch as i32;
    let externals: Vec<_> = sum
        .open_flags
        .iter()
        .filter(|f| f.code == external)
        .collect();
    assert_eq!(externals.len(), 1);
    assert_eq!(externals[0].count, 1, "one match reviewed, one open");
    let south = summary_as(&w, &auditor, "icb-south", "2026-04-01", &today)
        .await
        .unwrap();
    assert_eq!(south.total_spent, "500.00");
    assert_eq!(
        lines(&south.by_sector),
        [("SECTOR_NHS", "500.00", "100.0", 1)]
    );
    assert_eq!(
        (
            south.outside_nhs_amount.as_str(),
            south.outside_nhs_share.as_str()
        ),
        ("0.00", "0.0")
    );
    let (surplus, open) = flag_figures(&w, "icb-south", &today).await;
    assert_eq!(south.surplus_budgets as usize, surplus.len());
    let mut held = 0;
    for b in &surplus {
        held += pence(&w.balance(b).await.held);
    }
    assert_eq!(pence(&south.surplus_held), held);
    // b-b2 holds 5000.00 against 100.00 a week: above 8 weeks' worth.
    assert_eq!(
        (south.surplus_budgets, south.surplus_held.as_str()),
        (1, "5000.00")
    );
    assert_eq!(south.open_flags, open);

    // A later start: without 2026-04-02's equipment.
    let later = summary_as(&w, &auditor, "icb-north", "2026-04-03", &today)
        .await
        .unwrap();
    assert_eq!(later.total_spent, "1945.50");
    assert_eq!(
        lines(&later.by_category)[1],
        ("personal_assistant", "400.00", "20.6", 1)
    );
    // An earlier one: with last year's transport, bought from a local
    // authority (outside the NHS).
    let wider = summary_as(&w, &auditor, "icb-north", "2026-03-01", &today)
        .await
        .unwrap();
    assert_eq!(wider.total_spent, "2155.50");
    assert!(lines(&wider.by_sector).contains(&("SECTOR_LOCAL_AUTHORITY", "60.00", "2.8", 1)));
    assert_eq!(wider.outside_nhs_amount, "760.00");
    assert_eq!(wider.outside_nhs_share, "36.9");
    // One day: 2026-04-02's equipment alone.
    let one_day = summary_as(&w, &auditor, "icb-north", "2026-04-02", "2026-04-02")
        .await
        .unwrap();
    assert_eq!(one_day.total_spent, "150.00");
    assert_eq!(
        lines(&one_day.by_sector),
        [("SECTOR_INDEPENDENT", "150.00", "100.0", 1)]
    );

    // The commissioner itself and root read the same figures.
    let north = w.commissioner.clone();
    assert_eq!(return_as(&w, &north, "icb-north", &q).await.unwrap(), r);
    let root = w.server.root.clone();
    assert_eq!(return_as(&w, &root, "icb-north", &q).await.unwrap(), r);
    assert_eq!(
        summary_as(&w, &north, "icb-north", "2026-04-01", &today)
            .await
            .unwrap(),
        sum
    );

    // The CLI prints the same return.
    let key = w.server.scratch_dir().join("auditor.key");
    std::fs::write(&key, auditor.secret_hex()).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let url = format!("http://{}", w.server.addr);
    let cli = |extra: &[&str]| {
        let mut args = vec![
            "report",
            "quarterly",
            "--server",
            &url,
            "--signer",
            "audit-office",
            "--key",
            key.to_str().unwrap(),
            "--commissioner",
            "icb-north",
            "--quarter",
            &q,
        ];
        args.extend_from_slice(extra);
        std::process::Command::new(env!("CARGO_BIN_EXE_phb-ledger"))
            .args(&args)
            .output()
            .expect("running phb-ledger report")
    };
    let out = cli(&["--csv"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut expected = vec![
        "dimension,value,people_year_to_date,people_active_at_quarter_end,spend_year_to_date"
            .to_string(),
        "total,,5,2,2095.50".to_string(),
    ];
    expected.extend(
        NORTH_ROWS
            .iter()
            .map(|(d, v, p, a, s)| format!("{d},{v},{p},{a},{s}")),
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().collect::<Vec<_>>(), expected);
    let out = cli(&[]);
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        table.contains(&format!("As of sequence {head} ")),
        "{table}"
    );
    assert!(table.contains("not complete"), "{table}");
    let total = table.lines().find(|l| l.starts_with("total")).unwrap();
    assert_eq!(
        total.split_whitespace().collect::<Vec<_>>(),
        ["total", "5", "2", "2095.50"]
    );
    // A commissioner asking for another's: refused, and the CLI says so.
    let south_key = w.server.scratch_dir().join("south.key");
    std::fs::write(&south_key, w.commissioner2.secret_hex()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_phb-ledger"))
        .args([
            "report",
            "quarterly",
            "--server",
            &url,
            "--signer",
            "icb-south",
        ])
        .arg("--key")
        .arg(&south_key)
        .args(["--commissioner", "icb-north", "--quarter", &q, "--csv"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("PERMISSION_DENIED"));
    assert!(out.stdout.is_empty());

    // A restart folds the log again: the same answers.
    w.server.restart();
    w.reconnect().await;
    assert_eq!(return_as(&w, &auditor, "icb-north", &q).await.unwrap(), r);
    assert_eq!(return_as(&w, &auditor, "icb-south", &q).await.unwrap(), s);
    assert_eq!(
        summary_as(&w, &auditor, "icb-north", "2026-04-01", &today)
            .await
            .unwrap(),
        sum
    );
    assert_eq!(
        summary_as(&w, &auditor, "icb-south", "2026-04-01", &today)
            .await
            .unwrap(),
        south
    );
    // A new entry falls in this quarter: the return moves on to it.
    let s2 = w
        .ok(&w.commissioner2.clone(), "b-b1", kinds::stop("ended"))
        .await;
    let after = return_as(&w, &auditor, "icb-south", &q).await.unwrap();
    assert_eq!(after.as_of_sequence, s2);
    assert_eq!(
        (
            after.people_year_to_date,
            after.people_active_at_quarter_end
        ),
        (2, 1)
    );
    let north_after = return_as(&w, &auditor, "icb-north", &q).await.unwrap();
    assert_eq!(rows(&north_after), NORTH_ROWS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_are_scoped_and_check_their_arguments() {
    let w = World::new().await;
    w.open_notional("b-1").await;
    w.fund("b-1", "100.00", None).await;
    let (q, _) = quarters();
    let q = q.to_string();
    let today = day(0);
    let north = "icb-north";

    // The commissioner itself, auditors and root; nobody else.
    for reader in [
        w.commissioner.clone(),
        w.auditor.clone(),
        w.server.root.clone(),
    ] {
        summary_as(&w, &reader, north, "2026-04-01", &today)
            .await
            .unwrap_or_else(|s| panic!("{} reads: {s:?}", reader.id));
        return_as(&w, &reader, north, &q).await.unwrap();
    }
    for reader in [
        w.commissioner2.clone(),
        w.payroll.clone(),
        w.third_party.clone(),
        w.account.clone(),
    ] {
        let s = assert_status(
            summary_as(&w, &reader, north, "2026-04-01", &today).await,
            Code::PermissionDenied,
        );
        assert!(s.message().contains(&reader.id), "{s:?}");
        assert_status(
            return_as(&w, &reader, north, &q).await,
            Code::PermissionDenied,
        );
    }
    // An unknown commissioner just has nothing.
    let a = w.auditor.clone();
    let s = summary_as(&w, &a, "icb-nowhere", "2026-04-01", &today)
        .await
        .unwrap();
    assert_eq!(s.total_spent, "0.00");
    assert!(s.by_category.is_empty() && s.by_management.is_empty() && s.by_sector.is_empty());
    assert_eq!(
        (s.outside_nhs_amount.as_str(), s.outside_nhs_share.as_str()),
        ("0.00", "0.0")
    );
    assert_eq!((s.surplus_budgets, s.surplus_held.as_str()), (0, "0.00"));
    assert!(s.open_flags.is_empty());
    let r = return_as(&w, &a, "icb-nowhere", &q).await.unwrap();
    assert_eq!(
        (r.people_year_to_date, r.spend_year_to_date.as_str()),
        (0, "0.00")
    );
    assert_eq!(r.rows.len(), 16);
    assert!(r
        .rows
        .iter()
        .all(|r| r.people_year_to_date == 0 && r.spend_year_to_date == "0.00"));

    // Bad arguments: INVALID_ARGUMENT naming the field.
    for (commissioner, from, to, field) in [
        ("", "2026-04-01", "2026-06-30", "commissioner_id"),
        ("icb north", "2026-04-01", "2026-06-30", "commissioner_id"),
        (north, "", "2026-06-30", "from"),
        (north, "2026-02-30", "2026-06-30", "from"),
        (north, "2026-4-1", "2026-06-30", "from"),
        (north, "2026-04-01", "30/06/2026", "to"),
        (north, "2026-04-01", "", "to"),
        (north, "2026-07-01", "2026-06-30", "to"),
    ] {
        let s = assert_status(
            summary_as(&w, &a, commissioner, from, to).await,
            Code::InvalidArgument,
        );
        assert!(s.message().contains(field), "{field}: {s:?}");
    }
    let s = assert_status(
        summary_as(&w, &a, north, "2026-07-01", "2026-06-30").await,
        Code::InvalidArgument,
    );
    assert!(s.message().contains("before"), "{s:?}");
    for (commissioner, quarter, field) in [
        ("", q.as_str(), "commissioner_id"),
        (north, "", "quarter"),
        (north, "2026Q5", "quarter"),
        (north, "2026Q0", "quarter"),
        (north, "2026q3", "quarter"),
        (north, "2026-Q3", "quarter"),
        (north, "Q3 2026", "quarter"),
        (north, "1999Q4", "quarter"),
    ] {
        let s = assert_status(
            return_as(&w, &a, commissioner, quarter).await,
            Code::InvalidArgument,
        );
        assert!(s.message().contains(field), "{quarter:?}: {s:?}");
    }
    // Unsigned calls are not answered.
    let unsigned = tonic::Request::new(pb::GetQuarterlyReturnRequest {
        commissioner_id: north.into(),
        quarter: q.clone(),
    });
    assert_status(
        w.client.clone().get_quarterly_return(unsigned).await,
        Code::Unauthenticated,
    );
    // A signature for another method does not do.
    let req = w.auditor.request(
        methods::GET_QUARTERLY_RETURN,
        pb::GetSpendingSummaryRequest {
            commissioner_id: north.into(),
            from: "2026-04-01".into(),
            to: today.clone(),
        },
    );
    assert_status(
        w.client.clone().get_spending_summary(req).await,
        Code::Unauthenticated,
    );
}
