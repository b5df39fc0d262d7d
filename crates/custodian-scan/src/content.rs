//! The content scanner: a stream of bytes in, findings out.
//!
//! Each file is read once, in chunks. The first 64 KiB decide what the content *is* (magic
//! numbers); the name decides what it *claims* to be; archives (zip, tar, gzip) are walked entry
//! by entry as streams, their entries scanned recursively under the same rules, and nothing is
//! ever written to disk. Decompression goes through a guard that stops a bomb as soon as its
//! ratio or size gives it away, before it has been expanded.

use std::cell::Cell;
use std::io::{self, BufRead, BufReader, Read};
use std::rc::Rc;
use std::sync::LazyLock;

use crate::{FileFindings, Finding, Limits, Report, Severity};

/// How much of a file is read to detect its type.
const HEAD: usize = 64 << 10;
/// The read size for the rest.
const CHUNK: usize = 256 << 10;
/// Bytes kept from the previous chunk so that a pattern split across chunks is still found, and
/// a pipe-to-shell match can look back along its line.
const OVERLAP: usize = 512;

/// What content claims to be, from its file name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Declared {
    /// Tabular or line data read as text: `.json`, `.jsonl`, `.ndjson`, `.csv`, `.tsv`, `.txt`.
    DataText,
    /// Apache Parquet.
    Parquet,
    /// Apache Arrow IPC / Feather.
    Arrow,
    /// A zip archive (`.zip`).
    Zip,
    /// A gzip stream (`.gz`, `.tgz`).
    Gzip,
    /// A tar archive.
    Tar,
    /// Prompt or configuration text: `.md`, `.yaml`, `.yml`, `.toml`, `.j2`, `.jinja`, `.prompt`.
    Markup,
    /// Source code or a script: scripts are expected here.
    Code,
    /// An image or PDF.
    Media,
    /// No extension this scanner knows.
    Unknown,
}

impl Declared {
    /// The declared type of a file name.
    pub fn of(name: &str) -> Declared {
        let base = name.rsplit(['/', '!']).next().unwrap_or(name);
        let ext = match base.rsplit_once('.') {
            Some((stem, ext)) if !stem.is_empty() => ext.to_ascii_lowercase(),
            _ => return Declared::Unknown,
        };
        match ext.as_str() {
            "json" | "jsonl" | "ndjson" | "csv" | "tsv" | "txt" => Declared::DataText,
            "parquet" => Declared::Parquet,
            "arrow" | "feather" | "ipc" => Declared::Arrow,
            "zip" => Declared::Zip,
            "gz" | "tgz" | "gzip" => Declared::Gzip,
            "tar" => Declared::Tar,
            "md" | "markdown" | "yaml" | "yml" | "toml" | "j2" | "jinja" | "jinja2" | "prompt"
            | "tmpl" => Declared::Markup,
            "py" | "js" | "mjs" | "ts" | "sh" | "bash" | "rb" | "pl" | "ps1" | "go" | "rs"
            | "java" | "c" | "h" | "cpp" | "html" | "htm" => Declared::Code,
            "png" | "jpg" | "jpeg" | "gif" | "webp" | "pdf" | "svg" => Declared::Media,
            _ => Declared::Unknown,
        }
    }

    /// True for types that hold data rather than instructions.
    pub fn is_data(self) -> bool {
        matches!(
            self,
            Declared::DataText | Declared::Parquet | Declared::Arrow
        )
    }
}

/// What content is, from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detected {
    /// Nothing at all.
    Empty,
    /// An ELF executable or shared object.
    Elf,
    /// A Windows PE executable or DLL.
    Pe,
    /// A DOS `MZ` header without a PE header.
    Dos,
    /// A Mach-O executable (thin or fat).
    MachO,
    /// A Java class file.
    JavaClass,
    /// WebAssembly.
    Wasm,
    /// A script with a `#!` line.
    Script,
    /// A zip archive.
    Zip,
    /// A gzip stream.
    Gzip,
    /// A POSIX or GNU tar archive.
    Tar,
    /// Apache Parquet.
    Parquet,
    /// Apache Arrow IPC.
    Arrow,
    /// PDF, PNG, JPEG, GIF or WebP.
    Media,
    /// UTF-8 text without NUL bytes.
    Text,
    /// Anything else.
    Binary,
}

