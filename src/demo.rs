//! `phb-ledger demo`: a realistic year in one area, driven through the real API.
//!
//! A commissioner (an integrated care board), a plan facilitator, a payroll
//! provider, a third-party organisation, an account provider and an auditor
//! are registered; three budgets (direct payment, third party, notional) are
//! opened and funded. On the direct payment the facilitator approves the
//! Northamptonshire care plan from the pilot (after a plan more than 15 %
//! above the allocation is refused to it), the plan is paid — personal
//! assistants' wages as one atomic payroll run — and excluded spending
//! (alcohol, and a card payment at a betting shop) is refused, recorded and
//! final: a retry of the same bytes gets the same refusal. On the third-party
//! budget respite is paid under a service agreement at its day rate, and a
//! payment above the rate is refused. A review lowers a notional budget to its cluster cost;
//! an overspend and a payment by the wrong organisation are refused; one
//! budget is stopped. A hospital stay, a care review and a National Fraud
//! Initiative match (which raises a flag) are recorded; the summer's
//! purchases are dated in their months, so spending has a history. The
//! care plan is read back with per-line spending.
//! Ids carry a run suffix so the demo can run repeatedly on one server.

use anyhow::{anyhow, bail, Result};
use pb::ledger_service_client::LedgerServiceClient;
use phb_client::{event, kinds, methods, Kind, Signer};
use phb_proto::v1 as pb;
use tonic::transport::Channel;

type Client = LedgerServiceClient<Channel>;

/// 2026-06-01T09:00:00Z: every demo event is dated inside the budgets'
/// period (2026-04-01..2027-03-31) and its care plan, so the demo works
/// whenever it is run (never later than now: the ledger refuses the future).
const DEMO_DATE: i64 = 1_780_304_400;

/// The summer's purchases and an invoice, 09:00 UTC on 2026-07-06,
/// 2026-08-03, 2026-09-07 and 2026-07-13.
const JULY: i64 = 1_783_328_400;
const AUGUST: i64 = 1_785_747_600;
const SEPTEMBER: i64 = 1_788_771_600;
const JULY_INVOICE: i64 = 1_783_933_200;

struct Demo {
    client: Client,
    ledger_id: String,
    run: String,
    n: u32,
    occurred_at: i64,
}

fn code_name(code: i32) -> &'static str {
    crate::json_event::code_name(code)
}

impl Demo {
    /// Dates the following events `at` (never later than now: the ledger
    /// refuses the future).
    fn on(&mut self, at: i64) {
        self.occurred_at = at.min(phb_client::unix_now());
    }

    fn id(&self, name: &str) -> String {
        format!("{name}-{}", self.run)
    }

    /// Signs `kind` on `budget` as a fresh event (new event id, demo date).
    fn sign(&mut self, signer: &Signer, budget: &str, kind: Kind) -> pb::SignedEvent {
        self.n += 1;
        let mut ev = event(
            &self.ledger_id,
            &format!("demo-{}-{}", self.run, self.n),
            budget,
            kind,
        );
        ev.occurred_at = Some(prost_types::Timestamp {
            seconds: self.occurred_at,
            nanos: 0,
        });
        signer.sign(&ev)
    }

    async fn append(
        &mut self,
        events: Vec<pb::SignedEvent>,
        atomic: bool,
    ) -> Result<Vec<pb::AppendResult>> {
        let want = events.len();
        let results = self
            .client
            .append(pb::AppendRequest { events, atomic })
            .await
            .map_err(|s| {
                anyhow!(
                    "append failed: {}: {}",
                    code_name(s.code() as i32),
                    s.message()
                )
            })?
            .into_inner()
            .results;
        if results.len() != want {
            bail!(
                "server returned {} results for {want} events",
                results.len()
            );
        }
        Ok(results)
    }

    async fn submit(
        &mut self,
        signer: &Signer,
        budget: &str,
        kind: Kind,
    ) -> Result<pb::AppendResult> {
        let signed = self.sign(signer, budget, kind);
        let mut results = self.append(vec![signed], false).await?;
        results
            .pop()
            .ok_or_else(|| anyhow!("server returned no result"))
    }

