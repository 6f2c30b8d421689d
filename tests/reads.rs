//! Reads against the real server: scoped balances, read-call authentication,
//! ListBalances paging, ReadLog catch-up, follow and the hash chain.

mod common;

use common::*;
use futures::StreamExt;
use pb::{AllocationBasis as Basis, Management};
use phb_client::{kinds, methods, unix_now, Signer};
use phb_proto::v1 as pb;
use std::time::Duration;
use tonic::metadata::MetadataValue;
use tonic::Code;

fn get_req(budget_id: &str) -> pb::GetBalanceRequest {
    pb::GetBalanceRequest {
        budget_id: budget_id.into(),
    }
}

/// Who may see which balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_balance_reads() {
    let w = World::new().await;
    let (c, c2, acct, tp, payroll, auditor, root) = (
        w.commissioner.clone(),
        w.commissioner2.clone(),
        w.account.clone(),
        w.third_party.clone(),
        w.payroll.clone(),
        w.auditor.clone(),
        w.server.root.clone(),
    );
    let d = "scope-dp"; // names account + payroll
    let t = "scope-tp"; // names the third party
    let n = "scope-notional";
    w.open_direct(d).await;
    w.open_third_party(t).await;
    w.open_notional(n).await;
    w.fund(d, "100.00", Some("60.00")).await;
    let other = "scope-c2";
    let k = kinds::open("h-c2", &c2.id, Management::Notional, "", "");
    w.ok(&c2, other, k).await;

    let cl = &w.client;
    // The commissioner sees its own budgets, the other commissioner does not.
    for b in [d, t, n] {
        let bal = get_balance(cl, &c, b).await.unwrap();
        assert_eq!(bal.budget_id, b);
        assert_eq!(bal.commissioner_id, c.id);
        assert_status(get_balance(cl, &c2, b).await, Code::PermissionDenied);
    }
    assert_eq!(
        get_balance(cl, &c2, other).await.unwrap().commissioner_id,
        c2.id
    );
    assert_status(get_balance(cl, &c, other).await, Code::PermissionDenied);
    // Providers see the budgets that name them, and only those.
    let bal = get_balance(cl, &payroll, d).await.unwrap();
    assert_eq!(
        (bal.allocated.as_str(), bal.held.as_str()),
        ("100.00", "60.00")
    );
    assert!(get_balance(cl, &acct, d).await.is_ok());
    assert!(get_balance(cl, &tp, t).await.is_ok());
    for (reader, b) in [
        (&payroll, t),
        (&payroll, n),
        (&acct, t),
        (&tp, d),
        (&tp, n),
        (&acct, other),
    ] {
        assert_status(get_balance(cl, reader, b).await, Code::PermissionDenied);
    }
    // The auditor and the root key see everything.
    for reader in [&auditor, &root] {
        for b in [d, t, n, other] {
            assert_eq!(get_balance(cl, reader, b).await.unwrap().budget_id, b);
        }
    }
    // Unknown and malformed budget ids.
    assert_status(get_balance(cl, &auditor, "no-such").await, Code::NotFound);
    assert_status(
        get_balance(cl, &auditor, "bad id").await,
        Code::InvalidArgument,
    );
    assert_status(get_balance(cl, &auditor, "").await, Code::InvalidArgument);

    // ReadLog: auditors and root only.
    for reader in [&c, &c2, &payroll, &acct, &tp] {
        let req = reader.request(
            methods::READ_LOG,
            pb::ReadLogRequest {
                from_sequence: 1,
                follow: false,
            },
        );
        assert_status(
            w.client.clone().read_log(req).await.map(|_| ()),
            Code::PermissionDenied,
        );
    }
    let by_root = read_log(cl, &root, 1).await;
    let by_auditor = read_log(cl, &auditor, 1).await;
    assert_eq!(by_root, by_auditor);
    assert!(!by_root.is_empty());
}

