//! What free text may contain, and when it counts as blank.
//!
//! Every free-text field (reasons, descriptions, payment references, receipt
//! references) is checked by [`check`] and nothing else, so "blank" and
//! "allowed" mean the same thing in every field (docs/api.md, "Text fields").
//!
//! A reason is *required* so that a person reading the log learns why money
//! moved. Characters that display as nothing — whitespace, default-ignorable
//! and format characters, blank graphic characters — can make a field look
//! filled in to a length check while saying nothing, so they never count as
//! content. Tag characters are refused outright: they display as nothing
//! yet spell ASCII that software (and language models) read, which is how
//! text is hidden in plain sight.
//!
//! Ids and references are not free text: they are ASCII from a small set and
//! are checked by `event::check_id`.

use crate::error::Reject;

/// The Unicode version the tables below were taken from.
pub const UNICODE_VERSION: &str = "16.0.0";

/// The most invisible characters (default-ignorable or format) that may
/// follow one another. Legitimate sequences need at most two (an emoji's
/// U+FE0F VARIATION SELECTOR-16 then U+200D ZERO WIDTH JOINER, as in
/// "❤️‍🔥"); longer runs are how data is smuggled after a visible character
/// (one variation selector per hidden byte).
pub const MAX_INVISIBLE_RUN: usize = 2;

/// Default_Ignorable_Code_Point, from Unicode 16.0.0 DerivedCoreProperties.txt.
/// Includes unassigned code points reserved as ignorable; those, and the tag
/// block, are refused before this table is consulted (see [`classify`]).
const DEFAULT_IGNORABLE: &[(u32, u32)] = &[
    (0x00AD, 0x00AD),
    (0x034F, 0x034F),
    (0x061C, 0x061C),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x206F),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
];

/// General_Category=Cf (format), from Unicode 16.0.0 DerivedGeneralCategory.txt.
const FORMAT: &[(u32, u32)] = &[
    (0x00AD, 0x00AD),
    (0x0600, 0x0605),
    (0x061C, 0x061C),
    (0x06DD, 0x06DD),
    (0x070F, 0x070F),
    (0x0890, 0x0891),
    (0x08E2, 0x08E2),
    (0x180E, 0x180E),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x2064),
    (0x2066, 0x206F),
    (0xFEFF, 0xFEFF),
    (0xFFF9, 0xFFFB),
    (0x110BD, 0x110BD),
    (0x110CD, 0x110CD),
    (0x13430, 0x1343F),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0001, 0xE0001),
    (0xE0020, 0xE007F),
];

/// Default-ignorable code points Unicode 16.0.0 leaves unassigned (outside
/// the tag block). Nothing can mean anything by them yet, and they display
/// as nothing, so they can only hide data.
const UNASSIGNED_IGNORABLE: &[(u32, u32)] = &[
    (0x2065, 0x2065),
    (0xFFF0, 0xFFF8),
    (0xE0080, 0xE00FF),
    (0xE01F0, 0xE0FFF),
];

/// How a character counts in free text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Counts as content: letters, digits, marks, punctuation, symbols, emoji.
    Visible,
    /// Allowed, but not content: whitespace other than controls and line
    /// breaks (U+0020, U+00A0, U+2000–U+200A, U+3000...), and the graphic
    /// characters that draw nothing (U+2800 BRAILLE PATTERN BLANK, U+1D159
    /// MUSICAL SYMBOL NULL NOTEHEAD).
    Blank,
    /// Allowed inside text, but not content, and at most
    /// [`MAX_INVISIBLE_RUN`] in a row: default-ignorable and format
    /// characters not refused below (U+200B, U+200D, U+2060, U+3164, U+FEFF,
    /// U+00AD, variation selectors...).
    Invisible,
    /// Refused anywhere in text.
    Refused(Refused),
}