    async fn ok(&mut self, signer: &Signer, budget: &str, kind: Kind, what: &str) -> Result<()> {
        let r = self.submit(signer, budget, kind).await?;
        match r.error {
            Some(e) if e.code != 0 => {
                bail!("{what}: refused ({}): {}", code_name(e.code), e.message)
            }
            _ => {
                println!("  #{:<4} {what}", r.sequence);
                Ok(())
            }
        }
    }

    async fn refused(
        &mut self,
        signer: &Signer,
        budget: &str,
        kind: Kind,
        what: &str,
    ) -> Result<()> {
        let r = self.submit(signer, budget, kind).await?;
        match r.error {
            Some(e) if e.code != 0 => {
                println!("  refused {what}: {} — {}", code_name(e.code), e.message);
                Ok(())
            }
            _ => bail!(
                "{what} should have been refused but was written at {}",
                r.sequence
            ),
        }
    }

    /// A refusal that is a decision: recorded in the log and final. Sends
    /// the same signed bytes again and checks the answer is the same.
    async fn refused_final(
        &mut self,
        signer: &Signer,
        budget: &str,
        kind: Kind,
        what: &str,
    ) -> Result<()> {
        let signed = self.sign(signer, budget, kind);
        let first = self.append(vec![signed.clone()], false).await?.remove(0);
        let e = first.error.clone().unwrap_or_default();
        if e.code == 0 {
            bail!(
                "{what} should have been refused but was written at {}",
                first.sequence
            );
        }
        if first.refusal_sequence == 0 {
            bail!("{what}: the refusal was not recorded: {first:?}");
        }
        println!("  refused {what}: {} — {}", code_name(e.code), e.message);
        println!(
            "         recorded at refusal_sequence {} (final: the event can never be applied)",
            first.refusal_sequence
        );
        let again = self.append(vec![signed], false).await?.remove(0);
        let a = again.error.clone().unwrap_or_default();
        if !again.duplicate
            || a.code != e.code
            || a.message != e.message
            || again.refusal_sequence != first.refusal_sequence
            || again.entry_hash != first.entry_hash
        {
            bail!("{what}: a retry of the same bytes got a different answer: {again:?}");
        }
        println!(
            "         retry of the same bytes: duplicate, {} again at refusal_sequence {}",
            code_name(a.code),
            again.refusal_sequence
        );
        Ok(())
    }
}

/// Every balance `reader` may see, following page tokens.
pub async fn list_all(client: &mut Client, reader: &Signer) -> Result<Vec<pb::Balance>> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let req = reader.request(
            methods::LIST_BALANCES,
            pb::ListBalancesRequest {
                commissioner_id: String::new(),
                page_size: 100,
                page_token: token,
            },
        );
        let page = client
            .list_balances(req)
            .await
            .map_err(|s| {
                anyhow!(
                    "ListBalances: {}: {}",
                    code_name(s.code() as i32),
                    s.message()
                )
            })?
            .into_inner();
        out.extend(page.balances);
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        token = page.next_page_token;
    }
}

/// A ServiceAgreementApproved in force over the budget year, with a
/// payee who is not a connected person.
fn agreement(
    id: &str,
    payee_ref: &str,
    (payee_kind, payee_sector): (pb::PayeeKind, pb::Sector),
    category: &str,
    unit: pb::Unit,
    rate: &str,
    max_units_per_week: u32,
) -> Kind {
    Kind::ServiceAgreementApproved(pb::ServiceAgreementApproved {
        agreement_id: id.into(),
        payee_ref: payee_ref.into(),
        payee_kind: payee_kind as i32,
        payee_sector: payee_sector as i32,
        category: category.into(),
        unit: unit as i32,
        rate: rate.into(),
        max_units_per_week,
        valid_from: "2026-04-01".into(),
        valid_to: "2027-03-31".into(),
        connected_person: false,
    })
}