/// Read calls carry x-phb-org, x-phb-timestamp and x-phb-signature; every
/// way of getting them wrong is UNAUTHENTICATED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_authentication_failures() {
    let w = World::new().await;
    let c = w.commissioner.clone();
    let b = "auth-b";
    w.open_notional(b).await;
    let mut cl = w.client.clone();
    let un = Code::Unauthenticated;

    // Properly signed, now and within the allowed skew: fine.
    for skew in [0, -200, 200] {
        let mut r = tonic::Request::new(get_req(b));
        c.authorize_at(&mut r, methods::GET_BALANCE, unix_now() + skew);
        assert!(cl.get_balance(r).await.is_ok(), "skew {skew}");
    }
    // Stale or future timestamps.
    for skew in [-1000, 1000, -100_000] {
        let mut r = tonic::Request::new(get_req(b));
        c.authorize_at(&mut r, methods::GET_BALANCE, unix_now() + skew);
        assert_status(cl.get_balance(r).await, un);
    }
    // A forged signature: someone else's key claiming to be the commissioner.
    let forger = Signer::generate(c.id.clone());
    assert_status(
        cl.get_balance(forger.request(methods::GET_BALANCE, get_req(b)))
            .await,
        un,
    );
    // A valid signature for a different method is not valid for this one.
    let mut r = tonic::Request::new(get_req(b));
    c.authorize_at(&mut r, methods::LIST_BALANCES, unix_now());
    assert_status(cl.get_balance(r).await, un);
    // A valid signature presented under another organisation's id.
    let mut r = c.request(methods::GET_BALANCE, get_req(b));
    r.metadata_mut()
        .insert("x-phb-org", MetadataValue::from_static("icb-south"));
    assert_status(cl.get_balance(r).await, un);
    // A valid signature with the timestamp header changed afterwards.
    let mut r = tonic::Request::new(get_req(b));
    let signed_at = unix_now();
    c.authorize_at(&mut r, methods::GET_BALANCE, signed_at);
    let ts = (signed_at - 1).to_string();
    r.metadata_mut()
        .insert("x-phb-timestamp", ts.parse().unwrap());
    assert_status(cl.get_balance(r).await, un);
    // A timestamp that is not a number.
    let mut r = c.request(methods::GET_BALANCE, get_req(b));
    r.metadata_mut()
        .insert("x-phb-timestamp", MetadataValue::from_static("yesterday"));
    assert_status(cl.get_balance(r).await, un);
    // A signature that is not base64, or is truncated.
    let mut r = c.request(methods::GET_BALANCE, get_req(b));
    r.metadata_mut().insert(
        "x-phb-signature",
        MetadataValue::from_static("!!not-base64!!"),
    );
    assert_status(cl.get_balance(r).await, un);
    let mut r = c.request(methods::GET_BALANCE, get_req(b));
    r.metadata_mut()
        .insert("x-phb-signature", MetadataValue::from_static("AAAA"));
    assert_status(cl.get_balance(r).await, un);
    // Unknown organisation.
    let stranger = Signer::generate("stranger");
    assert_status(
        cl.get_balance(stranger.request(methods::GET_BALANCE, get_req(b)))
            .await,
        un,
    );
    // Missing metadata: all of it, or any one key.
    assert_status(cl.get_balance(tonic::Request::new(get_req(b))).await, un);
    for key in ["x-phb-org", "x-phb-timestamp", "x-phb-signature"] {
        let mut r = c.request(methods::GET_BALANCE, get_req(b));
        r.metadata_mut().remove(key);
        assert_status(cl.get_balance(r).await, un);
    }
    // The same rules on the other read calls.
    assert_status(
        cl.list_balances(tonic::Request::new(pb::ListBalancesRequest::default()))
            .await,
        un,
    );
    let mut r = tonic::Request::new(pb::ListBalancesRequest::default());
    c.authorize_at(&mut r, methods::LIST_BALANCES, unix_now() - 1000);
    assert_status(cl.list_balances(r).await, un);
    assert_status(
        cl.read_log(tonic::Request::new(pb::ReadLogRequest::default()))
            .await
            .map(|_| ()),
        un,
    );
    let mut r = tonic::Request::new(pb::ReadLogRequest::default());
    w.auditor
        .authorize_at(&mut r, methods::READ_LOG, unix_now() - 1000);
    assert_status(cl.read_log(r).await.map(|_| ()), un);
    let forged_auditor = Signer::generate(w.auditor.id.clone());
    let r = forged_auditor.request(methods::READ_LOG, pb::ReadLogRequest::default());
    assert_status(cl.read_log(r).await.map(|_| ()), un);
    // A forged root.
    let fake_root = Signer::generate("root");
    assert_status(
        cl.get_balance(fake_root.request(methods::GET_BALANCE, get_req(b)))
            .await,
        un,
    );
}