/// Why a character is refused in free text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// General category Cc (C0, DEL, C1), including tab, line feed and
    /// carriage return: they forge lines and terminal escapes in logs.
    Control,
    /// U+2028 LINE SEPARATOR and U+2029 PARAGRAPH SEPARATOR: they break a
    /// text into lines as a line feed does.
    LineBreak,
    /// Bidi_Control (U+061C, U+200E, U+200F, U+202A–U+202E, U+2066–U+2069):
    /// they make text display as something other than what it says
    /// ("Trojan Source", CVE-2021-42574).
    Bidi,
    /// U+E0000–U+E007F: invisible ASCII, hidden text.
    Tag,
    /// U+FFF9–U+FFFB, the interlinear annotation characters: Unicode reserves
    /// them for use inside one program, and the annotation they delimit can
    /// be left undisplayed.
    Annotation,
    /// A default-ignorable code point with no assigned meaning.
    Unassigned,
}

impl Refused {
    fn what(self) -> &'static str {
        match self {
            Refused::Control => "a control character (tab, line feed, escape...)",
            Refused::LineBreak => "a line or paragraph separator",
            Refused::Bidi => "a bidirectional formatting character",
            Refused::Tag => {
                "a Unicode tag character (U+E0000-U+E007F), which displays as nothing but carries hidden text"
            }
            Refused::Annotation => "an interlinear annotation character",
            Refused::Unassigned => "an unassigned invisible code point",
        }
    }
}

fn in_table(table: &[(u32, u32)], u: u32) -> bool {
    table.iter().any(|&(lo, hi)| (lo..=hi).contains(&u))
}

/// How `c` counts in free text.
pub fn classify(c: char) -> Class {
    let u = u32::from(c);
    // The order matters where the classes overlap: bidi controls, tags and
    // unassigned code points are also default-ignorable, U+0085 is both a
    // control and whitespace, and U+2028/U+2029 are whitespace.
    if c.is_control() {
        Class::Refused(Refused::Control)
    } else if u < 0xA0 {
        // Printable ASCII: nothing below needs consulting.
        if c == ' ' {
            Class::Blank
        } else {
            Class::Visible
        }
    } else if matches!(u, 0x2028 | 0x2029) {
        Class::Refused(Refused::LineBreak)
    } else if matches!(u, 0x061C | 0x200E | 0x200F | 0x202A..=0x202E | 0x2066..=0x2069) {
        Class::Refused(Refused::Bidi)
    } else if (0xE0000..=0xE007F).contains(&u) {
        Class::Refused(Refused::Tag)
    } else if (0xFFF9..=0xFFFB).contains(&u) {
        Class::Refused(Refused::Annotation)
    } else if in_table(UNASSIGNED_IGNORABLE, u) {
        Class::Refused(Refused::Unassigned)
    } else if in_table(DEFAULT_IGNORABLE, u) || in_table(FORMAT, u) {
        Class::Invisible
    } else if c.is_whitespace() || matches!(u, 0x2800 | 0x1D159) {
        Class::Blank
    } else {
        Class::Visible
    }
}

/// True if `s` has no character that counts as content (only blank and
/// invisible characters, or nothing at all). Refused characters do not count
/// either; [`check`] reports them first.
pub fn is_blank(s: &str) -> bool {
    !s.chars().any(|c| classify(c) == Class::Visible)
}

