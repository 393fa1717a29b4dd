//! Helpers shared by the layer-format integration tests: a sample layer tar, and reading
//! every file of a [`LayerToc`] back through the chunk codec.

#![allow(dead_code)]

use std::collections::BTreeMap;

use veil_formats::codec::decode_chunk;
use veil_formats::toc::{EntryKind, LayerToc};

/// Deterministic pseudo-random bytes (xorshift), so tests need no RNG crate.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A layer tar with directories, small and empty files, a 10 MiB random file, a
/// symlink, a hard link, a whiteout, an opaque whiteout, a long name and xattrs.
/// Returns the tar and the expected contents of each regular file by clean name.
pub fn sample_layer_tar() -> (Vec<u8>, BTreeMap<String, Vec<u8>>) {
    let mut files = BTreeMap::new();
    let mut b = tar::Builder::new(Vec::new());
    let dir = |b: &mut tar::Builder<Vec<u8>>, name: &str| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(0);
        b.append_data(&mut h, name, std::io::empty()).unwrap();
    };
    dir(&mut b, "etc/");
    dir(&mut b, "usr/");
    dir(&mut b, "usr/bin/");
    dir(&mut b, "var/");
    let mut file = |b: &mut tar::Builder<Vec<u8>>, name: &str, data: Vec<u8>, mode: u32| {
        let mut h = tar::Header::new_ustar();
        h.set_mode(mode);
        h.set_mtime(1_700_000_001);
        h.set_uid(1000);
        h.set_gid(1000);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, &data[..]).unwrap();
        files.insert(name.trim_start_matches("./").to_owned(), data);
    };
    file(&mut b, "etc/hostname", b"veil\n".to_vec(), 0o644);
    file(&mut b, "etc/empty", Vec::new(), 0o600);
    file(&mut b, "usr/bin/tool", pseudo_random(10 << 20, 7), 0o4755);
    file(&mut b, "usr/bin/small", pseudo_random(70_000, 3), 0o755);
    file(
        &mut b,
        &format!("var/{}", "long".repeat(40)),
        b"long name\n".to_vec(),
        0o644,
    );
    file(&mut b, "var/.wh.removed", Vec::new(), 0o644);
    file(&mut b, "usr/.wh..wh..opq", Vec::new(), 0o644);
    b.append_pax_extensions([("SCHILY.xattr.user.veil", &b"yes"[..])])
        .unwrap();
    file(&mut b, "etc/with-xattr", b"x".to_vec(), 0o644);
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_mode(0o777);
    h.set_size(0);
    b.append_link(&mut h, "usr/bin/link", "tool").unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Link);
    h.set_mode(0o644);
    h.set_size(0);
    b.append_link(&mut h, "etc/hostname.hard", "etc/hostname")
        .unwrap();
    (b.into_inner().unwrap(), files)
}

/// Every regular file's bytes, decoded chunk by chunk through [`decode_chunk`].
pub fn decode_all(toc: &LayerToc, blob: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in &toc.entries {
        if e.kind != EntryKind::Reg {
            continue;
        }
        let mut data = Vec::with_capacity(e.size as usize);
        for c in &e.chunks {
            assert_eq!(
                c.file_offset,
                data.len() as u64,
                "{}: chunks in order",
                e.name
            );
            let bytes = &blob[c.blob_offset as usize..c.blob_end as usize];
            data.extend(
                decode_chunk(c, bytes, &veil_formats::limits::Limits::default())
                    .unwrap_or_else(|err| panic!("{}: {err}", e.name)),
            );
        }
        assert_eq!(data.len() as u64, e.size, "{}", e.name);
        out.insert(e.name.clone(), data);
    }
    out
}
