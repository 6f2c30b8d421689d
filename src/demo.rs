//! `phb-ledger demo`: a realistic year in one area, driven through the real API.
//!
//! A commissioner (an integrated care board), a payroll provider, a
//! third-party organisation, an account provider and an auditor are
//! registered; three budgets (direct payment, third party, notional) are
//! opened and funded; the Northamptonshire spending plan from the pilot is
//! paid; a review lowers a notional budget to its cluster cost; one
//! overspend and one payment by the wrong organisation are refused; one
//! budget is stopped. Ids carry a run suffix so the demo can run repeatedly.

use anyhow::{anyhow, bail, Result};
use pb::ledger_service_client::LedgerServiceClient;
use phb_client::{event, kinds, methods, Kind, Signer};
use phb_proto::v1 as pb;
use tonic::transport::Channel;

type Client = LedgerServiceClient<Channel>;

struct Demo {
    client: Client,
    ledger_id: String,
    run: String,
    n: u32,
}

impl Demo {
    fn id(&self, name: &str) -> String {
        format!("{name}-{}", self.run)
    }

    async fn submit(
        &mut self,
        signer: &Signer,
        budget: &str,
        kind: Kind,
    ) -> Result<pb::AppendResult> {
        self.n += 1;
        let ev = event(
            &self.ledger_id,
            &format!("demo-{}-{}", self.run, self.n),
            budget,
            kind,
        );
        let mut results = self
            .client
            .append(pb::AppendRequest {
                events: vec![signer.sign(&ev)],
                atomic: false,
            })
            .await
            .map_err(|s| anyhow!("append failed: {:?}: {}", s.code(), s.message()))?
            .into_inner()
            .results;
        results
            .pop()
            .ok_or_else(|| anyhow!("server returned no result"))
    }

    async fn ok(&mut self, signer: &Signer, budget: &str, kind: Kind, what: &str) -> Result<()> {
        let r = self.submit(signer, budget, kind).await?;
        match r.error {
            Some(e) if e.code != 0 => bail!(
                "{what}: refused ({:?}): {}",
                tonic::Code::from_i32(e.code),
                e.message
            ),
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
                println!(
                    "  refused {what}: {:?} — {}",
                    tonic::Code::from_i32(e.code),
                    e.message
                );
                Ok(())
            }
            _ => bail!(
                "{what} should have been refused but was written at {}",
                r.sequence
            ),
        }
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
            .map_err(|s| anyhow!("ListBalances: {:?}: {}", s.code(), s.message()))?
            .into_inner();
        out.extend(page.balances);
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        token = page.next_page_token;
    }
}

/// Runs the scenario against `server`.
pub async fn run(server: &str, root: Signer, ledger_id: &str) -> Result<()> {
    let client = LedgerServiceClient::connect(server.to_string())
        .await
        .map_err(|e| anyhow!("connecting to {server}: {e}; is `phb-ledger serve` running?"))?;
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
    };

    let icb = Signer::generate(d.id("icb-north"));
    let payroll = Signer::generate(d.id("payroll-co"));
    let third = Signer::generate(d.id("support-trust"));
    let account = Signer::generate(d.id("dp-accounts"));
    let auditor = Signer::generate(d.id("audit-office"));
    println!("Registering organisations (signed by the root key)");
    for (s, role) in [
        (&icb, pb::Role::Commissioner),
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
        kinds::open(
            "holder-7f3a",
            &icb.id,
            pb::Management::DirectPayment,
            &account.id,
            &payroll.id,
        ),
        "open direct-payment budget",
    )
    .await?;
    d.ok(
        &icb,
        &tp,
        kinds::open(
            "holder-11c2",
            &icb.id,
            pb::Management::ThirdParty,
            &third.id,
            "",
        ),
        "open third-party budget",
    )
    .await?;
    d.ok(
        &icb,
        &no,
        kinds::open("holder-90de", &icb.id, pb::Management::Notional, "", ""),
        "open notional budget",
    )
    .await?;

    println!("Direct payment: the Northamptonshire spending plan (budget £4,800.00)");
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
    d.ok(
        &account,
        &dp,
        kinds::pay(
            "808.16",
            pb::PayeeKind::Provider,
            "cmht-1",
            "clinical_service",
        ),
        "4 CMHT sessions (4 x 202.04)",
    )
    .await?;
    d.ok(
        &account,
        &dp,
        kinds::pay(
            "202.04",
            pb::PayeeKind::Provider,
            "psych-1",
            "clinical_service",
        ),
        "1 psychiatric visit",
    )
    .await?;
    d.ok(
        &payroll,
        &dp,
        kinds::pay(
            "2184.00",
            pb::PayeeKind::PersonalAssistant,
            "pa-3b",
            "personal_assistant",
        ),
        "personal assistant, 6 h/week",
    )
    .await?;
    d.ok(
        &account,
        &dp,
        kinds::buy("500.00", "respite", "respite-co", "respite break"),
        "respite break",
    )
    .await?;
    d.ok(
        &account,
        &dp,
        kinds::buy("580.00", "exercise_wellbeing", "gym-9", "gym membership"),
        "gym membership",
    )
    .await?;
    d.ok(
        &account,
        &dp,
        kinds::buy("500.00", "equipment", "pc-shop", "personal computer"),
        "personal computer",
    )
    .await?;
    d.refused(
        &account,
        &dp,
        kinds::buy("26.00", "equipment", "pc-shop", "printer"),
        "a 26.00 printer (only 25.80 held)",
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
        &third,
        &tp,
        kinds::pay(
            "180.71",
            pb::PayeeKind::Provider,
            "crisis-team",
            "clinical_service",
        ),
        "crisis contact",
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
        kinds::pay(
            "202.04",
            pb::PayeeKind::Provider,
            "cmht-1",
            "clinical_service",
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
    Ok(())
}