impl Detected {
    /// A short name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Detected::Empty => "empty",
            Detected::Elf => "an ELF executable",
            Detected::Pe => "a Windows PE executable",
            Detected::Dos => "a DOS executable",
            Detected::MachO => "a Mach-O executable",
            Detected::JavaClass => "a Java class file",
            Detected::Wasm => "WebAssembly",
            Detected::Script => "a script",
            Detected::Zip => "a zip archive",
            Detected::Gzip => "gzip data",
            Detected::Tar => "a tar archive",
            Detected::Parquet => "Parquet",
            Detected::Arrow => "Arrow IPC",
            Detected::Media => "an image or PDF",
            Detected::Text => "text",
            Detected::Binary => "binary data",
        }
    }

    fn is_executable(self) -> bool {
        matches!(
            self,
            Detected::Elf | Detected::Pe | Detected::MachO | Detected::Wasm
        )
    }
}

/// Detects the type of content from its first bytes (up to 64 KiB).
pub fn detect(head: &[u8]) -> Detected {
    let u32_at = |at: usize| {
        head.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    match head {
        [] => Detected::Empty,
        [0x7f, b'E', b'L', b'F', ..] => Detected::Elf,
        [b'M', b'Z', ..] => {
            let pe = u32_at(0x3c)
                .and_then(|off| head.get(off as usize..off as usize + 4))
                .is_some_and(|sig| sig == b"PE\0\0");
            if pe { Detected::Pe } else { Detected::Dos }
        }
        [0xfe, 0xed, 0xfa, 0xce | 0xcf, ..] | [0xce | 0xcf, 0xfa, 0xed, 0xfe, ..] => {
            Detected::MachO
        }
        // 0xCAFEBABE opens both fat Mach-O binaries and Java classes: a fat header's next word
        // is a small architecture count, a class file's is its version (45 or more).
        [0xca, 0xfe, 0xba, 0xbe, a, b, c, d, ..] => {
            if u32::from_be_bytes([*a, *b, *c, *d]) < 45 {
                Detected::MachO
            } else {
                Detected::JavaClass
            }
        }
        [0, b'a', b's', b'm', ..] => Detected::Wasm,
        [b'#', b'!', ..] => Detected::Script,
        [b'P', b'K', 3, 4, ..] | [b'P', b'K', 5, 6, ..] | [b'P', b'K', 7, 8, ..] => Detected::Zip,
        [0x1f, 0x8b, ..] => Detected::Gzip,
        [b'P', b'A', b'R', b'1', ..] => Detected::Parquet,
        [b'A', b'R', b'R', b'O', b'W', b'1', ..] => Detected::Arrow,
        [b'%', b'P', b'D', b'F', ..]
        | [0x89, b'P', b'N', b'G', ..]
        | [0xff, 0xd8, 0xff, ..]
        | [b'G', b'I', b'F', b'8', ..] => Detected::Media,
        [
            b'R',
            b'I',
            b'F',
            b'F',
            _,
            _,
            _,
            _,
            b'W',
            b'E',
            b'B',
            b'P',
            ..,
        ] => Detected::Media,
        _ if head.len() >= 262 && &head[257..262] == b"ustar" => Detected::Tar,
        _ if is_text(head) => Detected::Text,
        _ => Detected::Binary,
    }
}

/// UTF-8 (allowing a character cut at the end of the sample) without NUL bytes.
fn is_text(head: &[u8]) -> bool {
    if head.contains(&0) {
        return false;
    }
    match std::str::from_utf8(head) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none() && e.valid_up_to() + 4 > head.len(),
    }
}

