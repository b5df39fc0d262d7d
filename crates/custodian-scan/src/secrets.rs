//! The secret scanner: credentials that must never ship in a package.
//!
//! | family | rule id | severity | what it finds |
//! |---|---|---|---|
//! | private keys | `secret.private_key` | critical | PEM private keys of every kind (`-----BEGIN … PRIVATE KEY-----`: PKCS#1, PKCS#8, SEC1, OpenSSH, encrypted, PGP), PuTTY key files, `age` secret keys, Custodian's own signed-note keys (`PRIVATE+KEY+…`) |
//! | tokens | `secret.token` | high | AWS access key ids and secret keys, GitHub, GitLab, Slack (tokens and webhooks), Google API, Stripe live, OpenAI, Anthropic, Hugging Face, npm and PyPI tokens, Azure storage keys, Custodian API tokens (`cust_…`) |
//! | assignments | `secret.env_assignment` | high | in env and config files (`.env*`, `*.env`, `.envrc`, `*.ini`, `*.cfg`, `*.conf`, `*.properties`, `*.toml`, `*.yaml`, `*.json`, shell scripts): a variable whose name says secret, token, password or key assigned a random-looking literal (16+ characters, at least 3.5 bits of entropy per character, not a placeholder or a `${reference}`) |
//!
//! Every rule is matched on raw bytes, chunk by chunk, so a secret is found in any file of any
//! size and inside archives. A secret blocks `pack build` and publication; see
//! docs/scanning.md for the corpus and its figures.

use std::sync::LazyLock;

use regex::bytes::Regex;

use crate::{FileFindings, Severity};

/// The rule families, in report order.
pub const FAMILIES: [&str; 3] = [
    "secret.private_key",
    "secret.token",
    "secret.env_assignment",
];

/// True if a finding's rule is a secret rule (one that blocks publication).
pub fn is_secret_rule(rule: &str) -> bool {
    rule.starts_with("secret.")
}

struct Kind {
    rule: &'static str,
    severity: Severity,
    what: &'static str,
    pattern: &'static str,
}