/// ListBalances: ordered by budget id, paged with tokens, filtered by commissioner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_balances_paging() {
    let w = World::new().await;
    let (c, c2, payroll, tp, auditor, root) = (
        w.commissioner.clone(),
        w.commissioner2.clone(),
        w.payroll.clone(),
        w.third_party.clone(),
        w.auditor.clone(),
        w.server.root.clone(),
    );
    // Five budgets of the commissioner, two of the other interleaved by id.
    w.open_notional("b-09").await;
    w.open_direct("b-03").await;
    w.open_third_party("b-05").await;
    w.open_notional("b-01").await;
    w.open_direct("b-07").await;
    let k = kinds::open(
        "h",
        &c2.id,
        Management::DirectPayment,
        &w.account.id,
        &payroll.id,
    );
    w.ok(&c2, "b-06", k).await;
    let k = kinds::open("h", &c2.id, Management::Notional, "", "");
    w.ok(&c2, "b-02", k).await;
    w.fund("b-05", "50.00", Some("20.00")).await;
    let cl = &w.client;
    let ids = |v: &[pb::Balance]| v.iter().map(|b| b.budget_id.clone()).collect::<Vec<_>>();
    let mine = ["b-01", "b-03", "b-05", "b-07", "b-09"];

    // Page size 2 over five budgets: 2, 2, 1, with tokens between.
    for filter in ["", c.id.as_str()] {
        let p1 = list_page(cl, &c, filter, 2, "").await.unwrap();
        assert_eq!(ids(&p1.balances), ["b-01", "b-03"]);
        assert!(!p1.next_page_token.is_empty());
        let p2 = list_page(cl, &c, filter, 2, &p1.next_page_token)
            .await
            .unwrap();
        assert_eq!(ids(&p2.balances), ["b-05", "b-07"]);
        assert!(!p2.next_page_token.is_empty());
        let p3 = list_page(cl, &c, filter, 2, &p2.next_page_token)
            .await
            .unwrap();
        assert_eq!(ids(&p3.balances), ["b-09"]);
        assert_eq!(p3.next_page_token, "", "last page has no token");
        // The balances in a list are the same as GetBalance's.
        assert_eq!(p2.balances[0], get_balance(cl, &c, "b-05").await.unwrap());
        assert_eq!(p2.balances[0].held, "20.00");
    }
    // A page that ends exactly at the last visible budget has no token.
    let p = list_page(cl, &c, "", 5, "").await.unwrap();
    assert_eq!(ids(&p.balances), mine);
    assert_eq!(p.next_page_token, "");
    // 0 means the default page size (100); very large sizes are capped.
    for size in [0, 100_000] {
        let p = list_page(cl, &c, "", size, "").await.unwrap();
        assert_eq!(ids(&p.balances), mine);
        assert_eq!(p.next_page_token, "");
    }
    // A commissioner may only name itself.
    assert_status(
        list_page(cl, &c, &c2.id, 2, "").await,
        Code::PermissionDenied,
    );
    assert_status(
        list_page(cl, &c2, &c.id, 2, "").await,
        Code::PermissionDenied,
    );
    assert_eq!(ids(&list_all(cl, &c2, "", 1).await), ["b-02", "b-06"]);

    // The auditor and root see everything, and may filter by commissioner.
    for reader in [&auditor, &root] {
        assert_eq!(
            ids(&list_all(cl, reader, "", 2).await),
            ["b-01", "b-02", "b-03", "b-05", "b-06", "b-07", "b-09"]
        );
        assert_eq!(ids(&list_all(cl, reader, &c.id, 2).await), mine);
        let p = list_page(cl, reader, &c2.id, 2, "").await.unwrap();
        assert_eq!(ids(&p.balances), ["b-02", "b-06"]);
        assert_eq!(p.next_page_token, "", "no empty trailing page");
        assert!(list_all(cl, reader, "nobody", 2).await.is_empty());
    }
    // Providers see what names them, across commissioners.
    assert_eq!(
        ids(&list_all(cl, &payroll, "", 2).await),
        ["b-03", "b-06", "b-07"]
    );
    assert_eq!(
        ids(&list_all(cl, &payroll, &c.id, 2).await),
        ["b-03", "b-07"]
    );
    assert_eq!(ids(&list_all(cl, &tp, "", 2).await), ["b-05"]);

    // Tokens the server did not issue.
    for bad in ["garbage", "after:bad id", "after:", "b-03"] {
        assert_status(list_page(cl, &c, "", 2, bad).await, Code::InvalidArgument);
    }

    // A walk stays consistent while budgets are added: no duplicates, no gaps.
    let p1 = list_page(cl, &c, "", 2, "").await.unwrap();
    w.open_notional("b-04").await; // after the token
    w.open_notional("b-00").await; // before the token
    let mut walked = ids(&p1.balances);
    let mut token = p1.next_page_token;
    while !token.is_empty() {
        let p = list_page(cl, &c, "", 2, &token).await.unwrap();
        walked.extend(ids(&p.balances));
        token = p.next_page_token;
    }
    assert_eq!(walked, ["b-01", "b-03", "b-04", "b-05", "b-07", "b-09"]);
}