/// A byte pattern the content scanner looks for.
struct Pattern {
    bytes: &'static str,
    rule: &'static str,
    severity: Severity,
    /// Only in files that are data (a script is expected to contain `bash -i`).
    data_only: bool,
    /// A match counts only if this word appears earlier on the same line.
    needs_on_line: &'static [&'static str],
    what: &'static str,
}

/// The EICAR anti-virus test file (https://www.eicar.org/download-anti-malware-testfile/).
pub const EICAR: &str = r"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

const fn pat(
    bytes: &'static str,
    rule: &'static str,
    severity: Severity,
    what: &'static str,
) -> Pattern {
    Pattern {
        bytes,
        rule,
        severity,
        data_only: true,
        needs_on_line: &[],
        what,
    }
}

const DOWNLOADERS: &[&str] = &["curl", "wget", "fetch", "iwr", "invoke-webrequest"];

static PATTERNS: [Pattern; 21] = [
    Pattern {
        bytes: EICAR,
        rule: "malware.eicar",
        severity: Severity::Critical,
        data_only: false,
        needs_on_line: &[],
        what: "the EICAR anti-virus test signature",
    },
    pat(
        "/dev/tcp/",
        "script.reverse_shell",
        Severity::High,
        "a /dev/tcp/ reverse-shell redirection",
    ),
    pat(
        "bash -i >&",
        "script.reverse_shell",
        Severity::High,
        "an interactive shell redirected to a socket",
    ),
    Pattern {
        bytes: "-e /bin/",
        rule: "script.reverse_shell",
        severity: Severity::High,
        data_only: true,
        needs_on_line: &["nc", "ncat", "netcat"],
        what: "netcat executing a shell",
    },
    pat(
        "socat exec:",
        "script.reverse_shell",
        Severity::High,
        "socat executing a program",
    ),
    pat(
        "powershell -enc",
        "script.encoded_powershell",
        Severity::High,
        "PowerShell running an encoded command",
    ),
    pat(
        "powershell.exe -enc",
        "script.encoded_powershell",
        Severity::High,
        "PowerShell running an encoded command",
    ),
    pat(
        "-encodedcommand ",
        "script.encoded_powershell",
        Severity::High,
        "PowerShell running an encoded command",
    ),
    pat(
        "downloadstring(",
        "script.download_exec",
        Severity::High,
        "a PowerShell download-and-run cradle",
    ),
    pat(
        "certutil -urlcache",
        "script.download_exec",
        Severity::High,
        "certutil used as a downloader",
    ),
    Pattern {
        bytes: "| sh",
        rule: "script.pipe_to_shell",
        severity: Severity::High,
        data_only: true,
        needs_on_line: DOWNLOADERS,
        what: "a download piped into a shell",
    },
    Pattern {
        bytes: "|sh",
        rule: "script.pipe_to_shell",
        severity: Severity::High,
        data_only: true,
        needs_on_line: DOWNLOADERS,
        what: "a download piped into a shell",
    },
    Pattern {
        bytes: "| bash",
        rule: "script.pipe_to_shell",
        severity: Severity::High,
        data_only: true,
        needs_on_line: DOWNLOADERS,
        what: "a download piped into a shell",
    },
    Pattern {
        bytes: "|bash",
        rule: "script.pipe_to_shell",
        severity: Severity::High,
        data_only: true,
        needs_on_line: DOWNLOADERS,
        what: "a download piped into a shell",
    },
    Pattern {
        bytes: "-rf / ",
        rule: "script.destructive",
        severity: Severity::High,
        data_only: true,
        needs_on_line: &["rm"],
        what: "a command deleting the root file system",
    },
    Pattern {
        bytes: "-rf /*",
        rule: "script.destructive",
        severity: Severity::High,
        data_only: true,
        needs_on_line: &["rm"],
        what: "a command deleting the root file system",
    },
    pat(
        "--no-preserve-root",
        "script.destructive",
        Severity::High,
        "a command deleting the root file system",
    ),
    pat(
        ":(){ :|:& };:",
        "script.destructive",
        Severity::High,
        "a shell fork bomb",
    ),
    pat(
        "eval(base64_decode(",
        "script.obfuscated_exec",
        Severity::High,
        "code evaluated from base64",
    ),
    pat(
        "exec(base64.b64decode(",
        "script.obfuscated_exec",
        Severity::High,
        "code evaluated from base64",
    ),
    pat(
        "<script",
        "script.html",
        Severity::Medium,
        "an HTML script element",
    ),
];

