#![no_main]
// A saved snapshot (`etcdctl snapshot save`'s file) as `detcd snapshot restore` and `status`
// read it from disk. See detcd_net::snapshot_save::fuzz_check_saved for what is checked.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| detcd_net::snapshot_save::fuzz_check_saved(data));
