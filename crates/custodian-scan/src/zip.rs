//! A streaming zip walker (APPNOTE 6.3.10): local entries in order, then the central directory.
//!
//! Reading front to back means an archive is never seeked, buffered whole or extracted. The
//! central directory is read too, after the entries, because only it carries Unix modes
//! (symlinks) and because a directory that names entries the stream does not hold is how
//! overlapping-entry bombs and smuggled files work.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read};
use std::rc::Rc;

use crate::content::{CountingBufRead, Expanded, Scanner, check_entry_name, check_link};
use crate::{FileFindings, Severity};

const LOCAL: u32 = 0x0403_4b50;
const CENTRAL: u32 = 0x0201_4b50;
const END: u32 = 0x0605_4b50;
const END64: u32 = 0x0606_4b50;
const LOCATOR64: u32 = 0x0706_4b50;
const DESCRIPTOR: u32 = 0x0807_4b50;
const SIGNATURE: u32 = 0x0505_4b50;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes([
        b[at],
        b[at + 1],
        b[at + 2],
        b[at + 3],
        b[at + 4],
        b[at + 5],
        b[at + 6],
        b[at + 7],
    ])
}

fn read_vec(r: &mut dyn Read, len: usize) -> io::Result<Vec<u8>> {
    let mut v = vec![0u8; len];
    r.read_exact(&mut v)?;
    Ok(v)
}

fn skip(r: &mut dyn Read, len: u64) -> io::Result<()> {
    let copied = io::copy(&mut r.take(len), &mut io::sink())?;
    if copied < len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the archive ends inside an entry",
        ));
    }
    Ok(())
}

/// The zip64 sizes in an extra field, for the fields the header set to 0xFFFFFFFF.
fn zip64_sizes(extra: &[u8], mut usize_: u64, mut csize: u64) -> (u64, u64, bool) {
    let mut at = 0;
    while at + 4 <= extra.len() {
        let (id, len) = (u16_at(extra, at), u16_at(extra, at + 2) as usize);
        let body = &extra[(at + 4).min(extra.len())..(at + 4 + len).min(extra.len())];
        if id == 1 {
            let mut p = 0;
            if usize_ == 0xffff_ffff && body.len() >= p + 8 {
                usize_ = u64_at(body, p);
                p += 8;
            }
            if csize == 0xffff_ffff && body.len() >= p + 8 {
                csize = u64_at(body, p);
            }
            return (usize_, csize, true);
        }
        at += 4 + len;
    }
    (usize_, csize, false)
}

/// Walks a zip archive, scanning each entry's bytes as a file of its own.
pub(crate) fn scan(
    scanner: &mut Scanner<'_>,
    path: &str,
    data: bool,
    reader: &mut dyn Read,
    depth: u32,
) -> io::Result<()> {
    let mut found = FileFindings::default();
    let outcome = walk(scanner, path, data, reader, depth, &mut found);
    scanner
        .report
        .add(found.into_findings(), scanner.limits.max_findings);
    outcome
}