/// The data patterns, lower-cased, in one packed (Teddy, SIMD) searcher run over a lower-cased
/// copy of each chunk: exact ASCII case-insensitivity at memory speed. (An `AhoCorasick` with
/// these patterns falls back to its DFA at about 0.5 GiB/s; the packed searcher runs at over
/// 10 GiB/s on the same text.)
static DATA_SEARCHER: LazyLock<(aho_corasick::packed::Searcher, Vec<usize>)> =
    LazyLock::new(|| {
        let index: Vec<usize> = (0..PATTERNS.len())
            .filter(|&i| PATTERNS[i].data_only)
            .collect();
        let mut builder = aho_corasick::packed::Config::new().builder();
        for &i in &index {
            builder.add(PATTERNS[i].bytes.to_ascii_lowercase());
        }
        (
            builder
                .build()
                .expect("the content patterns fit a packed searcher"),
            index,
        )
    });

/// The EICAR signature, matched exactly (it is case-sensitive) in every file.
static EICAR_FINDER: LazyLock<memchr::memmem::Finder<'static>> =
    LazyLock::new(|| memchr::memmem::Finder::new(EICAR.as_bytes()));

/// An error a decompression guard raises to stop a bomb; carries the guard that raised it so
/// only that archive level handles it.
#[derive(Debug)]
struct BombStop {
    guard: u64,
    message: String,
}

impl std::fmt::Display for BombStop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for BombStop {}

/// A decompressed stream inside an archive, for [`Scanner::scan_expanded`].
pub(crate) struct Expanded<'a> {
    /// Its path (`outer!inner`).
    pub(crate) path: &'a str,
    /// Whether it is data.
    pub(crate) data: bool,
    /// The depth of the archive holding it.
    pub(crate) depth: u32,
    /// The archive holding it, which a bomb finding names.
    pub(crate) outer: &'a str,
}

/// The content scanner. One per scan: it carries the shared decompression budget.
pub struct Scanner<'l> {
    pub(crate) limits: &'l Limits,
    pub(crate) report: Report,
    /// Decompressed bytes still allowed in this scan.
    budget: Rc<Cell<u64>>,
    next_guard: u64,
    /// Whether the secret rules run ([`crate::secrets`]): on for package files, off for data
    /// packs (whose rows may legitimately hold key-like values, and which no one publishes by
    /// mistake from a working folder).
    secrets: bool,
}

