//! containerd's `hosts.toml` (registry mirrors): `veil_registry::hosts::parse_hosts_toml`.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = veil_registry::hosts::parse_hosts_toml(
            text,
            Path::new("/etc/containerd/certs.d/fuzz/hosts.toml"),
        );
    }
});
