#![no_main]
// See detcd_fuzz::check_v2_store_rows for what is checked.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    detcd_fuzz::check_v2_store_rows(data);
});