impl<'l> Scanner<'l> {
    /// A scanner with these limits.
    pub fn new(limits: &'l Limits) -> Scanner<'l> {
        Scanner {
            limits,
            report: Report::default(),
            budget: Rc::new(Cell::new(limits.max_expanded)),
            next_guard: 0,
            secrets: false,
        }
    }

    /// Turns the secret rules on or off for every file this scanner reads from now on.
    pub fn with_secrets(mut self, on: bool) -> Self {
        self.secrets = on;
        self
    }

    /// Scans one file. `data` says the file is data whatever its name (a data pack); an I/O
    /// error from `reader` ends the scan of this file and is returned.
    pub fn scan(&mut self, path: &str, data: bool, reader: &mut dyn Read) -> io::Result<()> {
        self.scan_at(path, data, reader, 0)
    }

    /// The report so far.
    pub fn finish(mut self) -> Report {
        self.report.sort();
        self.report
    }

    /// Adds findings from outside the content scanner (the prompt scanner).
    pub fn add(&mut self, findings: impl IntoIterator<Item = Finding>) {
        self.report.add(findings, self.limits.max_findings);
    }

    pub(crate) fn scan_at(
        &mut self,
        path: &str,
        data: bool,
        reader: &mut dyn Read,
        depth: u32,
    ) -> io::Result<()> {
        self.report.files += 1;
        let mut found = FileFindings::default();
        let mut head = Vec::with_capacity(HEAD);
        reader.take(HEAD as u64).read_to_end(&mut head)?;
        let declared = Declared::of(path);
        let detected = detect(&head);
        let data = data || declared.is_data();
        type_rules(path, declared, detected, data, &mut found);

        let mut rest = io::Cursor::new(head).chain(reader);
        let archive = matches!(detected, Detected::Zip | Detected::Gzip | Detected::Tar);
        if archive && depth >= self.limits.max_depth {
            found.push(path, 0, "archive.nesting", Severity::High, || {
                format!(
                    "{} nested {} levels deep; more than {} levels is not opened",
                    detected.name(),
                    depth + 1,
                    self.limits.max_depth
                )
            });
            self.report.bytes += io::copy(&mut rest, &mut io::sink())?;
        } else if archive {
            let mut counted = Counted::new(&mut rest);
            let outcome = match detected {
                Detected::Zip => crate::zip::scan(self, path, data, &mut counted, depth),
                Detected::Tar => self.scan_tar(path, data, &mut counted, depth),
                _ => self.scan_gzip(path, data, &mut counted, depth),
            };
            if let Err(err) = outcome {
                if err
                    .get_ref()
                    .is_some_and(|e| e.downcast_ref::<BombStop>().is_some())
                {
                    return Err(err);
                }
                found.push(
                    path,
                    counted.count,
                    "archive.malformed",
                    Severity::Medium,
                    || format!("{} that does not parse: {err}", detected.name()),
                );
            }
            // Whatever follows the archive (an appended payload) is scanned as raw bytes. The
            // entries counted their own bytes; only these are the archive's.
            let before = counted.count;
            self.report.bytes +=
                raw_scan(path, data, self.secrets, &mut counted, before, &mut found)?;
        } else {
            self.report.bytes += raw_scan(path, data, self.secrets, &mut rest, 0, &mut found)?;
        }
        self.report
            .add(found.into_findings(), self.limits.max_findings);
        Ok(())
    }

    /// Scans a decompressed stream under a bomb guard. Returns false if the guard stopped it.
    pub(crate) fn scan_expanded(
        &mut self,
        stream: Expanded<'_>,
        compressed: Rc<Cell<u64>>,
        decoder: &mut dyn Read,
        found: &mut FileFindings,
    ) -> io::Result<bool> {
        let Expanded {
            path,
            data,
            depth,
            outer,
        } = stream;
        self.next_guard += 1;
        let id = self.next_guard;
        let mut guard = Guard {
            inner: decoder,
            id,
            compressed,
            produced: 0,
            budget: self.budget.clone(),
            limits: self.limits.clone(),
            path: path.to_string(),
        };
        match self.scan_at(path, data, &mut guard, depth + 1) {
            Ok(()) => Ok(true),
            Err(err) => match err.get_ref().and_then(|e| e.downcast_ref::<BombStop>()) {
                Some(stop) if stop.guard == id => {
                    found.push(outer, 0, "archive.bomb", Severity::High, || {
                        stop.message.clone()
                    });
                    Ok(false)
                }
                _ => Err(err),
            },
        }
    }

    fn scan_tar(
        &mut self,
        path: &str,
        data: bool,
        reader: &mut dyn Read,
        depth: u32,
    ) -> io::Result<()> {
        let mut found = FileFindings::default();
        let mut archive = tar::Archive::new(reader);
        let mut entries = 0u64;
        let outcome = (|| -> io::Result<()> {
            for entry in archive.entries()? {
                let mut entry = entry?;
                entries += 1;
                if entries > self.limits.max_entries {
                    found.push(path, 0, "archive.too_many_entries", Severity::High, || {
                        format!("more than {} entries", self.limits.max_entries)
                    });
                    break;
                }
                let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
                let offset = entry.raw_header_position();
                let inner = format!("{path}!{name}");
                check_entry_name(path, &name, offset, &mut found);
                let kind = entry.header().entry_type();
                if kind.is_symlink() || kind.is_hard_link() {
                    let target = entry
                        .link_name_bytes()
                        .map(|t| String::from_utf8_lossy(&t).into_owned())
                        .unwrap_or_default();
                    check_link(path, &name, &target, kind.is_symlink(), offset, &mut found);
                    continue;
                }
                if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
                    found.push(
                        path,
                        offset,
                        "archive.special_file",
                        Severity::Medium,
                        || format!("{name:?} is a device or FIFO entry"),
                    );
                    continue;
                }
                if !(kind.is_file() || kind.is_contiguous()) {
                    continue;
                }
                self.scan_at(&inner, data, &mut entry, depth + 1)?;
            }
            Ok(())
        })();
        self.report
            .add(found.into_findings(), self.limits.max_findings);
        outcome
    }