/// Each kind of secret with the pattern that recognises it. The patterns anchor on the fixed
/// prefixes the issuers chose so that scanning stays fast and quiet on ordinary text.
const KINDS: [Kind; 20] = [
    Kind {
        rule: "secret.private_key",
        severity: Severity::Critical,
        what: "a PEM private key",
        pattern: r"-----BEGIN (?:RSA |DSA |EC |OPENSSH |ENCRYPTED |PGP |SSH2 ENCRYPTED )?PRIVATE KEY(?: BLOCK)?-----",
    },
    Kind {
        rule: "secret.private_key",
        severity: Severity::Critical,
        what: "a PuTTY private key file",
        pattern: r"PuTTY-User-Key-File-[0-9]+: ",
    },
    Kind {
        rule: "secret.private_key",
        severity: Severity::Critical,
        what: "an age secret key",
        pattern: r"AGE-SECRET-KEY-1[0-9A-Z]{58}",
    },
    Kind {
        rule: "secret.private_key",
        severity: Severity::Critical,
        what: "a Custodian / signed-note private key (PRIVATE+KEY+…)",
        pattern: r"PRIVATE\+KEY\+[^+\s]{1,256}\+[0-9a-f]{8}\+[A-Za-z0-9+/]{40,}={0,2}",
    },
    Kind {
        rule: "secret.token",
        severity: Severity::High,
        what: "an AWS access key id",
        pattern: r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b",
    },
    Kind {
        rule: "secret.token",
        severity: Severity::High,
        what: "an AWS secret access key",
        pattern: r"(?i)aws_?secret_?access_?key\s*[=:]\s*['\x22]?[A-Za-z0-9/+=]{40}\b",
    },
    Kind {
        rule: "secret.token",
        severity: Severity::High,
        what: "a GitHub token",
        pattern: r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b",
    },
    Kind {
        rule: "secret.token",
        severity: Severity::High,
        what: "a GitLab token",
        pattern: r"\bglpat-[A-Za-z0-9_-]{20,}",
    },
    Kind {
        rule: "secret.token",
        severity: Severity::High,
        what: "a Slack token",
        pattern: r"\bxox[abposr]-[0-9A-Za-z-]{10,}",
    },
    Kind {
        rule: "secret.token",
        severity: Severity::High,
        what: "a Slack webhook URL",
        pattern: r"https://hooks\.slack\.com/services/T[A-Za-z0-9_]+/B[A-Za-z0-9_]+/[A-Za-z0-9_]{20,}",
    },
    Kind {
        rule: "secret.token",
        severity: Severity::High,
        what: "a Google API key",
        pattern: r"\bAIza[0-9A-Za-z_-]{35}",
    },
    Kind {
        rule: "secret.token",
        severity: Severity::High,
        what: "a Stripe live key",
        pattern: r"\b(?:sk|rk)_live_[0-9A-Za-z]{24,}",
    },
    Kind {
        rule: "secret.token",
        severity: Severity::High,
        what: "an OpenAI API key",
        pattern: r"\bsk-(?:(?:proj|svcacct|admin)-[A-Za-z0-9_-]{40,}|[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20})",
    },
    Kind {
        rule: "secret.token",
        severity: Severity::High,
        what: "an Anthropic API key",
        pattern: r"\bsk-ant-(?:api|admin)[0-9]{2}-[A-Za-z0-9_-]{80,}",
    },
    Kind {
        rule: "secret.token",
        severity: Severity::High,
        what: "a Hugging Face token",
        pattern: r"\bhf_[A-Za-z]{34}\b",
    },
    Kind {
        rule: "secret.token",
        severity: Severity::High,
        what: "an npm token",
        pattern: r"\bnpm_[A-Za-z0-9]{36}\b",
    },
    Kind {
        rule: "secret.token",
        severity: Severity::High,
        what: "a PyPI token",
        pattern: r"\bpypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{50,}",
    },
    Kind {
        rule: "secret.token",
        severity: Severity::High,
        what: "an Azure storage account key",
        pattern: r"AccountKey=[A-Za-z0-9+/]{86}==",
    },
    Kind {
        rule: "secret.token",
        severity: Severity::High,
        what: "a Custodian API token",
        pattern: r"\bcust_[0-9a-f]{8}_[A-Za-z0-9_-]{43}\b",
    },
    Kind {
        rule: "secret.token",
        severity: Severity::High,
        what: "a Google service-account key file",
        pattern: r#""private_key_id"\s*:\s*"[0-9a-f]{40}""#,
    },
];

/// One regex over every kind, so each chunk is searched once; the kind of a match is found
/// afterwards by the per-kind patterns (matches are rare, so that costs nothing).
static ANY: LazyLock<Regex> = LazyLock::new(|| {
    let joined: Vec<String> = KINDS.iter().map(|k| format!("(?:{})", k.pattern)).collect();
    Regex::new(&joined.join("|")).expect("secret patterns compile")
});

static EACH: LazyLock<Vec<Regex>> = LazyLock::new(|| {
    KINDS
        .iter()
        .map(|k| Regex::new(k.pattern).expect("secret pattern compiles"))
        .collect()
});

/// `NAME = value` where the name says it holds a secret.
static ASSIGNMENT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r#"(?mi)^[ \t]*(?:export[ \t]+)?["']?([A-Za-z0-9_.-]*(?:secret|token|passw(?:or)?d|passwd|api[_-]?key|apikey|private[_-]?key|access[_-]?key|credential|auth)[A-Za-z0-9_.-]*)["']?[ \t]*[=:][ \t]*["']?([^\s"'#,;]{16,})"#,
    )
    .expect("assignment regex compiles")
});

