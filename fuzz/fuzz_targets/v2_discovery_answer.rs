#![no_main]
// See detcd_fuzz::check_v2_discovery_answer for what is checked.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    detcd_fuzz::check_v2_discovery_answer(data);
});
