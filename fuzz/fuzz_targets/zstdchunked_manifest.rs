//! zstd:chunked manifest (TOC JSON) and its annotations: the input is split at the first
//! NUL into an annotation value (`io.github.containers.zstd-chunked.manifest-position`,
//! parsed by `ManifestInfo::from_annotations`) and the manifest JSON, which is put
//! zstd-compressed in a skippable frame and read by `read_toc`.
#![no_main]
use libfuzzer_sys::fuzz_target;
use veil_formats::zstdchunked::{read_toc, ManifestInfo, ManifestPosition};

/// A zstd skippable frame's magic.
const SKIPPABLE_MAGIC: [u8; 4] = [0x50, 0x2a, 0x4d, 0x18];

fuzz_target!(|data: &[u8]| {
    let (annotation, json) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&[][..], data),
    };
    let annotation = String::from_utf8_lossy(annotation);
    let _ = ManifestInfo::from_annotations([(
        "io.github.containers.zstd-chunked.manifest-position",
        annotation.as_ref(),
    )]);
    let Ok(compressed) = zstd::encode_all(json, 1) else {
        return;
    };
    let mut blob = vec![0u8; 64];
    blob.extend(SKIPPABLE_MAGIC);
    blob.extend((compressed.len() as u32).to_le_bytes());
    let offset = blob.len() as u64;
    blob.extend(&compressed);
    let info = ManifestInfo {
        position: Some(ManifestPosition {
            offset,
            compressed_len: compressed.len() as u64,
            uncompressed_len: json.len() as u64,
            manifest_type: 1,
        }),
        ..Default::default()
    };
    let source = veil_blob::MemoryBlob(blob);
    let _ = futures::executor::block_on(read_toc(&source, &info));
});
