//! Spending categories (issue 7): a closed vocabulary; excluded categories
//! are refused whatever the plan says, as a recorded decision naming the
//! rule; an unknown code is malformed input.

mod common;

use common::*;
use phb_client::kinds;
use phb_domain::categories::{ALLOWED, EXCLUDED};
use phb_proto::v1 as pb;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excluded_categories_are_refused_and_recorded_naming_the_rule() {
    let w = World::new().await;
    let (acct, tp) = (w.account.clone(), w.third_party.clone());
    let (d, t) = ("cat-dp", "cat-tp");
    w.open_direct(d).await;
    w.fund(d, "10000.00", Some("10000.00")).await;
    w.open_third_party(t).await;
    w.fund(t, "10000.00", Some("10000.00")).await;
    for (code, rule) in EXCLUDED {
        let pay = kinds::pay("1.00", pb::PayeeKind::Provider, "p-1", code);
        let r = w.refused(&acct, d, pay, Code::FailedPrecondition).await;
        let message = &r.error.as_ref().unwrap().message;
        assert!(
            message.contains(code) && message.contains(rule),
            "{message}"
        );
        let buy = kinds::buy("1.00", code, "s-1", "an excluded purchase");
        w.refused(&tp, t, buy, Code::FailedPrecondition).await;
    }
    assert_eq!(w.balance(d).await.spent, "0.00");
    assert_eq!(w.balance(t).await.spent, "0.00");
    // Every allowed category is spent on under the standing plan, which has
    // a line for each (the plan's line, not the vocabulary, narrows it).
    for code in ALLOWED {
        w.ok(&tp, t, kinds::buy("1.00", code, "s-1", "allowed"))
            .await;
    }
    assert_eq!(w.balance(t).await.spent, format!("{}.00", ALLOWED.len()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_category_is_malformed_and_lists_the_vocabulary() {
    let w = World::new().await;
    let tp = w.third_party.clone();
    let t = "cat-unknown";
    w.open_third_party(t).await;
    w.fund(t, "100.00", Some("100.00")).await;
    for code in ["personal_care", "Therapy", "gym-membership", ""] {
        let r = w
            .refused(
                &tp,
                t,
                kinds::buy("1.00", code, "s", "x"),
                Code::InvalidArgument,
            )
            .await;
        let e = r.error.unwrap();
        assert_eq!(e.field, "kind.purchase.category");
        assert!(
            e.message.contains("personal_assistant") && e.message.contains("clinical_service"),
            "{}",
            e.message
        );
        assert_eq!(r.refusal_sequence, 0, "malformed input is not a decision");
    }
}