    fn scan_gzip(
        &mut self,
        path: &str,
        data: bool,
        reader: &mut dyn Read,
        depth: u32,
    ) -> io::Result<()> {
        let mut found = FileFindings::default();
        let counter = Rc::new(Cell::new(0u64));
        let mut source = CountingBufRead {
            inner: BufReader::with_capacity(CHUNK, reader),
            count: counter.clone(),
        };
        let mut decoder = flate2::bufread::MultiGzDecoder::new(&mut source);
        let inner = match path.rsplit_once('.') {
            Some((stem, "tgz")) => {
                format!("{path}!{}.tar", stem.rsplit('/').next().unwrap_or(stem))
            }
            Some((stem, _)) if path.to_ascii_lowercase().ends_with(".gz") => {
                format!("{path}!{}", stem.rsplit(['/', '!']).next().unwrap_or(stem))
            }
            _ => format!("{path}!"),
        };
        let outcome = self.scan_expanded(
            Expanded {
                path: &inner,
                data,
                depth,
                outer: path,
            },
            counter,
            &mut decoder,
            &mut found,
        );
        self.report
            .add(found.into_findings(), self.limits.max_findings);
        outcome.map(|_| ())
    }
}

/// Rules on what content is versus what its name says.
fn type_rules(
    path: &str,
    declared: Declared,
    detected: Detected,
    data: bool,
    found: &mut FileFindings,
) {
    if detected.is_executable() {
        found.push(path, 0, "exec.native", Severity::High, || {
            format!(
                "{path} is {}: native code has no place in a package or data pack",
                detected.name()
            )
        });
        return;
    }
    match detected {
        Detected::Dos | Detected::JavaClass => {
            found.push(path, 0, "exec.bytecode", Severity::Medium, || {
                format!("{path} is {}", detected.name())
            });
            return;
        }
        Detected::Script if data => {
            found.push(path, 0, "script.in_data", Severity::High, || {
                format!("{path} is declared as data but is a script (it starts with #!)")
            });
            return;
        }
        _ => {}
    }
    let expected: &[Detected] = match declared {
        Declared::Parquet => &[Detected::Parquet],
        Declared::Arrow => &[Detected::Arrow],
        Declared::Zip => &[Detected::Zip],
        Declared::Gzip => &[Detected::Gzip],
        Declared::Tar => &[Detected::Tar],
        Declared::DataText | Declared::Markup => &[Detected::Text],
        Declared::Media => &[Detected::Media],
        Declared::Code | Declared::Unknown => return,
    };
    if detected == Detected::Empty || expected.contains(&detected) {
        return;
    }
    // Declared data that is really a script or archive hides what it is; other mismatches
    // (a .csv that is binary) are suspicious but common enough in practice to only report.
    let severity = match (declared, detected) {
        (_, Detected::Script) => Severity::High,
        (
            Declared::Parquet | Declared::Arrow | Declared::DataText,
            Detected::Zip | Detected::Gzip | Detected::Tar,
        ) => Severity::High,
        (Declared::Parquet | Declared::Arrow, Detected::Text) => Severity::High,
        _ => Severity::Medium,
    };
    found.push(path, 0, "type.mismatch", severity, || {
        let ext = path.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
        format!(
            "{path} is named .{ext} but its content is {}",
            detected.name()
        )
    });
}

