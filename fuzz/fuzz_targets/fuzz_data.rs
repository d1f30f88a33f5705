//! The data-file checker and the line parser on arbitrary bytes: they must never panic or hang,
//! and when the checker finds no error the trainer's loader must accept the file with the same
//! examples (the checker is the gate in front of it).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sweep::check::{data::check_data_bytes, CheckReport};

fuzz_target!(|bytes: &[u8]| {
    let mut report = CheckReport::default();
    let checked = check_data_bytes(bytes, "fuzz.json", &mut report);
    let _ = report.render();
    let loaded = sweep::text::data::examples_from_bytes(bytes.to_vec(), Path::new("fuzz.json"));
    if !report.has_errors() {
        let loaded = loaded.unwrap_or_else(|e| panic!("check passed but the loader refused: {e}"));
        assert_eq!(loaded, checked.examples, "check and loader read different examples");
        for e in &loaded {
            let _ = sweep::text::data::render_conversation(e.system.as_deref(), &e.history, &e.src);
        }
    }
});