/// ReadLog: catch-up from the start and from the middle, the hash chain
/// recomputed, signatures verified, and entries matching append results.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_log_catch_up_and_chain() {
    let w = World::new().await;
    let (c, acct, payroll) = (w.commissioner.clone(), w.account.clone(), w.payroll.clone());
    let d = "log-dp";
    w.open_direct(d).await;
    // The payees of the batch below have agreements in force.
    for i in 0..10 {
        w.agree(d, pb::PayeeKind::Provider, &format!("p-{i}"), "therapy")
            .await;
    }
    w.agree(
        d,
        pb::PayeeKind::PersonalAssistant,
        "pa-1",
        "personal_assistant",
    )
    .await;
    let mut sent = Vec::new();
    let mut batch = vec![
        w.sign(&c, d, kinds::allocate("1000.00", Basis::NeedsBased)),
        w.sign(&c, d, kinds::disburse("900.00")),
    ];
    for i in 0..10 {
        batch.push(w.sign(
            &acct,
            d,
            pay(
                "10.00",
                pb::PayeeKind::Provider,
                &format!("p-{i}"),
                "therapy",
            ),
        ));
        batch.push(w.sign(
            &payroll,
            d,
            pay(
                "20.00",
                pb::PayeeKind::PersonalAssistant,
                "pa-1",
                "personal_assistant",
            ),
        ));
    }
    let results = w.append_batch(batch.clone(), true).await;
    let mut prev_seq = 0;
    for (r, e) in results.iter().zip(batch) {
        let seq = assert_written(r);
        if prev_seq != 0 {
            assert_eq!(seq, prev_seq + 1, "a batch is written contiguously");
        }
        prev_seq = seq;
        sent.push((r.clone(), e));
    }
    // A few more, singly.
    for i in 0..5 {
        let e = w.sign(
            &acct,
            d,
            kinds::buy("1.00", "equipment", "s", &format!("item {i}")),
        );
        let r = w.append_signed(e.clone()).await;
        assert_written(&r);
        sent.push((r, e));
    }

    let full = w.log().await;
    let n = full.len() as u64;
    assert_eq!(n, sent.last().unwrap().0.sequence);
    let events = audit_log(&full, &w.server.root.public_key());
    assert_eq!(events.len() as u64, n);
    // Each acknowledged event is stored verbatim at its sequence, with its hash.
    for (r, e) in &sent {
        let entry = &full[(r.sequence - 1) as usize];
        assert_eq!(entry.sequence, r.sequence);
        assert_eq!(entry.hash, r.entry_hash);
        assert_eq!(entry.signed_event.as_ref().unwrap(), e, "stored verbatim");
    }
    // The balance's last_sequence is the last entry that changed the budget.
    assert_eq!(w.balance(d).await.last_sequence, n);

    // from_sequence 0 and 1 both mean the start.
    assert_eq!(read_log(&w.client, &w.auditor, 0).await, full);
    // Catch-up from the middle.
    for from in [2, n / 2, n - 1, n] {
        let part = read_log(&w.client, &w.auditor, from).await;
        assert_eq!(part.as_slice(), &full[(from - 1) as usize..], "from {from}");
        assert_eq!(part[0].prev_hash, full[(from - 2) as usize].hash);
    }
    // Past the end: an empty, finished stream.
    assert!(read_log(&w.client, &w.auditor, n + 1).await.is_empty());
    assert!(read_log(&w.client, &w.auditor, u64::MAX).await.is_empty());

    // The auditor's check is not vacuous: tampering with any field is caught.
    let root_key = w.server.root.public_key();
    type Tamper = Box<dyn Fn(&mut Vec<pb::LogEntry>)>;
    let tamper: Vec<Tamper> = vec![
        Box::new(|l| l[5].hash[0] ^= 1),
        Box::new(|l| l[5].prev_hash[31] ^= 1),
        Box::new(|l| l[5].sequence += 1),
        Box::new(|l| l[5].recorded_at.as_mut().unwrap().nanos += 1000),
        Box::new(|l| l[8].signed_event.as_mut().unwrap().event.push(0)),
        Box::new(|l| l[8].signed_event.as_mut().unwrap().signature[3] ^= 1),
        Box::new(|l| {
            l.remove(4);
        }),
    ];
    for (i, t) in tamper.iter().enumerate() {
        let mut bad = full.clone();
        t(&mut bad);
        let caught =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| audit_log(&bad, &root_key)));
        assert!(caught.is_err(), "tampering {i} not detected");
    }
}