/// Flags archive entry names that escape the extraction root.
pub(crate) fn check_entry_name(archive: &str, name: &str, offset: u64, found: &mut FileFindings) {
    let unified = name.replace('\\', "/");
    let absolute = unified.starts_with('/')
        || unified.as_bytes().get(1) == Some(&b':') && unified.as_bytes()[0].is_ascii_alphabetic();
    if absolute {
        found.push(archive, offset, "archive.absolute_path", Severity::High, || {
            format!("entry {name:?} has an absolute path: extracting it writes outside the target directory")
        });
    }
    if unified.split('/').any(|part| part == "..") {
        found.push(archive, offset, "archive.traversal", Severity::High, || {
            format!("entry {name:?} climbs out of the archive with ../")
        });
    }
    if name.contains('\0') {
        found.push(archive, offset, "archive.traversal", Severity::High, || {
            format!("entry {:?} has a NUL byte in its name", excerpt(name))
        });
    }
}

fn excerpt(name: &str) -> String {
    crate::excerpt(name, 80)
}

/// Flags links in archives: any link can redirect a later entry's write; one that leaves the
/// root is an escape.
pub(crate) fn check_link(
    archive: &str,
    name: &str,
    target: &str,
    symbolic: bool,
    offset: u64,
    found: &mut FileFindings,
) {
    let kind = if symbolic { "symlink" } else { "hard link" };
    let unified = target.replace('\\', "/");
    // A symlink resolves from its own directory, a hard link from the archive root.
    let mut depth: i64 = if symbolic {
        name.replace('\\', "/")
            .split('/')
            .filter(|p| !p.is_empty())
            .count() as i64
            - 1
    } else {
        0
    };
    let mut escapes = unified.starts_with('/');
    for part in unified.split('/') {
        match part {
            "" | "." => {}
            ".." => depth -= 1,
            _ => depth += 1,
        }
        if depth < 0 {
            escapes = true;
        }
    }
    if escapes {
        found.push(
            archive,
            offset,
            "archive.link_escape",
            Severity::High,
            || format!("{kind} {name:?} points outside the archive, to {target:?}"),
        );
    } else {
        found.push(archive, offset, "archive.link", Severity::Medium, || {
            format!("{kind} {name:?} → {target:?}")
        });
    }
}

