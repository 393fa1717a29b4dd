//! Unit tests of [`super`]: records round trip, bad records, memfds and inodes refused.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use veil_formats::limits::Limits;
use veil_formats::toc::{Chunk, Compression, Entry, EntryKind, Format, LayerToc};

use super::*;
use crate::tree::LayerTree;

const RECORD: PromotedRecord = PromotedRecord {
    ino: 7,
    size: 4096,
    backing_id: 3,
};

/// A memfd of `size` bytes carrying `seals`.
fn memfd(size: u64, seals: libc::c_int) -> OwnedFd {
    // SAFETY: a NUL-terminated name and valid flags; the fd returned is ours.
    let fd = unsafe { libc::memfd_create(c"veil-test".as_ptr(), libc::MFD_ALLOW_SEALING) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh fd nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ftruncate and fcntl on an fd we own.
    unsafe {
        assert_eq!(libc::ftruncate(fd.as_raw_fd(), size as libc::off_t), 0);
        assert_eq!(libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals), 0);
    }
    fd
}

#[test]
fn a_record_round_trips() {
    let data = RECORD.encode();
    assert_eq!(PromotedRecord::decode(&data), Ok(RECORD));
    let text = String::from_utf8(data).unwrap();
    assert!(text.contains(RECORD_KIND), "{text}");
}

#[test]
fn bad_records_are_refused() {
    let bad = [
        b"".to_vec(),
        b"{}".to_vec(),
        b"not json".to_vec(),
        br#"{"layer":"sha256:x","state":"{}"}"#.to_vec(),
        br#"{"kind":"other","ino":7,"size":4096,"backing_id":3}"#.to_vec(),
        br#"{"kind":"veil-promoted-file/1","ino":1,"size":4096,"backing_id":3}"#.to_vec(),
        br#"{"kind":"veil-promoted-file/1","ino":7,"size":0,"backing_id":3}"#.to_vec(),
        br#"{"kind":"veil-promoted-file/1","ino":7,"size":4096,"backing_id":0}"#.to_vec(),
        br#"{"kind":"veil-promoted-file/1","ino":7,"size":4096,"backing_id":-1}"#.to_vec(),
        br#"{"kind":"veil-promoted-file/1","ino":7,"size":4096,"backing_id":3,"x":1}"#.to_vec(),
        br#"{"kind":"veil-promoted-file/1","ino":7,"size":4096}"#.to_vec(),
        vec![b' '; MAX_RECORD_BYTES + 1],
    ];
    for data in bad {
        let err = PromotedRecord::decode(&data).unwrap_err();
        assert!(
            matches!(err, CarryError::Record(_)),
            "{:?}: {err}",
            String::from_utf8_lossy(&data)
        );
    }
}

#[test]
fn entry_names_round_trip_and_others_are_not_entries() {
    let name = entry_name("42", 7);
    assert_eq!(name, "42.promoted.7");
    assert_eq!(parse_entry_name(&name), Some(("42", 7)));
    assert_eq!(
        parse_entry_name(&entry_name("a.promoted.1", 9)),
        Some(("a.promoted.1", 9))
    );
    for other in [
        "42",
        "",
        ".promoted.7",
        "42.promoted.",
        "42.promoted.x",
        "42.promoted.+7",
    ] {
        assert_eq!(parse_entry_name(other), None, "{other}");
    }
}

#[test]
fn a_sealed_memfd_of_the_right_size_passes() {
    let fd = memfd(RECORD.size, PROMOTED_SEALS);
    assert_eq!(check_memfd(fd.as_fd(), &RECORD), Ok(()));
}

#[test]
fn a_memfd_of_another_size_or_not_sealed_or_not_a_memfd_is_refused() {
    let other_size = memfd(RECORD.size + 1, PROMOTED_SEALS);
    let unsealed = memfd(RECORD.size, 0);
    let writable = memfd(
        RECORD.size,
        libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL,
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, vec![0u8; RECORD.size as usize]).unwrap();
    let plain = std::fs::File::open(&path).unwrap();
    let cwd = std::fs::File::open(dir.path()).unwrap();
    for (what, fd) in [
        ("other size", other_size.as_fd()),
        ("unsealed", unsealed.as_fd()),
        ("writable", writable.as_fd()),
        ("a plain file", plain.as_fd()),
        ("a directory", cwd.as_fd()),
    ] {
        let err = check_memfd(fd, &RECORD).unwrap_err();
        assert!(matches!(err, CarryError::Memfd(_)), "{what}: {err}");
    }
}

