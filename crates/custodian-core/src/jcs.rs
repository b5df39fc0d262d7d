//! RFC 8785 JSON Canonicalization Scheme (JCS): the one canonical JSON form Custodian hashes.
//!
//! A value is written with no whitespace; object members sorted by their names' UTF-16 code units
//! (RFC 8785 section 3.2.3); strings escaped as ECMAScript's `JSON.stringify` does (only `"`, `\`
//! and control characters, with `\b \t \n \f \r` and lower-case `\u00xx` for the rest, section
//! 3.2.2.2); and every number as the IEEE 754 double it denotes, written by ECMAScript's
//! `Number.prototype.toString` (section 3.2.2.3). So `100.0` is `100`, `1e-6` is `0.000001`,
//! `1e-7` is `1e-7` and `1e21` is `1e+21` — what any JCS library (Python's `jcs`, Go's
//! `webpki.org/jsoncanonicalizer`, JavaScript's `canonicalize`) writes for the same input.
//!
//! Integers beyond 2^53 are not exact doubles; like `JSON.parse` in a browser, JCS writes the
//! nearest double (`9007199254740993` becomes `9007199254740992`). Contexts that need such
//! values exactly should carry them as strings.

use sha2::{Digest as _, Sha256};

/// The RFC 8785 canonical bytes of a JSON value.
pub fn to_vec(value: &serde_json::Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_value(value, &mut out);
    out
}

/// `sha256:<hex>` of the RFC 8785 canonical bytes of a JSON value.
pub fn sha256(value: &serde_json::Value) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(to_vec(value))))
}

fn write_value(value: &serde_json::Value, out: &mut Vec<u8>) {
    match value {
        serde_json::Value::Null => out.extend_from_slice(b"null"),
        serde_json::Value::Bool(true) => out.extend_from_slice(b"true"),
        serde_json::Value::Bool(false) => out.extend_from_slice(b"false"),
        serde_json::Value::Number(n) => {
            // serde_json keeps integers as i64/u64; JCS sees every number as a double.
            let v = n.as_f64().unwrap_or(f64::NAN);
            out.extend_from_slice(number(v).as_bytes());
        }
        serde_json::Value::String(s) => write_string(s, out),
        serde_json::Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out);
            }
            out.push(b']');
        }
        serde_json::Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
            out.push(b'{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(key, out);
                out.push(b':');
                write_value(&map[*key], out);
            }
            out.push(b'}');
        }
    }
}

/// A string as `JSON.stringify` writes it (RFC 8785 section 3.2.2.2).
fn write_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\u{8}' => out.extend_from_slice(b"\\b"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\u{c}' => out.extend_from_slice(b"\\f"),
            '\r' => out.extend_from_slice(b"\\r"),
            c if (c as u32) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes());
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