/// Scans raw bytes for patterns; returns how many bytes it read. `base` is the offset of the
/// reader's first byte in the file.
fn raw_scan(
    path: &str,
    data: bool,
    secrets: bool,
    reader: &mut dyn Read,
    base: u64,
    found: &mut FileFindings,
) -> io::Result<u64> {
    let (searcher, index_of) = &*DATA_SEARCHER;
    let mut buf = vec![0u8; OVERLAP + CHUNK];
    let mut lower = if data {
        vec![0u8; OVERLAP + CHUNK]
    } else {
        Vec::new()
    };
    let config = secrets && crate::secrets::is_config_file(path);
    // `kept` bytes at the front of `buf` are the end of the previous chunk.
    let mut kept = 0usize;
    let mut total = 0u64;
    loop {
        let n = read_full(reader, &mut buf[kept..])?;
        if n == 0 {
            break;
        }
        let filled = kept + n;
        let window = &buf[..filled];
        // Offset in the file of window[0].
        let start = base + total - kept as u64;
        if secrets {
            crate::secrets::scan_window(path, window, kept, start, config, found);
        }
        let mut report = |at: usize, pattern: &Pattern| {
            let offset = start + at as u64;
            found.push(path, offset, pattern.rule, pattern.severity, || {
                format!("{path} contains {} at byte {offset}", pattern.what)
            });
        };
        // A match ending inside the kept bytes was found with the previous chunk.
        for at in EICAR_FINDER.find_iter(window) {
            if at + EICAR.len() > kept {
                report(at, &PATTERNS[0]);
            }
        }
        if data {
            for (d, s) in lower[..filled].iter_mut().zip(window) {
                // Branch-free ASCII lower-casing, so the loop vectorizes.
                *d = s | (u8::from(s.is_ascii_uppercase()) << 5);
            }
            for m in searcher.find_iter(&lower[..filled]) {
                if m.end() <= kept {
                    continue;
                }
                let pattern = &PATTERNS[index_of[m.pattern().as_usize()]];
                if !pattern.needs_on_line.is_empty() {
                    let line_start = lower[..m.start()]
                        .iter()
                        .rposition(|&b| b == b'\n')
                        .map_or(0, |p| p + 1);
                    let line = &lower[line_start..m.start()];
                    if !pattern
                        .needs_on_line
                        .iter()
                        .any(|w| contains(line, w.as_bytes()))
                    {
                        continue;
                    }
                }
                report(m.start(), pattern);
            }
        }
        total += n as u64;
        let keep = filled.min(OVERLAP);
        buf.copy_within(filled - keep..filled, 0);
        kept = keep;
    }
    Ok(total)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Reads until `buf` is full or the input ends.
pub(crate) fn read_full(reader: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Counts the bytes read through it.
pub(crate) struct Counted<'a> {
    inner: &'a mut dyn Read,
    pub(crate) count: u64,
}

impl<'a> Counted<'a> {
    pub(crate) fn new(inner: &'a mut dyn Read) -> Counted<'a> {
        Counted { inner, count: 0 }
    }
}

impl Read for Counted<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

/// A buffered reader that counts the bytes its consumer takes (compressed bytes consumed by a
/// decompressor), shared with the bomb guard.
pub(crate) struct CountingBufRead<R> {
    pub(crate) inner: R,
    pub(crate) count: Rc<Cell<u64>>,
}

impl<R: BufRead> Read for CountingBufRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for CountingBufRead<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        self.count.set(self.count.get() + amt as u64);
        self.inner.consume(amt);
    }
}

/// Stops a decompression that expands too far: more than the ratio limit over the compressed
/// bytes consumed, or past the scan's total budget.
struct Guard<'a> {
    inner: &'a mut dyn Read,
    id: u64,
    compressed: Rc<Cell<u64>>,
    produced: u64,
    budget: Rc<Cell<u64>>,
    limits: Limits,
    path: String,
}

impl Read for Guard<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.produced += n as u64;
        let compressed = self.compressed.get().max(1);
        let stop = |message: String| {
            Err(io::Error::other(BombStop {
                guard: self.id,
                message,
            }))
        };
        if self.produced > self.limits.ratio_floor
            && self.produced > compressed.saturating_mul(self.limits.max_ratio)
        {
            return stop(format!(
                "{} expands more than {}× ({} bytes from {} compressed): a compression bomb; not expanded further",
                self.path, self.limits.max_ratio, self.produced, compressed
            ));
        }
        let left = self.budget.get();
        if n as u64 > left {
            return stop(format!(
                "{} takes the scan past {} decompressed bytes: a compression bomb; not expanded further",
                self.path, self.limits.max_expanded
            ));
        }
        self.budget.set(left - n as u64);
        Ok(n)
    }
}
