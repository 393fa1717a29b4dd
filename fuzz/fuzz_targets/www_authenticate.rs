//! `WWW-Authenticate` headers from registries: `veil_registry::challenge::parse_www_authenticate`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = std::str::from_utf8(data) {
        if let Ok(challenges) = veil_registry::challenge::parse_www_authenticate(header) {
            for c in &challenges {
                let _ = c.param("realm");
            }
        }
    }
});
