#![no_main]
// The HTTP/2 :authority rewriter on the client port reads untrusted bytes from the network.
// See detcd_net::h2_authority::fuzz_check for what is checked.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| detcd_net::h2_authority::fuzz_check(data));
