//! The sweep-file checker on arbitrary text: it must never panic or hang, and when it finds no
//! error the typed parser and the planner's trial list must accept the file too (the checker is
//! the gate in front of them).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sweep::check::{spec::check_spec_source, CheckReport};

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let mut report = CheckReport::default();
    let checked = check_spec_source(text, "fuzz.yaml", &mut report);
    let _ = report.render();
    let typed = sweep::spec::SweepSpec::from_yaml(text, "fuzz.yaml");
    if !report.has_errors() {
        let spec = match typed {
            Ok(spec) => spec,
            Err(e) => panic!("check passed but the parser refused: {e}"),
        };
        assert!(checked.spec.is_some());
        let trials = sweep::spec::search::assignments(&spec, "fuzz.yaml")
            .unwrap_or_else(|e| panic!("check passed but planning refused: {e}"));
        for a in &trials {
            if let Err(e) = sweep::spec::params::TrialParams::from_assignment(a, spec.seed) {
                panic!("check passed but a trial is invalid: {e}");
            }
        }
    }
});