/// Checks one free-text field: at most `max_chars` characters (Unicode
/// scalar values, not bytes), no refused character, at most
/// [`MAX_INVISIBLE_RUN`] invisible characters in a row, and — if it is
/// `required`, or not empty — at least one visible character.
///
/// Messages name the field, and a refused character by its code point and
/// position, never by echoing the text: it is the text that cannot be shown.
pub fn check(field: &str, value: &str, max_chars: usize, required: bool) -> Result<(), Reject> {
    if value.is_empty() {
        return if required {
            Err(Reject::invalid(
                field,
                format!("{field} is required: write it in words"),
            ))
        } else {
            Ok(())
        };
    }
    let n = value.chars().count();
    if n > max_chars {
        return Err(Reject::invalid(
            field,
            format!(
                "{field} is {n} characters long; the limit is {max_chars} characters (Unicode scalar values, not bytes)"
            ),
        ));
    }
    let mut run = 0;
    for (i, c) in value.chars().enumerate() {
        match classify(c) {
            Class::Refused(r) => {
                return Err(Reject::invalid(
                    field,
                    format!(
                        "{field} contains U+{:04X} at character {}, {}; remove it and use printable text only",
                        u32::from(c),
                        i + 1,
                        r.what()
                    ),
                ))
            }
            Class::Invisible => {
                run += 1;
                if run > MAX_INVISIBLE_RUN {
                    return Err(Reject::invalid(
                        field,
                        format!(
                            "{field} has more than {MAX_INVISIBLE_RUN} invisible characters in a row (U+{:04X} at character {}); remove the invisible characters between the visible ones",
                            u32::from(c),
                            i + 1
                        ),
                    ));
                }
            }
            Class::Blank | Class::Visible => run = 0,
        }
    }
    if is_blank(value) {
        let fix = if required {
            "it is required: write it in words"
        } else {
            "leave it empty or write visible text"
        };
        return Err(Reject::invalid(
            field,
            format!(
                "{field} has no visible character (whitespace and invisible characters such as U+200B, U+3164 or U+FEFF do not count); {fix}"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(u: u32) -> char {
        char::from_u32(u).expect("test code points are scalar values")
    }

    /// The first and last code point of every Default_Ignorable_Code_Point
    /// and Cf range, and the class each must have: the ranges are what
    /// decide "blank", so each end is pinned.
    #[test]
    fn every_ignorable_and_format_range_is_classified_at_both_ends() {
        use super::Refused::{Annotation, Bidi, Tag, Unassigned};
        use Class::{Invisible, Visible};
        let no = Class::Refused;
        let cases: &[(u32, u32, Class)] = &[
            (0x00AD, 0x00AD, Invisible),
            (0x034F, 0x034F, Invisible),
            (0x061C, 0x061C, no(Bidi)),
            (0x115F, 0x1160, Invisible),
            (0x17B4, 0x17B5, Invisible),
            (0x180B, 0x180F, Invisible),
            (0x200B, 0x200D, Invisible),
            (0x200E, 0x200F, no(Bidi)),
            (0x202A, 0x202E, no(Bidi)),
            (0x2060, 0x2064, Invisible),
            (0x2065, 0x2065, no(Unassigned)),
            (0x2066, 0x2069, no(Bidi)),
            (0x206A, 0x206F, Invisible),
            (0x3164, 0x3164, Invisible),
            (0xFE00, 0xFE0F, Invisible),
            (0xFEFF, 0xFEFF, Invisible),
            (0xFFA0, 0xFFA0, Invisible),
            (0xFFF0, 0xFFF8, no(Unassigned)),
            (0xFFF9, 0xFFFB, no(Annotation)),
            (0x1BCA0, 0x1BCA3, Invisible),
            (0x1D173, 0x1D17A, Invisible),
            (0xE0000, 0xE007F, no(Tag)),
            (0xE0080, 0xE00FF, no(Unassigned)),
            (0xE0100, 0xE01EF, Invisible),
            (0xE01F0, 0xE0FFF, no(Unassigned)),
            // Cf only.
            (0x0600, 0x0605, Invisible),
            (0x06DD, 0x06DD, Invisible),
            (0x070F, 0x070F, Invisible),
            (0x0890, 0x0891, Invisible),
            (0x08E2, 0x08E2, Invisible),
            (0x110BD, 0x110BD, Invisible),
            (0x110CD, 0x110CD, Invisible),
            (0x13430, 0x1343F, Invisible),
        ];
        for &(lo, hi, class) in cases {
            for u in [lo, hi] {
                assert_eq!(classify(ch(u)), class, "U+{u:04X}");
            }
        }
        // The tag block in full: every one refused, not just the ends.
        for u in 0xE0000..=0xE007F {
            assert_eq!(classify(ch(u)), no(Tag), "U+{u:04X}");
        }
        // Just outside the ranges.
        for u in [
            0x00AC, 0x00AE, 0x034E, 0x0350, 0x05FF, 0x0606, 0x115E, 0x1161, 0x17B3, 0x17B6, 0x180A,
            0x3163, 0x3165, 0xFDFF, 0xFE10, 0xFEFE, 0xFF9F, 0xFFA1, 0xFFFC, 0x1BC9F, 0x1BCA4,
            0x1D172, 0x1D17B, 0x13429, 0x13440, 0xE1000,
        ] {
            assert_eq!(classify(ch(u)), Visible, "U+{u:04X}");
        }
    }

    #[test]
    fn whitespace_controls_and_blank_graphics() {
        for c in [
            ' ',
            '\u{A0}',
            '\u{1680}',
            '\u{2000}',
            '\u{200A}',
            '\u{202F}',
            '\u{205F}',
            '\u{3000}',
            '\u{2800}',
            '\u{1D159}',
        ] {
            assert_eq!(classify(c), Class::Blank, "{c:?}");
        }
        for c in [
            '\0', '\t', '\n', '\r', '\u{1B}', '\u{7F}', '\u{80}', '\u{85}', '\u{9F}',
        ] {
            assert_eq!(classify(c), Class::Refused(Refused::Control), "{c:?}");
        }
        for c in ['\u{2028}', '\u{2029}'] {
            assert_eq!(classify(c), Class::Refused(Refused::LineBreak), "{c:?}");
        }
        for c in [
            'a',
            'Z',
            '0',
            '~',
            '!',
            'é',
            '\u{301}',
            'ש',
            '✓',
            '😀',
            '\u{1F3FD}',
            '\u{20E3}',
        ] {
            assert_eq!(classify(c), Class::Visible, "{c:?}");
        }
    }

    #[test]
    fn blank_means_no_visible_character() {
        for blank in [
            "",
            "   ",
            "\u{200B}",
            "\u{3164}",
            "\u{2060}",
            "\u{FEFF}",
            "\u{115F}\u{1160}",
            "\u{FFA0}",
            " \u{200B} \u{3000}\u{A0}",
            "\u{AD}",
            "\u{2800}\u{2800}",
            "\u{FE0F}",
            "\u{600}",
        ] {
            assert!(is_blank(blank), "{blank:?}");
        }
        for not_blank in ["x", " x ", "\u{200B}x", "\u{301}", "😀", "\u{600}1"] {
            assert!(!is_blank(not_blank), "{not_blank:?}");
        }
    }

    #[test]
    fn required_text_of_only_invisible_characters_is_refused() {
        for s in [
            "\u{200B}",
            "\u{3164}",
            "\u{2060}",
            "\u{FEFF}",
            "\u{200B}\u{200B}",
            " \u{3164} ",
            "\u{2800}",
            "   ",
        ] {
            for required in [true, false] {
                let r = check("kind.budget_stopped.reason", s, 256, required).expect_err(s);
                assert_eq!(r.field.as_deref(), Some("kind.budget_stopped.reason"));
                assert!(r.message.contains("no visible character"), "{}", r.message);
                assert!(
                    r.message.starts_with("kind.budget_stopped.reason"),
                    "{}",
                    r.message
                );
            }
        }
        let r = check("f", "", 256, true).expect_err("empty");
        assert!(r.message.contains("required"), "{}", r.message);
        assert!(check("f", "", 256, false).is_ok());
    }

    #[test]
    fn tag_characters_are_refused_naming_the_code_point() {
        // "chair" then "HI" spelled in tags: displays as "chair".
        let hidden = "chair\u{E0048}\u{E0049}";
        let r = check("kind.purchase.description", hidden, 256, false).expect_err(hidden);
        assert_eq!(r.field.as_deref(), Some("kind.purchase.description"));
        assert!(
            r.message.contains("U+E0048 at character 6"),
            "{}",
            r.message
        );
        assert!(r.message.contains("tag character"), "{}", r.message);
        // The England flag is a tag sequence: refused too, by design.
        let flag = "\u{1F3F4}\u{E0067}\u{E0062}\u{E0065}\u{E006E}\u{E0067}\u{E007F}";
        assert!(check("f", flag, 256, false).is_err());
    }

    #[test]
    fn free_text_refuses_control_and_bidi_formatting_characters() {
        for bad in [
            "bell\u{7}",
            "tab\there",
            "line\nfeed",
            "del\u{7f}",
            "next\u{85}line",
            "chair \u{202e}00.001",
            "isolate \u{2066}x\u{2069}",
            "mark \u{200f}",
            "arabic mark \u{61c}",
            "line\u{2028}separator",
            "para\u{2029}separator",
            "note\u{FFF9}a\u{FFFA}b\u{FFFB}",
            "x\u{2065}",
            "x\u{E0100}\u{E0100}\u{E0100}",
        ] {
            let r = check("f", bad, 256, true).expect_err(bad);
            assert_eq!(r.field.as_deref(), Some("f"));
            assert!(r.message.contains("U+"), "{}", r.message);
        }
    }

    #[test]
    fn visible_text_may_carry_ignorables_that_belong_to_it() {
        for ok in [
            "annual review",
            "na\u{ef}ve \u{2713}",
            "\u{5e9}\u{5dc}\u{5d5}\u{5dd}",
            "Zo\u{eb} Se\u{301}verine",
            // Woman technologist: ZWJ sequence.
            "\u{1F469}\u{200D}\u{1F4BB} laptop",
            // Rainbow flag: VS16 then ZWJ, the longest legitimate run.
            "\u{1F3F3}\u{FE0F}\u{200D}\u{1F308}",
            // Heart on fire, keycap one.
            "\u{2764}\u{FE0F}\u{200D}\u{1F525} 1\u{FE0F}\u{20E3}",
            "hyphen\u{AD}ation",
            "\u{FEFF}pasted from a file with a byte-order mark",
            // Persian with ZERO WIDTH NON-JOINER.
            "\u{645}\u{6CC}\u{200C}\u{62E}\u{648}\u{627}\u{647}\u{645}",
            // Ideographic variation sequence.
            "\u{845B}\u{E0100}",
        ] {
            assert!(check("f", ok, 256, true).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn long_runs_of_invisible_characters_are_refused() {
        // One variation selector per hidden byte after a visible emoji.
        let smuggled = format!("\u{1F600}{}", "\u{FE01}\u{FE02}\u{FE03}\u{FE04}");
        let r = check("f", &smuggled, 256, false).expect_err("smuggled");
        assert!(r.message.contains("U+FE03 at character 4"), "{}", r.message);
        assert!(check("f", "a\u{200B}\u{200C}\u{200D}b", 256, false).is_err());
        assert!(check("f", "a\u{200B}\u{200C}b\u{200D}\u{2060}c", 256, false).is_ok());
    }

    #[test]
    fn length_counts_characters_not_bytes() {
        assert!(check("f", &"é".repeat(256), 256, true).is_ok());
        let r = check("f", &"é".repeat(257), 256, true).expect_err("257");
        assert!(r.message.contains("257 characters"), "{}", r.message);
        // A long refusal message stays short: it never echoes the text.
        let r = check("f", &format!("{}\u{E0041}", "x".repeat(255)), 256, true).expect_err("tag");
        assert!(r.message.len() < 200, "{}", r.message);
    }
}
