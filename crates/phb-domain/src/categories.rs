//! The closed vocabulary of spending categories.
//!
//! Every `Payment` and `Purchase` names one. Most may be spent on if the
//! care plan covers them; a few are **excluded outright**, whatever any plan
//! says, because the NHS never funds them through a personal health budget
//! or because direct-payment practice prohibits them:
//!
//! - primary medical (GP) services, emergency care, inpatient care and
//!   pharmaceuticals are outside what a PHB may buy (NHS (Direct Payments)
//!   Regulations 2013; ../shared/seeds 000 and 001: "general practice (GP)
//!   services, pharmaceuticals and emergency services" are not covered);
//! - alcohol, tobacco, gambling and debt repayment are prohibited purchases
//!   (seed 000/002; Surrey Heartlands ICB and Luton council guidance, in
//!   ../shared/research/controls-and-reporting.md).
//!
//! A code that is neither is INVALID_ARGUMENT (a typo, not a decision); an
//! excluded code is a decision of the rules: FAILED_PRECONDITION, recorded.

/// Codes that may be spent on (when a care plan covers them), in the order
/// docs/api.md lists them.
pub const ALLOWED: &[&str] = &[
    "personal_assistant",
    "agency_care",
    "respite",
    "therapy",
    "equipment",
    "it_equipment",
    "education",
    "exercise_wellbeing",
    "transport",
    "community_activity",
    "clinical_service",
    "household_support",
    "payroll_and_account_fees",
    "employer_insurance",
    "tax_and_pension",
    "cash",
];

/// Codes excluded outright, each with the rule that excludes it.
pub const EXCLUDED: &[(&str, &str)] = &[
    (
        "gp_primary_care",
        "primary medical (GP) services are provided by the NHS and are never bought from a personal health budget (NHS (Direct Payments) Regulations 2013)",
    ),
    (
        "emergency_care",
        "emergency and urgent care is provided by the NHS and is never bought from a personal health budget (NHS (Direct Payments) Regulations 2013)",
    ),
    (
        "inpatient_care",
        "inpatient hospital care is provided by the NHS and is never bought from a personal health budget (NHS (Direct Payments) Regulations 2013)",
    ),
    (
        "pharmaceuticals",
        "prescribed medicines are provided by the NHS and are never bought from a personal health budget (NHS (Direct Payments) Regulations 2013)",
    ),
    (
        "alcohol",
        "alcohol may not be bought with a personal health budget or direct payment",
    ),
    (
        "tobacco",
        "tobacco may not be bought with a personal health budget or direct payment",
    ),
    (
        "gambling",
        "gambling, betting and lotteries may not be paid for with a personal health budget or direct payment",
    ),
    (
        "debt_repayment",
        "debts may not be repaid from a personal health budget or direct payment",
    ),
];

/// Merchant category codes refused on a card whatever any plan says, each
/// with the rule (the allpay, Staffordshire and Essex card restrictions in
/// shared/research/controls-and-reporting.md; seeds 000/002).
pub const BLOCKED_MCCS: &[(u32, &str)] = &[
    (
        7995,
        "betting and gambling, including lottery tickets and casinos",
    ),
    (7800, "government-owned lotteries (gambling)"),
    (7801, "internet gambling"),
    (7802, "horse and dog racing (gambling)"),
    (5921, "off-licences: alcohol"),
    (5813, "bars and nightclubs: alcohol"),
    (5993, "tobacco shops"),
    (7273, "dating and escort services"),
    (7297, "massage parlours"),
    (5933, "pawn shops"),
    (6051, "quasi-cash (money orders, foreign currency, crypto)"),
];

/// The spending category a merchant category code is charged to; `None`
/// for codes the ledger does not recognise (a card payment there is
/// declined: pay by invoice instead).
pub fn category_of_mcc(mcc: u32) -> Option<&'static str> {
    Some(match mcc {
        4111 | 4121 | 4131 | 4789 | 5541 | 5542 => "transport",
        5045 | 5732 | 5734 | 4814 | 4816 => "it_equipment",
        5047 | 5200 | 5251 | 5712 | 5722 | 5999 | 5310 | 5311 => "equipment",
        5912 => "pharmaceuticals",
        5940 | 5941 | 7941 | 7997 => "exercise_wellbeing",
        8011 | 8021 | 8031 | 8041 | 8042 | 8043 | 8049 | 8050 | 8099 => "clinical_service",
        8062 => "inpatient_care",
        8211 | 8220 | 8241 | 8244 | 8249 | 8299 => "education",
        7011 | 7012 => "respite",
        8351 | 8398 | 8641 => "community_activity",
        7349 | 7342 | 1711 | 1799 => "household_support",
        6300 => "employer_insurance",
        _ => return None,
    })
}

/// What a category code is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    /// May be spent on, if the plan covers it.
    Allowed(&'static str),
    /// Excluded outright: the rule that excludes it.
    Excluded {
        /// The code.
        code: &'static str,
        /// Why, for the refusal message.
        rule: &'static str,
    },
}

/// Classifies a code; `None` if it is not in the vocabulary.
pub fn classify(code: &str) -> Option<Category> {
    if let Some(c) = ALLOWED.iter().find(|c| **c == code) {
        return Some(Category::Allowed(c));
    }
    EXCLUDED
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(code, rule)| Category::Excluded { code, rule })
}

/// The allowed codes, comma-separated, for refusal messages.
pub fn allowed_list() -> String {
    ALLOWED.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_classified_once_and_codes_are_snake_case() {
        let all: Vec<&str> = ALLOWED
            .iter()
            .copied()
            .chain(EXCLUDED.iter().map(|(c, _)| *c))
            .collect();
        for c in &all {
            assert_eq!(all.iter().filter(|x| *x == c).count(), 1, "{c} twice");
            assert!(
                c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{c}"
            );
            assert!(classify(c).is_some());
        }
        assert_eq!(ALLOWED.len(), 16);
        assert_eq!(EXCLUDED.len(), 8);
        assert_eq!(classify("therapy"), Some(Category::Allowed("therapy")));
        assert!(matches!(
            classify("gambling"),
            Some(Category::Excluded {
                code: "gambling",
                ..
            })
        ));
        assert_eq!(classify("Therapy"), None);
        assert_eq!(classify("personal_care"), None);
    }
}