/// A double as ECMAScript's `Number.prototype.toString` writes it (ECMA-262 section 6.1.6.1.20,
/// "Number::toString"), which RFC 8785 section 3.2.2.3 adopts. Not-a-number and the infinities
/// are not JSON; they never come out of a JSON parser and are written as `null`.
pub fn number(v: f64) -> String {
    if !v.is_finite() {
        return "null".into();
    }
    if v == 0.0 {
        // Both zeros are "0".
        return "0".into();
    }
    // Ryu writes the shortest digit string that reads back as `v`, and of those the closest to
    // `v` — the digits ECMAScript's algorithm picks — as `ddd.ddd` or `d.ddde±x`. Only the
    // digits and the decimal exponent are kept; the layout is ECMAScript's, below.
    let mut buffer = ryu::Buffer::new();
    let text = buffer.format_finite(v.abs());
    let (mantissa, exp) = text.split_once('e').unwrap_or((text, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all: String = format!("{int_part}{frac_part}");
    let leading = all.len() - all.trim_start_matches('0').len();
    let digits = all.trim_start_matches('0').trim_end_matches('0');
    let digits = if digits.is_empty() { "0" } else { digits };
    let k = digits.len() as i32;
    // ECMAScript's n: the value is 0.d1d2…dk × 10^n.
    let n = int_part.len() as i32 - leading as i32 + exp;
    let mut out = String::new();
    if v < 0.0 {
        out.push('-');
    }
    if k <= n && n <= 21 {
        out.push_str(digits);
        out.extend(std::iter::repeat_n('0', (n - k) as usize));
    } else if 0 < n && n <= 21 {
        out.push_str(&digits[..n as usize]);
        out.push('.');
        out.push_str(&digits[n as usize..]);
    } else if -6 < n && n <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-n) as usize));
        out.push_str(digits);
    } else {
        out.push_str(&digits[..1]);
        if k > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('e');
        out.push(if n > 0 { '+' } else { '-' });
        out.push_str(&(n - 1).abs().to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8785 Appendix B: IEEE 754 doubles (as hex bit patterns) and their canonical text.
    /// Checked here against Node's `JSON.stringify` as well.
    #[test]
    fn rfc8785_appendix_b_numbers() {
        let vectors = [
            (0x0000000000000000u64, "0"),
            (0x8000000000000000, "0"),
            (0x0000000000000001, "5e-324"),
            (0x8000000000000001, "-5e-324"),
            (0x7fefffffffffffff, "1.7976931348623157e+308"),
            (0xffefffffffffffff, "-1.7976931348623157e+308"),
            (0x4340000000000000, "9007199254740992"),
            (0xc340000000000000, "-9007199254740992"),
            (0x4430000000000000, "295147905179352830000"),
            (0x44b52d02c7e14af5, "9.999999999999997e+22"),
            (0x44b52d02c7e14af6, "1e+23"),
            (0x44b52d02c7e14af7, "1.0000000000000001e+23"),
            (0x444b1ae4d6e2ef4e, "999999999999999700000"),
            (0x444b1ae4d6e2ef4f, "999999999999999900000"),
            (0x444b1ae4d6e2ef50, "1e+21"),
            (0x3eb0c6f7a0b5ed8c, "9.999999999999997e-7"),
            (0x3eb0c6f7a0b5ed8d, "0.000001"),
            (0x41b3de4355555553, "333333333.3333332"),
            (0x41b3de4355555554, "333333333.33333325"),
            (0x41b3de4355555555, "333333333.3333333"),
            (0x41b3de4355555556, "333333333.3333334"),
            (0x41b3de4355555557, "333333333.33333343"),
            (0xbecbf647612f3696, "-0.0000033333333333333333"),
            (0x43143ff3c1cb0959, "1424953923781206.2"),
        ];
        for (bits, text) in vectors {
            assert_eq!(number(f64::from_bits(bits)), text, "{bits:016x}");
        }
    }

    /// RFC 8785 section 3.2.2's example: the input of its section 3.2.2 and the canonical
    /// output it shows (also in its Appendix A as hex).
    #[test]
    fn rfc8785_section_3_2_2_example() {
        let input = r#"{
  "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
  "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
  "literals": [null, true, false]
}"#;
        let value: serde_json::Value = serde_json::from_str(input).expect("valid JSON");
        let expected = "{\"literals\":[null,true,false],\"numbers\":[333333333.3333333,1e+30,4.5,0.002,1e-27],\"string\":\"\u{20ac}$\\u000f\\nA'B\\\"\\\\\\\\\\\"/\"}";
        assert_eq!(
            String::from_utf8(to_vec(&value)).unwrap_or_default(),
            expected
        );
    }

    /// RFC 8785 section 3.2.3: members sorted by UTF-16 code units, not by UTF-8 bytes or code
    /// points (the RFC's own sorting example).
    #[test]
    fn rfc8785_section_3_2_3_sorting() {
        let input = r#"{
  "\u20ac": "Euro Sign",
  "\r": "Carriage Return",
  "\ufb33": "Hebrew Letter Dalet With Dagesh",
  "1": "One",
  "\ud83d\ude00": "Emoji: Grinning Face",
  "\u0080": "Control",
  "\u00f6": "Latin Small Letter O With Diaeresis"
}"#;
        let value: serde_json::Value = serde_json::from_str(input).expect("valid JSON");
        let text = String::from_utf8(to_vec(&value)).unwrap_or_default();
        let order: Vec<&str> = [
            "Carriage Return",
            "One",
            "Control",
            "Latin Small Letter O With Diaeresis",
            "Euro Sign",
            "Emoji: Grinning Face",
            "Hebrew Letter Dalet With Dagesh",
        ]
        .to_vec();
        let mut last = 0;
        for name in order {
            let at = text.find(name).unwrap_or(0);
            assert!(at > last, "{name} out of order in {text}");
            last = at;
        }
    }

    #[test]
    fn numbers_as_javascript_writes_them() {
        for (json, text) in [
            ("100.0", "100"),
            ("1e-6", "0.000001"),
            ("0.00001", "0.00001"),
            ("1e-7", "1e-7"),
            ("-0.0", "0"),
            ("1e21", "1e+21"),
            ("123456789012345678901", "123456789012345680000"),
            ("9007199254740993", "9007199254740992"),
            ("0.1", "0.1"),
            ("-1.5", "-1.5"),
            ("42", "42"),
        ] {
            let value: serde_json::Value = serde_json::from_str(json).expect("valid JSON");
            assert_eq!(
                String::from_utf8(to_vec(&value)).unwrap_or_default(),
                text,
                "{json}"
            );
        }
    }
}