/// The next entry of a follow stream, within 10 s.
async fn next(s: &mut tonic::Streaming<pb::ReadLogResponse>) -> pb::LogEntry {
    tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("follow stream delivered nothing within 10 s")
        .expect("follow stream ended")
        .expect("follow stream error")
        .entry
        .unwrap()
}

/// ReadLog with follow: catches up, then delivers entries as they commit,
/// and stays open while nothing happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_log_follow() {
    let w = World::new().await;
    let c = w.commissioner.clone();
    let d = "follow-dp";
    w.open_direct(d).await;
    w.fund(d, "600.00", Some("500.00")).await;
    // Agreements in force for the payments below.
    w.agree(d, pb::PayeeKind::Provider, "p", "therapy").await;
    w.agree(
        d,
        pb::PayeeKind::PersonalAssistant,
        "pa",
        "personal_assistant",
    )
    .await;
    let head = w.log().await;
    let n = head.len() as u64;

    let follow = |from: u64| {
        let req = w.auditor.request(
            methods::READ_LOG,
            pb::ReadLogRequest {
                from_sequence: from,
                follow: true,
            },
        );
        let mut cl = w.client.clone();
        async move { cl.read_log(req).await.expect("ReadLog follow").into_inner() }
    };
    // One follower from the start (catch-up then live), one from the middle,
    // one from the next sequence (live only).
    let mut from_start = follow(1).await;
    let mut from_mid = follow(n / 2).await;
    let mut live = follow(n + 1).await;
    for e in &head {
        assert_eq!(&next(&mut from_start).await, e);
    }
    for e in &head[(n / 2 - 1) as usize..] {
        assert_eq!(&next(&mut from_mid).await, e);
    }
    // Caught up: the stream stays open with nothing to send.
    let idle = tokio::time::timeout(Duration::from_millis(300), live.next()).await;
    assert!(
        idle.is_err(),
        "a follow stream must stay open, got {idle:?}"
    );

    // Entries appended after the streams opened are delivered, in order.
    let mut appended = Vec::new();
    let r = w
        .append(
            &w.account.clone(),
            d,
            pay("12.34", pb::PayeeKind::Provider, "p", "therapy"),
        )
        .await;
    appended.push(r);
    let rs = w
        .append_batch(
            vec![
                w.sign(
                    &w.payroll.clone(),
                    d,
                    pay(
                        "5.00",
                        pb::PayeeKind::PersonalAssistant,
                        "pa",
                        "personal_assistant",
                    ),
                ),
                w.sign(&c, d, kinds::review("-10.00", "review")),
            ],
            true,
        )
        .await;
    appended.extend(rs);
    let mut prev = head.last().unwrap().hash.clone();
    for r in &appended {
        let seq = assert_written(r);
        let a = next(&mut live).await;
        let b = next(&mut from_start).await;
        let m = next(&mut from_mid).await;
        assert_eq!(a.sequence, seq);
        assert_eq!(a.hash, r.entry_hash);
        assert_eq!(a.prev_hash, prev, "follow continues the chain");
        assert_eq!(a, b);
        assert_eq!(a, m);
        prev = a.hash.clone();
    }
    // The followed entries and the catch-up agree, and the whole chain verifies.
    let full = w.log().await;
    assert_eq!(full.len() as u64, n + 3);
    audit_log(&full, &w.server.root.public_key());
    // A refusal by the rules is committed as an entry that applies nothing:
    // followers receive it as such, and nothing else.
    let r = w
        .refused(&c, d, kinds::disburse("1000.00"), Code::FailedPrecondition)
        .await;
    let recorded = next(&mut live).await;
    assert_eq!(recorded.sequence, r.refusal_sequence);
    assert_eq!(recorded.hash, r.entry_hash);
    assert_eq!(recorded.refusal.as_ref().map(|x| x.code), Some(9));
    let idle = tokio::time::timeout(Duration::from_millis(300), live.next()).await;
    assert!(
        idle.is_err(),
        "nothing else was committed, nothing else is delivered: {idle:?}"
    );
}

