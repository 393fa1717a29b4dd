//! The registry's manifests and indexes (`veil_registry::manifest`): the kind from a
//! content type and the body, an image manifest, an image index and platform selection,
//! and a platform string.
#![no_main]
use libfuzzer_sys::fuzz_target;
use veil_registry::digest::Digest;
use veil_registry::manifest::{manifest_kind, parse_index, select_platform, Manifest, Platform};

fuzz_target!(|data: &[u8]| {
    for content_type in [
        None,
        Some("application/vnd.oci.image.manifest.v1+json"),
        Some("application/json; charset=utf-8"),
    ] {
        let _ = manifest_kind(content_type, data);
    }
    if let Ok(digest) =
        Digest::parse("sha256:0000000000000000000000000000000000000000000000000000000000000000")
    {
        if let Ok(manifest) = Manifest::parse(data.to_vec(), digest) {
            for layer in &manifest.layers {
                let _ = manifest.layer(&layer.digest);
            }
        }
    }
    if let Ok(entries) = parse_index(data) {
        let _ = select_platform(&entries, &Platform::host());
    }
    let _ = Platform::parse(&String::from_utf8_lossy(data));
});
