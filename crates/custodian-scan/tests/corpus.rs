//! The prompt scanner against the labelled corpus in `testdata/prompt-corpus` (sources and
//! licenses in its README). Prints the precision/recall table; fails if a family falls below the
//! floor it reached when the rules were written, so a rule change that loses detections or adds
//! false alarms is seen.

use custodian_scan::corpus::{evaluate, parse};

#[test]
fn corpus_precision_and_recall() {
    let text = include_str!("../../../testdata/prompt-corpus/corpus.jsonl");
    let samples = parse(text).expect("the corpus parses");
    let evaluation = evaluate(&samples);
    println!("{}", evaluation.markdown());
    println!("misclassified:\n{}", evaluation.misses_text(&samples));
    // (family, minimum recall, minimum precision)
    let floors = [
        ("override", 0.85, 0.95),
        ("roleplay", 0.95, 0.95),
        ("hidden_unicode", 0.95, 0.95),
        ("encoded", 0.85, 0.95),
        ("exfiltration", 0.9, 0.95),
        ("external_url", 0.95, 0.95),
        ("jailbreak", 0.6, 0.95),
        ("any", 0.7, 0.95),
    ];
    for (family, recall, precision) in floors {
        let score = evaluation
            .scores
            .iter()
            .find(|s| s.family == family)
            .expect("every family is scored");
        assert!(
            score.recall() >= recall,
            "{family} recall {:.3} < {recall}",
            score.recall()
        );
        assert!(
            score.precision() >= precision,
            "{family} precision {:.3} < {precision}",
            score.precision()
        );
    }
}