fn walk(
    scanner: &mut Scanner<'_>,
    path: &str,
    data: bool,
    reader: &mut dyn Read,
    depth: u32,
    found: &mut FileFindings,
) -> io::Result<()> {
    // Counts every byte of the archive consumed, for offsets and for the bomb ratio.
    let consumed = Rc::new(Cell::new(0u64));
    let mut r = CountingBufRead {
        inner: BufReader::with_capacity(256 << 10, reader),
        count: consumed.clone(),
    };
    let mut local: BTreeMap<String, u64> = BTreeMap::new();
    let mut central: BTreeMap<String, u64> = BTreeMap::new();
    let mut entries = 0u64;
    loop {
        let at = consumed.get();
        let mut sig = [0u8; 4];
        match r.read_exact(&mut sig) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                found.push(path, at, "archive.malformed", Severity::Medium, || {
                    "the zip archive ends without an end-of-central-directory record".into()
                });
                break;
            }
            Err(e) => return Err(e),
        }
        match u32::from_le_bytes(sig) {
            LOCAL => {
                entries += 1;
                if entries > scanner.limits.max_entries {
                    found.push(path, at, "archive.too_many_entries", Severity::High, || {
                        format!("more than {} entries", scanner.limits.max_entries)
                    });
                    return Ok(());
                }
                let h = read_vec(&mut r, 26)?;
                let flags = u16_at(&h, 2);
                let method = u16_at(&h, 4);
                let (csize, usize_) = (u32_at(&h, 14) as u64, u32_at(&h, 18) as u64);
                let name = read_vec(&mut r, u16_at(&h, 22) as usize)?;
                let extra = read_vec(&mut r, u16_at(&h, 24) as usize)?;
                let name = String::from_utf8_lossy(&name).into_owned();
                let (usize_, csize, zip64) = zip64_sizes(&extra, usize_, csize);
                check_entry_name(path, &name, at, found);
                *local.entry(name.clone()).or_default() += 1;
                let inner = format!("{path}!{name}");
                let descriptor = flags & 8 != 0;
                let directory = name.ends_with('/');
                if flags & 1 != 0 {
                    found.push(path, at, "archive.encrypted", Severity::Medium, || {
                        format!("entry {name:?} is encrypted and cannot be inspected")
                    });
                    if descriptor {
                        return stop_unbounded(path, at, &name, found);
                    }
                    skip(&mut r, csize)?;
                    continue;
                }
                match (method, descriptor) {
                    (0, false) => {
                        if !directory || csize > 0 {
                            let mut body = (&mut r).take(csize);
                            scanner.scan_at(&inner, data, &mut body, depth + 1)?;
                            let left = body.limit();
                            skip(&mut body, left)?;
                        }
                    }
                    (8, false) => {
                        let mut body = BufReader::new((&mut r).take(csize));
                        let stream = Expanded {
                            path: &inner,
                            data,
                            depth,
                            outer: path,
                        };
                        inflate(scanner, &mut body, stream, found)?;
                        // Whatever the stream left of the entry's compressed bytes.
                        io::copy(&mut body, &mut io::sink())?;
                    }
                    (8, true) => {
                        // The size is known only after the data: the deflate stream ends itself,
                        // and the bufread decoder takes exactly its bytes.
                        let stream = Expanded {
                            path: &inner,
                            data,
                            depth,
                            outer: path,
                        };
                        let finished = inflate(scanner, &mut r, stream, found)?;
                        if !finished {
                            // A stopped bomb's end is unknown without expanding it.
                            return Ok(());
                        }
                        let mut d = [0u8; 4];
                        r.read_exact(&mut d)?;
                        let rest = if zip64 { 16 } else { 8 };
                        let rest = if u32::from_le_bytes(d) == DESCRIPTOR {
                            rest + 4
                        } else {
                            rest
                        };
                        skip(&mut r, rest)?;
                    }
                    (0, true) => return stop_unbounded(path, at, &name, found),
                    (other, _) => {
                        found.push(path, at, "archive.unsupported", Severity::Medium, || {
                            format!(
                                "entry {name:?} uses compression method {other}, which this scanner cannot inspect"
                            )
                        });
                        if descriptor {
                            return stop_unbounded(path, at, &name, found);
                        }
                        skip(&mut r, csize)?;
                    }
                }
                if usize_ > 0
                    && csize > 0
                    && !descriptor
                    && usize_ / csize.max(1) > scanner.limits.max_ratio
                    && usize_ > scanner.limits.ratio_floor
                {
                    found.push(path, at, "archive.bomb", Severity::High, || {
                        format!(
                            "entry {name:?} declares {usize_} bytes from {csize} compressed, more than {}×",
                            scanner.limits.max_ratio
                        )
                    });
                }
            }
            CENTRAL => {
                let h = read_vec(&mut r, 42)?;
                let made_by = u16_at(&h, 0);
                let (nlen, xlen, clen) = (
                    u16_at(&h, 24) as usize,
                    u16_at(&h, 26) as usize,
                    u16_at(&h, 28) as usize,
                );
                let external = u32_at(&h, 34);
                let name = String::from_utf8_lossy(&read_vec(&mut r, nlen)?).into_owned();
                skip(&mut r, (xlen + clen) as u64)?;
                *central.entry(name.clone()).or_default() += 1;
                let unix = made_by >> 8 == 3;
                if unix && (external >> 16) & 0o170000 == 0o120000 {
                    // The target is the entry's content; any link can redirect later writes.
                    check_link(path, &name, "", true, at, found);
                }
            }
            END => {
                let h = read_vec(&mut r, 18)?;
                skip(&mut r, u16_at(&h, 16) as u64)?;
                break;
            }
            END64 => {
                let mut len = [0u8; 8];
                r.read_exact(&mut len)?;
                skip(&mut r, u64::from_le_bytes(len))?;
            }
            LOCATOR64 => skip(&mut r, 16)?,
            DESCRIPTOR => skip(&mut r, 12)?,
            SIGNATURE => {
                let mut len = [0u8; 2];
                r.read_exact(&mut len)?;
                skip(&mut r, u16::from_le_bytes(len) as u64)?;
            }
            other => {
                found.push(path, at, "archive.malformed", Severity::Medium, || {
                    format!("unexpected record {other:#010x} at byte {at}; the rest is scanned as raw bytes")
                });
                break;
            }
        }
    }
    if !central.is_empty() && central != local {
        let extra: Vec<&String> = central
            .iter()
            .filter(|(n, c)| local.get(*n) != Some(c))
            .map(|(n, _)| n)
            .take(5)
            .collect();
        found.push(path, 0, "archive.ambiguous", Severity::High, || {
            format!(
                "the central directory and the entries disagree (e.g. {extra:?}): overlapping or hidden entries, as in zip bombs and smuggled files"
            )
        });
    }
    Ok(())
}

/// Inflates one deflate stream from `source` and scans it under a bomb guard; when the scan
/// finished, drains the rest so `source` ends right after the compressed bytes. Returns false if
/// the guard stopped it.
fn inflate(
    scanner: &mut Scanner<'_>,
    source: &mut dyn BufRead,
    stream: Expanded<'_>,
    found: &mut FileFindings,
) -> io::Result<bool> {
    let counter = Rc::new(Cell::new(0u64));
    let mut counted = CountingBufRead {
        inner: source,
        count: counter.clone(),
    };
    let mut decoder = flate2::bufread::DeflateDecoder::new(&mut counted);
    let finished = scanner.scan_expanded(stream, counter, &mut decoder, found)?;
    if finished {
        io::copy(&mut decoder, &mut io::sink())?;
    }
    Ok(finished)
}

fn stop_unbounded(path: &str, at: u64, name: &str, found: &mut FileFindings) -> io::Result<()> {
    found.push(path, at, "archive.unsupported", Severity::Medium, || {
        format!(
            "entry {name:?} has no size before its data and cannot be delimited in a stream; the rest of the archive is scanned as raw bytes"
        )
    });
    Ok(())
}