/// True for files where `NAME=value` assignments configure a program.
pub fn is_config_file(path: &str) -> bool {
    let base = path
        .rsplit(['/', '!'])
        .next()
        .unwrap_or(path)
        .to_ascii_lowercase();
    base == ".env"
        || base.starts_with(".env.")
        || base == ".envrc"
        || base.ends_with(".env")
        || [
            ".ini",
            ".cfg",
            ".conf",
            ".properties",
            ".toml",
            ".yaml",
            ".yml",
            ".json",
            ".sh",
            ".bash",
            ".zsh",
        ]
        .iter()
        .any(|e| base.ends_with(e))
}

/// Shannon entropy in bits per byte.
fn entropy(value: &[u8]) -> f64 {
    let mut counts = [0u32; 256];
    for &b in value {
        counts[b as usize] += 1;
    }
    let n = value.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

/// Values that name or point at a secret rather than being one.
fn placeholder(value: &[u8]) -> bool {
    let lower = value.to_ascii_lowercase();
    let has = |needle: &[u8]| lower.windows(needle.len()).any(|w| w == needle);
    value.starts_with(b"$")
        || value.starts_with(b"<")
        || value.starts_with(b"{{")
        || has(b"${")
        || has(b"xxxx")
        || has(b"changeme")
        || has(b"example")
        || has(b"your_")
        || has(b"your-")
        || has(b"placeholder")
        || has(b"redacted")
        || has(b"dummy")
        || has(b"://")
        // ALL_CAPS_WITH_UNDERSCORES is the name of an environment variable, not its value.
        || value
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_')
        || slug(value)
}

/// Lower-case words joined by `-`, `_` or `.` (`minimum-length-16`, `gpt-4.1-mini`): names and
/// settings, which generated secrets never look like.
fn slug(value: &[u8]) -> bool {
    let separators = value.iter().filter(|b| b"-_.".contains(b)).count();
    separators > 0
        && value
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(b))
        && value
            .split(|b| b"-_.".contains(b))
            .all(|part| part.len() <= 12)
}