/// A Payment under agreement `id` for `units` over the service period
/// `(from, to)`.
fn under(
    id: &str,
    amount: &str,
    units: &str,
    payee_kind: pb::PayeeKind,
    payee_ref: &str,
    category: &str,
    (from, to): (&str, &str),
) -> Kind {
    Kind::Payment(pb::Payment {
        amount: amount.into(),
        payee_kind: payee_kind as i32,
        payee_ref: payee_ref.into(),
        category: category.into(),
        agreement_id: id.into(),
        units: units.into(),
        service_from: from.into(),
        service_to: to.into(),
        ..Default::default()
    })
}

/// An opening with the cohort and age band the quarterly return counts by
/// (every demo holder is an adult).
fn in_cohort(k: Kind, cohort: pb::Cohort) -> Kind {
    match k {
        Kind::BudgetOpened(o) => Kind::BudgetOpened(pb::BudgetOpened {
            cohort: cohort as i32,
            age_band: pb::AgeBand::Adult as i32,
            ..o
        }),
        other => other,
    }
}

/// Runs the scenario against `server`. With `keys_out`, the organisations'
/// secret keys are written there (`{org}.key`, 0600) with `demo.json`
/// naming the organisations and budgets, so another tool (the dashboard and
/// its browser test) can read as them.
pub async fn run(
    server: &str,
    root: Signer,
    ledger_id: &str,
    keys_out: Option<&std::path::Path>,
) -> Result<()> {
    // The one way client commands connect: `host:port` or a URL, TLS
    // from PHB_LEDGER_TLS_*, an unreachable server named.
    let client = crate::connect::connect(server, None, crate::connect::MAX_ANSWER_BYTES).await?;
    // Time plus random bits: two runs in the same second must not collide
    // on event ids (the second would be refused ALREADY_EXISTS).
    let run = format!(
        "{:x}{:04x}",
        phb_client::unix_now(),
        rand_core::RngCore::next_u32(&mut rand_core::OsRng) & 0xffff
    );
    let mut d = Demo {
        client,
        ledger_id: ledger_id.to_string(),
        run,
        n: 0,
        occurred_at: DEMO_DATE.min(phb_client::unix_now()),
    };

    let icb = Signer::generate(d.id("icb-north"));
    let facilitator = Signer::generate(d.id("plan-support"));
    let payroll = Signer::generate(d.id("payroll-co"));
    let third = Signer::generate(d.id("support-trust"));
    let account = Signer::generate(d.id("dp-accounts"));
    let auditor = Signer::generate(d.id("audit-office"));
    println!("Registering organisations (signed by the root key)");
    for (s, role) in [
        (&icb, pb::Role::Commissioner),
        (&facilitator, pb::Role::PlanFacilitator),
        (&payroll, pb::Role::PayrollProvider),
        (&third, pb::Role::ThirdParty),
        (&account, pb::Role::AccountProvider),
        (&auditor, pb::Role::Auditor),
    ] {
        let what = format!("register {} as {}", s.id, role.as_str_name());
        d.ok(
            &root,
            "",
            kinds::register(&s.id, &[role], &s.public_key().to_bytes()),
            &what,
        )
        .await?;
    }

    let dp = d.id("phb-dp");
    let tp = d.id("phb-tp");
    let no = d.id("phb-notional");
    println!("Opening budgets");
    d.ok(
        &icb,
        &dp,
        in_cohort(
            kinds::open(
                "holder-7f3a",
                &icb.id,
                pb::Management::DirectPayment,
                &account.id,
                &payroll.id,
            ),
            pb::Cohort::ContinuingHealthcare,
        ),
        "open direct-payment budget",
    )
    .await?;
    d.ok(
        &icb,
        &tp,
        in_cohort(
            kinds::open(
                "holder-11c2",
                &icb.id,
                pb::Management::ThirdParty,
                &third.id,
                "",
            ),
            pb::Cohort::LearningDisabilityAutism,
        ),
        "open third-party budget",
    )
    .await?;
    d.ok(
        &icb,
        &no,
        in_cohort(
            kinds::open("holder-90de", &icb.id, pb::Management::Notional, "", ""),
            pb::Cohort::MentalHealthS117,
        ),
        "open notional budget",
    )
    .await?;

    println!("Direct payment: the Northamptonshire care plan (budget £4,800.00)");
    d.ok(
        &icb,
        &dp,
        kinds::allocate("4800.00", pb::AllocationBasis::NeedsBased),
        "allocate 4800.00",
    )
    .await?;
    d.ok(
        &icb,
        &dp,
        kinds::disburse("4800.00"),
        "disburse 4800.00 to the holder's account",
    )
    .await?;
    let appoint = format!("appoint {} as plan facilitator", facilitator.id);
    d.ok(
        &icb,
        &dp,
        kinds::appoint_facilitator(&facilitator.id),
        &appoint,
    )
    .await?;
    d.refused(
        &facilitator,
        &dp,
        kinds::plan(
            &d.id("plan-too-big"),
            &[("pa", "personal_assistant", "5520.01", "")],
            "0.00",
        ),
        "a 5520.01 plan signed by the facilitator (more than 15 % above 4800.00)",
    )
    .await?;
    let plan_id = d.id("plan-2026");
    d.ok(
        &facilitator,
        &dp,
        kinds::plan(
            &plan_id,
            &[
                (
                    "cmht",
                    "clinical_service",
                    "808.16",
                    "4 CMHT sessions (4 x 202.04)",
                ),
                ("psych", "clinical_service", "202.04", "1 psychiatric visit"),
                (
                    "pa",
                    "personal_assistant",
                    "2184.00",
                    "personal assistant, 6 h/week",
                ),
                ("respite", "respite", "500.00", "respite break"),
                ("gym", "exercise_wellbeing", "580.00", "gym membership"),
                ("computer", "it_equipment", "500.00", "personal computer"),
            ],
            "25.80",
        ),
        "care plan approved by the facilitator: 6 lines + 25.80 contingency = 4800.00",
    )
    .await?;
    // Providers and personal assistants are paid only under an approved
    // service agreement, at its rate, for a service period already over.
    let cmht = d.id("cmht-sessions");
    let psych = d.id("psych-visits");
    for (id, payee, what) in [
        (&cmht, "cmht-1", "CMHT sessions at 202.04 each"),
        (&psych, "psych-1", "psychiatric visits at 202.04 each"),
    ] {
        let k = agreement(
            id,
            payee,
            (pb::PayeeKind::Provider, pb::Sector::Nhs),
            "clinical_service",
            pb::Unit::Item,
            "202.04",
            0,
        );
        d.ok(&facilitator, &dp, k, &format!("service agreement: {what}"))
            .await?;
    }
    let april = ("2026-04-06", "2026-04-30");
    d.ok(
        &account,
        &dp,
        under(
            &cmht,
            "808.16",
            "4",
            pb::PayeeKind::Provider,
            "cmht-1",
            "clinical_service",
            april,
        ),
        "4 CMHT sessions (4 x 202.04), under the agreement",
    )
    .await?;
    d.ok(
        &account,
        &dp,
        under(
            &psych,
            "202.04",
            "1",
            pb::PayeeKind::Provider,
            "psych-1",
            "clinical_service",
            april,
        ),
        "1 psychiatric visit, under the agreement",
    )
    .await?;
    d.refused(
        &account,
        &dp,
        kinds::pay(
            "202.04",
            pb::PayeeKind::Provider,
            "cmht-1",
            "clinical_service",
        ),
        "a CMHT invoice naming no agreement",
    )
    .await?;
    // Three personal assistants share the plan's 6 hours a week at £7.00
    // an hour, each under an agreement with a weekly limit.
    let pas = [("pa-3b", 3u32), ("pa-5e", 2), ("pa-8a", 1)];
    for (pa, hours) in pas {
        let k = agreement(
            &d.id(&format!("agr-{pa}")),
            pa,
            (pb::PayeeKind::PersonalAssistant, pb::Sector::Individual),
            "personal_assistant",
            pb::Unit::Hour,
            "7.00",
            hours,
        );
        let what = format!("service agreement: {pa}, {hours} h/week at 7.00 an hour");
        d.ok(&facilitator, &dp, k, &what).await?;
    }
    // Eight weeks of wages in arrears and the employer's pension
    // contribution, posted by the payroll provider as one atomic batch:
    // all of it or none of it.
    let period = ("2026-04-06", "2026-05-31");
    let mut run: Vec<(String, Kind)> = pas
        .iter()
        .map(|(pa, hours)| {
            let units = hours * 8;
            let amount = format!("{}.00", units * 7);
            let k = under(
                &d.id(&format!("agr-{pa}")),
                &amount,
                &units.to_string(),
                pb::PayeeKind::PersonalAssistant,
                pa,
                "personal_assistant",
                period,
            );
            (format!("wages {amount} to {pa} ({units} h)"), k)
        })
        .collect();
    run.push((
        "employer pension 10.08 (3 % of 336.00) to the pension scheme".to_string(),
        kinds::pay(
            "10.08",
            pb::PayeeKind::PensionScheme,
            "nest-1",
            "personal_assistant",
        ),
    ));
    let batch = run
        .iter()
        .map(|(_, k)| d.sign(&payroll, &dp, k.clone()))
        .collect();
    println!("  payroll run by {}: one atomic Append", payroll.id);
    let results = d.append(batch, true).await?;
    for (r, (what, _)) in results.iter().zip(&run) {
        let e = r.error.clone().unwrap_or_default();
        if e.code != 0 {
            bail!("payroll run refused ({}): {}", code_name(e.code), e.message);
        }
        println!("  #{:<4}   {what}", r.sequence);
    }
    d.refused(
        &payroll,
        &dp,
        under(
            &d.id("agr-pa-8a"),
            "70.00",
            "10",
            pb::PayeeKind::PersonalAssistant,
            "pa-8a",
            "personal_assistant",
            period,
        ),
        "10 hours for pa-8a over 8 weeks (agreed: at most 1 a week)",
    )
    .await?;
    // Bought over the summer, so the spending has a history by month.
    d.on(JULY);
    d.ok(
        &account,
        &dp,
        kinds::buy("580.00", "exercise_wellbeing", "gym-9", "gym membership"),
        "gym membership (July)",
    )
    .await?;
    d.on(AUGUST);
    d.ok(
        &account,
        &dp,
        kinds::buy("500.00", "it_equipment", "pc-shop", "personal computer"),
        "personal computer (August)",
    )
    .await?;
    d.on(SEPTEMBER);
    d.ok(
        &account,
        &dp,
        kinds::buy("500.00", "respite", "respite-co", "respite break"),
        "respite break (September)",
    )
    .await?;
    d.on(DEMO_DATE);
    d.refused(
        &account,
        &dp,
        kinds::buy("26.00", "it_equipment", "pc-shop", "printer"),
        "a 26.00 printer (the computer line is used; 25.80 contingency left)",
    )
    .await?;
    d.refused_final(
        &account,
        &dp,
        kinds::buy("12.50", "alcohol", "offlicence-2", "wine"),
        "a 12.50 alcohol purchase (excluded, whatever the plan)",
    )
    .await?;
    d.refused_final(
        &account,
        &dp,
        kinds::card("25.00", 7995, pb::CardChannel::Pos),
        "a 25.00 card payment at a betting shop (merchant category 7995, blocked)",
    )
    .await?;
    d.refused(
        &payroll,
        &dp,
        kinds::pay(
            "10.00",
            pb::PayeeKind::Provider,
            "cmht-1",
            "clinical_service",
        ),
        "payroll provider paying a provider",
    )
    .await?;

    println!("Third party: funds held by {}", third.id);
    d.ok(
        &icb,
        &tp,
        kinds::allocate("3855.00", pb::AllocationBasis::ExistingServices),
        "allocate 3855.00",
    )
    .await?;
    d.ok(
        &icb,
        &tp,
        kinds::disburse("1927.50"),
        "disburse half-year 1927.50",
    )
    .await?;
    d.ok(
        &icb,
        &tp,
        kinds::plan(
            &d.id("plan-tp"),
            &[
                (
                    "crisis",
                    "clinical_service",
                    "1000.00",
                    "crisis team contacts",
                ),
                ("respite", "respite", "2855.00", "respite days"),
            ],
            "0.00",
        ),
        "care plan approved by the commissioner: crisis contacts and respite",
    )
    .await?;
    let crisis = d.id("crisis-contacts");
    let k = agreement(
        &crisis,
        "crisis-team",
        (pb::PayeeKind::Provider, pb::Sector::Nhs),
        "clinical_service",
        pb::Unit::Item,
        "180.71",
        0,
    );
    d.ok(
        &icb,
        &tp,
        k,
        "service agreement: crisis contacts at 180.71 each",
    )
    .await?;
    d.ok(
        &third,
        &tp,
        under(
            &crisis,
            "180.71",
            "1",
            pb::PayeeKind::Provider,
            "crisis-team",
            "clinical_service",
            april,
        ),
        "crisis contact",
    )
    .await?;
    // Respite care at an agreed day rate: paid only under the agreement,
    // at its rate, for days already given.
    let respite = d.id("respite-days");
    let k = agreement(
        &respite,
        "respite-home",
        (pb::PayeeKind::Provider, pb::Sector::Independent),
        "respite",
        pb::Unit::Day,
        "120.00",
        7,
    );
    d.ok(&icb, &tp, k, "service agreement: respite at 120.00 a day")
        .await?;
    let days = ("2026-05-04", "2026-05-06");
    d.on(JULY_INVOICE);
    d.ok(
        &third,
        &tp,
        under(
            &respite,
            "360.00",
            "3",
            pb::PayeeKind::Provider,
            "respite-home",
            "respite",
            days,
        ),
        "3 days of respite under the agreement (invoiced in July)",
    )
    .await?;
    d.on(DEMO_DATE);
    d.refused(
        &third,
        &tp,
        under(
            &respite,
            "400.00",
            "3",
            pb::PayeeKind::Provider,
            "respite-home",
            "respite",
            days,
        ),
        "400.00 for the same 3 days (not the agreed rate)",
    )
    .await?;

    println!("Notional: kept by the commissioner; review moves it to cluster cost");
    d.ok(
        &icb,
        &no,
        kinds::allocate("6061.20", pb::AllocationBasis::NeedsBased),
        "indicative budget 6061.20",
    )
    .await?;
    d.ok(
        &icb,
        &no,
        kinds::plan(
            &d.id("plan-notional"),
            &[("cmht", "clinical_service", "6061.20", "CMHT contacts")],
            "0.00",
        ),
        "care plan approved by the commissioner: CMHT contacts",
    )
    .await?;
    let contacts = d.id("cmht-contacts");
    let k = agreement(
        &contacts,
        "cmht-1",
        (pb::PayeeKind::Provider, pb::Sector::Nhs),
        "clinical_service",
        pb::Unit::Item,
        "202.04",
        0,
    );
    d.ok(
        &icb,
        &no,
        k,
        "service agreement: CMHT contacts at 202.04 each",
    )
    .await?;
    d.ok(
        &icb,
        &no,
        under(
            &contacts,
            "202.04",
            "1",
            pb::PayeeKind::Provider,
            "cmht-1",
            "clinical_service",
            april,
        ),
        "CMHT contact",
    )
    .await?;
    d.ok(
        &icb,
        &no,
        kinds::review("-587.20", "moved to mental-health cluster cost 5474.00"),
        "review -587.20",
    )
    .await?;
    d.ok(&icb, &no, kinds::stop("care plan ended"), "stop budget")
        .await?;
    d.refused(
        &icb,
        &no,
        kinds::pay(
            "10.00",
            pb::PayeeKind::Provider,
            "cmht-1",
            "clinical_service",
        ),
        "payment after stop",
    )
    .await?;

    println!("Hospital stay, a care review and a data match (the last raises a flag)");
    d.ok(
        &icb,
        &dp,
        kinds::admitted("2026-05-11"),
        "admitted to hospital 2026-05-11",
    )
    .await?;
    d.ok(
        &icb,
        &dp,
        kinds::discharged("2026-05-15"),
        "discharged 2026-05-15",
    )
    .await?;
    d.ok(
        &icb,
        &dp,
        kinds::reviewed(
            "2026-05-29",
            pb::ReviewKind::CareReview,
            "plan meets needs; keep the respite line",
        ),
        "care review recorded",
    )
    .await?;
    let matched = d
        .submit(
            &icb,
            &tp,
            kinds::external_match("NFI-2026", pb::MatchKind::Payroll, "m-77"),
        )
        .await?;
    match (&matched.error, matched.flags.first()) {
        (Some(e), _) if e.code != 0 => bail!(
            "external match refused ({}): {}",
            code_name(e.code),
            e.message
        ),
        (_, Some(f)) => println!(
            "  #{:<4} NFI payroll match recorded, flagged {}",
            matched.sequence, f.flag_id
        ),
        (_, None) => bail!("the external match raised no flag: {matched:?}"),
    }
    if let Some(dir) = keys_out {
        write_keys(
            dir,
            &[&icb, &facilitator, &payroll, &third, &account, &auditor],
            &[&dp, &tp, &no],
        )?;
        println!(
            "Organisations' keys and demo.json written to {}",
            dir.display()
        );
    }

    println!("\nBalances as the auditor sees them:");
    println!(
        "  {:<28} {:<16} {:>10} {:>10} {:>10} {:>10} {:>10}  stopped",
        "budget", "management", "allocated", "paid_in", "spent", "held", "available"
    );
    for b in list_all(&mut d.client, &auditor)
        .await?
        .iter()
        .filter(|b| b.budget_id.ends_with(&d.run))
    {
        let m = pb::Management::try_from(b.management)
            .map(|m| m.as_str_name().trim_start_matches("MANAGEMENT_"))
            .unwrap_or("?");
        println!(
            "  {:<28} {:<16} {:>10} {:>10} {:>10} {:>10} {:>10}  {}",
            b.budget_id, m, b.allocated, b.paid_in, b.spent, b.held, b.available, b.stopped
        );
    }

    let req = auditor.request(
        methods::GET_CARE_PLAN,
        pb::GetCarePlanRequest {
            budget_id: dp.clone(),
        },
    );
    let p = d
        .client
        .get_care_plan(req)
        .await
        .map_err(|s| {
            anyhow!(
                "GetCarePlan: {}: {}",
                code_name(s.code() as i32),
                s.message()
            )
        })?
        .into_inner();
    println!(
        "\nCare plan {} on {} (approved by {} at #{}; {}..{}, review due {}):",
        p.plan_id,
        p.budget_id,
        p.approved_by,
        p.approved_at_sequence,
        p.valid_from,
        p.valid_to,
        p.review_due
    );
    println!(
        "  {:<11} {:<20} {:>10} {:>10} {:>10}  description",
        "line", "category", "annual", "spent", "remaining"
    );
    for l in &p.lines {
        println!(
            "  {:<11} {:<20} {:>10} {:>10} {:>10}  {}",
            l.line_id, l.category, l.annual_amount, l.spent, l.remaining, l.description
        );
    }
    println!(
        "  {:<11} {:<20} {:>10} {:>10}",
        "contingency", "", p.contingency_amount, p.contingency_used
    );
    println!("  {:<11} {:<20} {:>10}", "total", "", p.total);
    Ok(())
}

/// `demo --keys-out DIR`: each organisation's secret key as `{org}.key`
/// (0600, like `keygen`) and `demo.json`: `{"organisations": {role: id},
/// "budgets": [ids]}` with roles commissioner, plan_facilitator, payroll,
/// third_party, account_provider, auditor in that order.
fn write_keys(dir: &std::path::Path, orgs: &[&Signer], budgets: &[&String]) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| anyhow!("creating {}: {e}", dir.display()))?;
    for s in orgs {
        crate::write_secret(&dir.join(format!("{}.key", s.id)), &s.secret_hex())?;
    }
    let roles = [
        "commissioner",
        "plan_facilitator",
        "payroll",
        "third_party",
        "account_provider",
        "auditor",
    ];
    let organisations: serde_json::Map<String, serde_json::Value> = roles
        .iter()
        .zip(orgs)
        .map(|(r, s)| (r.to_string(), serde_json::Value::from(s.id.clone())))
        .collect();
    let doc = serde_json::json!({
        "organisations": organisations,
        "budgets": budgets,
    });
    std::fs::write(dir.join("demo.json"), format!("{doc}\n"))
        .map_err(|e| anyhow!("writing {}: {e}", dir.join("demo.json").display()))
}
