#![no_main]

use libfuzzer_sys::fuzz_target;

// Parser + decision + patch application + idempotence; see
// `portcullis_injector::fuzzing::check_admission_review`.
fuzz_target!(|data: &[u8]| {
    portcullis_injector::fuzzing::check_admission_review(data);
});