/// Scans one window of a file for secrets. `window[..kept]` was already scanned (it ends the
/// previous window), so matches ending there are skipped; `start` is the file offset of
/// `window[0]`. `config` turns on the assignment rule.
pub(crate) fn scan_window(
    path: &str,
    window: &[u8],
    kept: usize,
    start: u64,
    config: bool,
    found: &mut FileFindings,
) {
    for m in ANY.find_iter(window) {
        if m.end() <= kept {
            continue;
        }
        let Some(kind) = EACH
            .iter()
            .position(|re| re.is_match(m.as_bytes()))
            .map(|i| &KINDS[i])
        else {
            continue;
        };
        let offset = start + m.start() as u64;
        found.push(path, offset, kind.rule, kind.severity, || {
            format!(
                "{path} contains {} at byte {offset}; remove it (and revoke it: it may have been copied already)",
                kind.what
            )
        });
    }
    if !config {
        return;
    }
    for caps in ASSIGNMENT.captures_iter(window) {
        let (Some(all), Some(name), Some(value)) = (caps.get(0), caps.get(1), caps.get(2)) else {
            continue;
        };
        if all.end() <= kept {
            continue;
        }
        let v = value.as_bytes();
        if placeholder(v) || entropy(v) < 3.5 {
            continue;
        }
        let offset = start + all.start() as u64;
        let name = String::from_utf8_lossy(name.as_bytes()).into_owned();
        found.push(path, offset, "secret.env_assignment", Severity::High, || {
            format!(
                "{path} assigns {name} a secret-looking value ({} characters) at byte {offset}; keep secrets out of packages (use .custodianignore, or read them from the environment at run time)",
                v.len()
            )
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(path: &str, text: &str) -> Vec<String> {
        let mut found = FileFindings::default();
        scan_window(
            path,
            text.as_bytes(),
            0,
            0,
            is_config_file(path),
            &mut found,
        );
        found.into_findings().map(|f| f.rule).collect()
    }

    /// Fabricated credentials of each kind (none valid anywhere; the formats are the issuers'
    /// published ones, e.g. AWS's documented example key id).
    pub(crate) const POSITIVES: [(&str, &str); 22] = [
        ("k.pem", "-----BEGIN RSA PRIVATE KEY-----\nMIIEow...\n"),
        ("k.pem", "-----BEGIN PRIVATE KEY-----\nMIIEvQ...\n"),
        ("k.pem", "-----BEGIN EC PRIVATE KEY-----\nMHcC...\n"),
        (
            "id_ed25519",
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn...\n",
        ),
        (
            "k.asc",
            "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nlQOY...\n",
        ),
        ("k.pem", "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIF...\n"),
        (
            "k.ppk",
            "PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\n",
        ),
        (
            "me.key",
            "PRIVATE+KEY+acme-release+1a2b3c4d+AXQy9Zsq3X8k0f1rV0d7vYbq0zqW6y0b2cK0x4X2Qk5n\n",
        ),
        ("notes.md", "key AKIAIOSFODNN7EXAMPLE for the bucket"),
        (
            "run.sh",
            "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n",
        ),
        (
            "ci.yaml",
            "token: ghp_0123456789abcdefghijklmnopqrstuvwxyZ\n",
        ),
        (
            "ci.yaml",
            "token: github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz\n",
        ),
        ("ci.yaml", "glpat-abcdefghij0123456789\n"),
        (
            "hook.txt",
            "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
        ),
        (
            "hook.txt",
            "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
        ),
        (
            "maps.js",
            "const k = 'AIzaSyD-abcdefghijklmnopqrstuvwxyz01234';",
        ),
        (
            "pay.py",
            "stripe.api_key = 'sk_live_0123456789abcdefghijklmn'",
        ),
        (
            "llm.py",
            "client = OpenAI(api_key='sk-proj-abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUV_0123456789')",
        ),
        (
            "llm.py",
            "sk-ant-api03-abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklmnopqrstuvwxyz-_AA",
        ),
        ("hub.txt", "hf_abcdefghijklmnopqrstuvwxyzABCDEFGH"),
        (
            "token.txt",
            "CUSTODIAN_TOKEN=cust_0a1b2c3d_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQ",
        ),
        (".env", "OPENAI_API_KEY=Zq8vX3k9LmP2rT7wY4nB6cD1fG5hJ0aS\n"),
    ];

    #[test]
    fn every_kind_is_found() {
        for (path, text) in POSITIVES {
            let found = rules(path, text);
            assert!(
                found.iter().any(|r| is_secret_rule(r)),
                "{path}: {text:?} not found"
            );
        }
    }

    #[test]
    fn ordinary_text_and_placeholders_are_not_secrets() {
        for (path, text) in [
            (
                "README.md",
                "Set OPENAI_API_KEY in your environment; we never ship it.",
            ),
            (".env.example", "OPENAI_API_KEY=your_api_key_here\n"),
            (".env", "API_TOKEN=${API_TOKEN}\nSECRET_KEY=<put-it-here>\n"),
            (".env", "PASSWORD_POLICY=minimum-length-16\n"),
            ("config.yaml", "api_key_env: OPENAI_API_KEY\nauth: bearer\n"),
            (
                "providers/mock.yaml",
                "token_budget: 4096\nsecret_name: prod-openai\n",
            ),
            (
                "docs.md",
                "The header reads -----BEGIN PUBLIC KEY----- in a public key.",
            ),
            ("x.md", "ghp_short and sk-live and AKIA1234"),
            ("tokens.json", "{\"token_count\": 1234567890123456}"),
        ] {
            assert_eq!(rules(path, text), Vec::<String>::new(), "{path}: {text:?}");
        }
    }

    #[test]
    fn assignments_only_in_config_files() {
        let text = "DB_PASSWORD=Zq8vX3k9LmP2rT7wY4nB6cD1\n";
        assert_eq!(rules(".env.production", text), ["secret.env_assignment"]);
        assert_eq!(rules("settings.toml", text), ["secret.env_assignment"]);
        assert!(rules("prompts/system.md", text).is_empty());
    }
}