/// A follower opened while writers are busy sees every entry exactly once,
/// in order, across the hand-over from catch-up to live delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_log_follow_during_writes() {
    let w = std::sync::Arc::new(World::new().await);
    let d = "follow-busy";
    w.open_third_party(d).await;
    w.fund(d, "10000.00", Some("10000.00")).await;
    const WRITERS: usize = 4;
    const EACH: usize = 40;
    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        let w = w.clone();
        tasks.push(tokio::spawn(async move {
            let mut last = 0;
            for _ in 0..EACH {
                let r = w
                    .append(&w.third_party, d, kinds::buy("1.00", "equipment", "s", "x"))
                    .await;
                last = last.max(assert_written(&r));
            }
            last
        }));
    }
    // Open the follower while the writers are going.
    tokio::time::sleep(Duration::from_millis(30)).await;
    let req = w.auditor.request(
        methods::READ_LOG,
        pb::ReadLogRequest {
            from_sequence: 1,
            follow: true,
        },
    );
    let mut stream = w.client.clone().read_log(req).await.unwrap().into_inner();
    let mut last = 0;
    for t in tasks {
        last = last.max(t.await.unwrap());
    }
    let mut got = Vec::new();
    while got.len() < last as usize {
        got.push(next(&mut stream).await);
    }
    assert_eq!(got, w.log().await, "the follower saw the log exactly");
    audit_log(&got, &w.server.root.public_key());
    let idle = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
    assert!(idle.is_err(), "nothing more to deliver: {idle:?}");
}
