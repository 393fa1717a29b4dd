//! eStargz footer (the blob's last 51 or 47 bytes): `veil_formats::estargz::parse_footer`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = veil_formats::estargz::parse_footer(data);
});
