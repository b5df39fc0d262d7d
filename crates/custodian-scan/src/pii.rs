//! The PII scanner: personal data in prompts, few-shot examples, eval cases and hosted text
//! data, run when a manifest declares `safety.pii_scan` (`required`: a finding flags the content;
//! `optional`: it is reported at low severity).
//!
//! | family | rule id | what it finds |
//! |---|---|---|
//! | e-mail | `pii.email` | addresses, except at reserved documentation domains (`example.com/.org/.net`, `.example`, `.test`, `.invalid`, `.localhost`; RFC 2606) |
//! | phone | `pii.phone` | international numbers (`+` and 8–15 digits, E.164) and North American numbers (`(415) 555-0100`, `415-555-0100`) |
//! | payment card | `pii.payment_card` | 13–19 digit card numbers, spaced or dashed in groups, that pass the Luhn check and start with a card network's prefix |
//! | national id | `pii.national_id` | US Social Security numbers (`AAA-GG-SSSS`, structurally valid), UK National Insurance numbers |
//! | IBAN | `pii.iban` | International Bank Account Numbers whose ISO 13616 mod-97 check holds |
//!
//! Every candidate is validated (Luhn, mod-97, SSN structure, reserved domains) before it is
//! reported, which is what keeps version numbers, order ids, hashes and dates quiet. The
//! corpus in `testdata/pii-corpus` measures precision and recall (docs/scanning.md).

use std::sync::LazyLock;

use regex::Regex;

use crate::{FileFindings, Finding, Severity};

/// The rule families, in report order.
pub const FAMILIES: [&str; 5] = [
    "pii.email",
    "pii.phone",
    "pii.payment_card",
    "pii.national_id",
    "pii.iban",
];

static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?-u:\b)[A-Za-z0-9._%+-]{1,64}@([A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24})(?-u:\b)")
        .expect("email regex compiles")
});

static PHONE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?:\+[1-9][0-9]{0,2}[ .-]?(?:\(?[0-9]{1,4}\)?[ .-]?){1,4}[0-9]{2,4}(?-u:\b)|(?:\([2-9][0-9]{2}\) ?|(?-u:\b)[2-9][0-9]{2}[-.])[2-9][0-9]{2}[-.][0-9]{4}(?-u:\b))")
        .expect("phone regex compiles")
});

static CARD: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?-u:\b)[0-9]{4}(?:[ -]?[0-9]{2,4}){2,4}[ -]?[0-9]{1,4}(?-u:\b)")
        .expect("card regex compiles")
});

static SSN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?-u:\b)([0-9]{3})-([0-9]{2})-([0-9]{4})(?-u:\b)").expect("ssn regex compiles")
});

static NINO: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?-u:\b)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?[0-9]{2} ?[0-9]{2} ?[0-9]{2} ?[A-D](?-u:\b)",
    )
    .expect("nino regex compiles")
});

static IBAN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?-u:\b)[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?(?-u:\b)")
        .expect("iban regex compiles")
});

/// Domains reserved for documentation and testing (RFC 2606, RFC 6761): an address there
/// belongs to nobody.
fn reserved_domain(domain: &str) -> bool {
    let d = domain.to_ascii_lowercase();
    let suffix = |s: &str| d == s || d.ends_with(&format!(".{s}"));
    ["example.com", "example.org", "example.net"]
        .iter()
        .any(|s| suffix(s))
        || ["example", "test", "invalid", "localhost", "local"]
            .iter()
            .any(|s| suffix(s))
}

/// The Luhn checksum (ISO/IEC 7812-1) over a digit string.
pub fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d - b'0');
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

/// Whether a card number starts with a prefix a card network issues (ISO/IEC 7812 IINs of Visa,
/// Mastercard, American Express, Discover, JCB, Diners Club, UnionPay, Maestro).
fn card_prefix(digits: &[u8]) -> bool {
    let n = |len: usize| -> u32 {
        std::str::from_utf8(&digits[..len.min(digits.len())])
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    };
    let len = digits.len();
    (digits[0] == b'4' && matches!(len, 13 | 16 | 19))
        || ((51..=55).contains(&n(2)) || (2221..=2720).contains(&n(4))) && len == 16
        || matches!(n(2), 34 | 37) && len == 15
        || (n(4) == 6011 || n(2) == 65 || (644..=649).contains(&n(3))) && (16..=19).contains(&len)
        || (3528..=3589).contains(&n(4)) && (16..=19).contains(&len)
        || (matches!(n(2), 36 | 38 | 39) || (300..=305).contains(&n(3))) && (14..=19).contains(&len)
        || n(2) == 62 && (16..=19).contains(&len)
        || matches!(n(2), 50 | 56..=58 | 67) && (12..=19).contains(&len)
}

