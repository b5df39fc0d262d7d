//! The PII rules against the labelled corpus in `testdata/pii-corpus` (how it was made is in its
//! README). Prints precision and recall per family and fails below the floors reached when the
//! rules were written, so a change that loses detections or adds false alarms is seen.

use custodian_scan::Severity;
use custodian_scan::pii::{FAMILIES, scan_text};

#[derive(serde::Deserialize)]
struct Sample {
    id: String,
    label: String,
    text: String,
}

#[test]
fn pii_corpus_precision_and_recall() {
    let text = include_str!("../../../testdata/pii-corpus/corpus.jsonl");
    let samples: Vec<Sample> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a corpus line parses"))
        .collect();
    let fired: Vec<Vec<String>> = samples
        .iter()
        .map(|s| {
            scan_text("sample.txt", &s.text, Severity::High)
                .into_iter()
                .map(|f| f.rule)
                .collect()
        })
        .collect();
    println!("| family | samples | recall | precision |\n|---|---:|---:|---:|");
    let mut all_found = 0;
    let mut all_false = 0;
    for family in FAMILIES {
        let label = family.trim_start_matches("pii.");
        let ours: Vec<usize> = (0..samples.len())
            .filter(|&i| samples[i].label == label)
            .collect();
        let found = ours
            .iter()
            .filter(|&&i| fired[i].iter().any(|r| r == family))
            .count();
        let alarms: Vec<usize> = (0..samples.len())
            .filter(|&i| fired[i].iter().any(|r| r == family))
            .collect();
        let false_alarms = alarms
            .iter()
            .filter(|&&i| samples[i].label == "benign")
            .count();
        for &i in &alarms {
            if samples[i].label == "benign" {
                println!("false alarm: {} {:?}", samples[i].id, samples[i].text);
            }
        }
        for &i in &ours {
            if !fired[i].iter().any(|r| r == family) {
                println!("missed: {} {:?}", samples[i].id, samples[i].text);
            }
        }
        let recall = found as f64 / ours.len() as f64;
        let precision = if alarms.is_empty() {
            1.0
        } else {
            (alarms.len() - false_alarms) as f64 / alarms.len() as f64
        };
        println!(
            "| {family} | {} | {recall:.3} | {precision:.3} |",
            ours.len()
        );
        all_found += found;
        all_false += false_alarms;
        // Floors: every family finds at least 7 of its 8 samples and raises no false alarm.
        assert!(recall >= 0.875, "{family} recall {recall:.3} < 0.875");
        assert!(precision >= 0.999, "{family} precision {precision:.3} < 1");
    }
    let benign = samples.iter().filter(|s| s.label == "benign").count();
    println!("all: {all_found} found, {all_false} false alarms on {benign} benign samples");
}
