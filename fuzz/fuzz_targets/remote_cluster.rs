#![no_main]
// See detcd_fuzz::check_remote_cluster for what is checked.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| detcd_fuzz::check_remote_cluster(data));