/// The ISO 13616 IBAN check: move the first four characters to the end, letters to numbers
/// (A = 10 … Z = 35), and the result mod 97 is 1.
pub fn iban_valid(text: &str) -> bool {
    let compact: Vec<u8> = text.bytes().filter(|b| *b != b' ').collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let rotated = compact[4..].iter().chain(&compact[..4]);
    let mut rem = 0u32;
    for &b in rotated {
        let v = match b {
            b'0'..=b'9' => u32::from(b - b'0'),
            b'A'..=b'Z' => u32::from(b - b'A') + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

/// A US Social Security number's structure: area not 000, 666 or 9xx, group not 00, serial not
/// 0000 (the Social Security Administration's rules).
fn ssn_valid(area: &str, group: &str, serial: &str) -> bool {
    area != "000" && area != "666" && !area.starts_with('9') && group != "00" && serial != "0000"
}

/// Scans text for personal data; each finding at `severity`. One finding per family, with a
/// count, and never the value itself in the message (the report is public; the value is not).
pub fn scan_text(file: &str, text: &str, severity: Severity) -> Vec<Finding> {
    scan_text_from(file, text, severity, 0)
}

/// [`scan_text`] over a piece of a file that starts at byte `base` of it: offsets, in the
/// findings and in their messages, count from the file's start.
pub fn scan_text_from(file: &str, text: &str, severity: Severity, base: u64) -> Vec<Finding> {
    let mut found = FileFindings::default();
    let mut push = |at: usize, rule: &str, what: &str| {
        let at = base + at as u64;
        found.push(file, at, rule, severity, || {
            format!("{file} contains {what} at byte {at} (safety.pii_scan is declared)")
        });
    };
    for caps in EMAIL.captures_iter(text) {
        let (Some(all), Some(domain)) = (caps.get(0), caps.get(1)) else {
            continue;
        };
        if !reserved_domain(domain.as_str()) {
            push(all.start(), "pii.email", "an e-mail address");
        }
    }
    // Spans already taken by a card or IBAN are not also phone numbers.
    let mut taken: Vec<(usize, usize)> = Vec::new();
    for m in CARD.find_iter(text) {
        let digits: Vec<u8> = m.as_str().bytes().filter(u8::is_ascii_digit).collect();
        if (12..=19).contains(&digits.len()) && card_prefix(&digits) && luhn(&digits) {
            push(m.start(), "pii.payment_card", "a payment card number");
            taken.push((m.start(), m.end()));
        }
    }
    for m in IBAN.find_iter(text) {
        if iban_valid(m.as_str()) {
            push(m.start(), "pii.iban", "an IBAN");
            taken.push((m.start(), m.end()));
        }
    }
    for caps in SSN.captures_iter(text) {
        let (Some(all), Some(a), Some(g), Some(s)) =
            (caps.get(0), caps.get(1), caps.get(2), caps.get(3))
        else {
            continue;
        };
        if ssn_valid(a.as_str(), g.as_str(), s.as_str()) {
            push(
                all.start(),
                "pii.national_id",
                "a US Social Security number",
            );
            taken.push((all.start(), all.end()));
        }
    }
    for m in NINO.find_iter(text) {
        push(
            m.start(),
            "pii.national_id",
            "a UK National Insurance number",
        );
    }
    for m in PHONE.find_iter(text) {
        let overlaps = taken.iter().any(|(s, e)| m.start() < *e && *s < m.end());
        let digits = m.as_str().bytes().filter(u8::is_ascii_digit).count();
        let international = m.as_str().starts_with('+');
        let plausible = if international {
            (8..=15).contains(&digits)
        } else {
            digits == 10
        };
        if !overlaps && plausible {
            push(m.start(), "pii.phone", "a phone number");
        }
    }
    found.into_findings().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str) -> Vec<String> {
        scan_text("cases.jsonl", text, Severity::High)
            .into_iter()
            .map(|f| f.rule)
            .collect()
    }

    #[test]
    fn checksums_known_answers() {
        // Card networks' published test numbers pass Luhn; one digit off does not.
        assert!(luhn(b"4111111111111111"));
        assert!(luhn(b"5555555555554444"));
        assert!(luhn(b"378282246310005"));
        assert!(!luhn(b"4111111111111112"));
        // The IBAN registry's examples (SWIFT, ISO 13616) pass mod-97; a changed digit fails.
        assert!(iban_valid("GB82 WEST 1234 5698 7654 32"));
        assert!(iban_valid("DE89370400440532013000"));
        assert!(iban_valid("FR1420041010050500013M02606"));
        assert!(!iban_valid("GB82 WEST 1234 5698 7654 33"));
    }

    #[test]
    fn each_family_and_the_value_is_never_echoed() {
        let text = "Mail jane.doe@acme-mail.co.uk or call +44 20 7946 0958; card 4111 1111 1111 1111, SSN 219-09-9999, IBAN DE89 3704 0044 0532 0130 00, NI AB 12 34 56 C.";
        let found = scan_text("cases.jsonl", text, Severity::High);
        let mut families: Vec<&str> = found.iter().map(|f| f.rule.as_str()).collect();
        families.sort_unstable();
        families.dedup();
        assert_eq!(
            families,
            [
                "pii.email",
                "pii.iban",
                "pii.national_id",
                "pii.payment_card",
                "pii.phone"
            ]
        );
        for f in &found {
            assert!(!f.message.contains("4111"), "{}", f.message);
            assert!(!f.message.contains("jane"), "{}", f.message);
        }
    }

    #[test]
    fn look_alikes_are_quiet() {
        for text in [
            "write to support@example.com or test@mail.example",
            "version 2026.03.1, build 4111-1111-1111-1112",
            "order 1234-5678-9012 shipped 2026-11-30 at 10:15:00",
            "sha256:8f434346648f6b96df89dda901c5176b10a6d83961dd3c1ac88b59b2dc09aa8a",
            "ISBN 978-3-16-148410-0; uuid 123e4567-e89b-12d3-a456-426614174000",
            "SSN-like 000-12-3456 and 666-12-3456 and 912-34-5678",
            "GB00 ABCD 1234 5678 9012 34 is not a valid IBAN",
            "the score went from 0.81 to 0.93 (+12 points)",
        ] {
            assert_eq!(rules(text), Vec::<String>::new(), "{text}");
        }
    }
}
