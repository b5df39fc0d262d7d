//! Pre-registration statements: parsing never panics, and whatever parses survives a round trip
//! through its own JSON unchanged.
#![no_main]
use custodian_core::prereg::PreregStatement;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(statement) = PreregStatement::from_json(data) {
        let again = PreregStatement::from_json(&statement.to_json()).expect("round trip");
        assert_eq!(again, statement);
    }
});
