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
