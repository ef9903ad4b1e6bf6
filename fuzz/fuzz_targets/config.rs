//! The configuration loader from YAML text: parsing, unknown keys, the typed values (addresses,
//! durations, sizes, patterns), validation by key, and that a valid configuration's dump loads to
//! the same dump.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(yaml) = std::str::from_utf8(data) {
        tandem::fuzzing::config(yaml);
    }
});