/// A layer of a directory `d` and a file `f` of [`RECORD`]'s size.
fn tree() -> LayerTree {
    let mut file = Entry::new("f", EntryKind::Reg);
    file.mode = 0o644;
    file.size = RECORD.size;
    file.chunks.push(Chunk {
        file_offset: 0,
        size: RECORD.size,
        blob_offset: 0,
        blob_end: 10,
        inner_offset: 0,
        digest: String::new(),
        compression: Compression::Gzip,
    });
    let toc = LayerToc {
        format: Format::Estargz,
        entries: vec![Entry::new("d", EntryKind::Dir), file],
        prefetch_end: None,
        blob_size: 1 << 20,
    };
    LayerTree::build(&toc, &Limits::default()).unwrap()
}

#[test]
fn the_inode_must_be_a_file_of_the_recorded_size() {
    let tree = tree();
    let f = tree.resolve("f").unwrap();
    let d = tree.resolve("d").unwrap();
    let at = |ino| PromotedRecord { ino, ..RECORD };
    assert_eq!(check_node(Some(f), &at(f.ino)), Ok(()));
    let wrong_size = PromotedRecord {
        size: RECORD.size - 1,
        ..at(f.ino)
    };
    for (node, record) in [
        (None, at(f.ino)),
        (Some(d), at(d.ino)),
        (Some(f), wrong_size),
    ] {
        let err = check_node(node, &record).unwrap_err();
        assert!(matches!(err, CarryError::Node(_)), "{err}");
    }
}

#[test]
fn a_resumed_mount_takes_over_only_the_files_that_pass_every_check() {
    use crate::cache::ChunkCache;
    use crate::pipeline::{ChunkReader, ReaderOptions};
    use crate::promote::{PromoteOptions, Promoter};

    let tree = Arc::new(tree());
    let ino = tree.resolve("f").unwrap().ino;
    let dir = tree.resolve("d").unwrap().ino;
    let cache = Arc::new(ChunkCache::new(1 << 20));
    let reader = Arc::new(ChunkReader::new(
        "sha256:carry",
        tree,
        Arc::new(veil_blob::MemoryBlob(vec![0; 16])),
        cache.clone(),
        ReaderOptions::default(),
    ));
    let promoter = Promoter::new(reader, PromoteOptions::off(), KeeperSlot::default());
    let record = PromotedRecord { ino, ..RECORD };
    let carried = |ino: u64, data: Vec<u8>, fd: OwnedFd| CarriedFile { ino, data, fd };
    let bad = vec![
        // Not a record.
        carried(ino, b"{}".to_vec(), memfd(RECORD.size, PROMOTED_SEALS)),
        // Kept under another inode than it records.
        carried(ino + 1, record.encode(), memfd(RECORD.size, PROMOTED_SEALS)),
        // A memfd of another size, or not sealed.
        carried(ino, record.encode(), memfd(RECORD.size * 2, PROMOTED_SEALS)),
        carried(ino, record.encode(), memfd(RECORD.size, 0)),
        // An inode that is not that file (the directory).
        carried(
            dir,
            PromotedRecord { ino: dir, ..record }.encode(),
            memfd(RECORD.size, PROMOTED_SEALS),
        ),
    ];
    assert_eq!(promoter.adopt(bad), 0);
    assert_eq!(cache.stats().promoted, 0);
    let good = vec![carried(
        ino,
        record.encode(),
        memfd(RECORD.size, PROMOTED_SEALS),
    )];
    assert_eq!(promoter.adopt(good), 1);
    // Charged to the cache's budget again.
    assert_eq!(cache.stats().promoted, RECORD.size);
    drop(promoter);
    assert_eq!(cache.stats().promoted, 0);
}
