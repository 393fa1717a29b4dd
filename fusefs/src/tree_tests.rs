//! Unit tests of [`super::LayerTree`]: implied directories, whiteouts, opaque
//! directories, hard links, duplicates and validation.

use super::*;
use veil_formats::toc::{Compression, Format};

fn toc(entries: Vec<Entry>) -> LayerToc {
    LayerToc {
        format: Format::Estargz,
        entries,
        prefetch_end: None,
        blob_size: 1 << 20,
    }
}

fn dir(name: &str, mode: u32) -> Entry {
    let mut e = Entry::new(name, EntryKind::Dir);
    e.mode = mode;
    e
}

fn file(name: &str, size: u64) -> Entry {
    let mut e = Entry::new(name, EntryKind::Reg);
    e.mode = 0o644;
    e.size = size;
    if size > 0 {
        e.chunks.push(Chunk {
            file_offset: 0,
            size,
            blob_offset: 0,
            blob_end: 10,
            inner_offset: 0,
            digest: String::new(),
            compression: Compression::Gzip,
        });
    }
    e
}

fn link(name: &str, kind: EntryKind, target: &str) -> Entry {
    let mut e = Entry::new(name, kind);
    e.link_name = target.to_string();
    e
}

/// Builds under the default limits.
fn build_tree(toc: &LayerToc) -> Result<LayerTree, TreeError> {
    LayerTree::build(toc, &Limits::default())
}

fn build(entries: Vec<Entry>) -> LayerTree {
    build_tree(&toc(entries)).expect("tree builds")
}

fn names(tree: &LayerTree, path: &str) -> Vec<String> {
    let node = tree.resolve(path).expect("path exists");
    node.children().iter().map(|(n, _)| n.clone()).collect()
}

#[test]
fn root_is_inode_one_and_takes_root_entry_metadata() {
    let mut root = dir("./", 0o700);
    root.uid = 5;
    let tree = build(vec![root, file("a", 3)]);
    assert_eq!(tree.root().ino, ROOT_INO);
    assert_eq!(tree.root().parent, ROOT_INO);
    assert_eq!(tree.root().mode, 0o700);
    assert_eq!(tree.root().uid, 5);
    assert_eq!(tree.node(0), None);
    assert_eq!(tree.node(99), None);
    assert_eq!(tree.lookup(ROOT_INO, "a").unwrap().ino, 2);
}

#[test]
fn implied_directories_get_defaults_and_keep_inode_when_listed_later() {
    let mut later = dir("a/b", 0o711);
    later.uid = 7;
    later.mtime = 1234;
    let tree = build(vec![file("a/b/c/d.txt", 4), later]);
    let a = tree.resolve("a").unwrap();
    assert_eq!(
        (a.kind, a.mode, a.uid, a.gid, a.mtime),
        (NodeKind::Dir, 0o755, 0, 0, 0)
    );
    let b = tree.resolve("a/b").unwrap();
    assert_eq!((b.mode, b.uid, b.mtime), (0o711, 7, 1234));
    assert_eq!(b.ino, 3, "a/b keeps the inode it got when implied");
    assert_eq!(tree.resolve("a/b/c/d.txt").unwrap().size, 4);
    assert_eq!(tree.resolve("a/b/c").unwrap().parent, b.ino);
    // nlink of directories: 2 + subdirectories.
    assert_eq!(tree.root().nlink, 3);
    assert_eq!(b.nlink, 3);
    assert_eq!(tree.resolve("a/b/c").unwrap().nlink, 2);
}

#[test]
fn whiteouts_become_char_devices_and_opaque_markers_xattrs() {
    let mut wh = Entry::new("etc/.wh.passwd", EntryKind::Reg);
    wh.mode = 0o644;
    wh.uid = 3;
    let tree = build(vec![
        dir("etc", 0o755),
        wh,
        Entry::new("var/lib/.wh..wh..opq", EntryKind::Reg),
        Entry::new(".wh..wh.plnk", EntryKind::Reg),
        file("var/lib/keep", 1),
    ]);
    let w = tree.resolve("etc/passwd").unwrap();
    assert_eq!(w.kind, NodeKind::Char);
    assert_eq!((w.dev_major, w.dev_minor, w.rdev()), (0, 0, 0));
    assert_eq!(w.mode, 0);
    assert_eq!(w.uid, 3);
    assert!(tree.resolve("etc/.wh.passwd").is_none());
    let lib = tree.resolve("var/lib").unwrap();
    assert_eq!(
        lib.xattrs.get(OPAQUE_XATTR).map(Vec::as_slice),
        Some(&b"y"[..])
    );
    assert_eq!(names(&tree, "var/lib"), vec!["keep"]);
    assert_eq!(names(&tree, ""), vec!["etc", "var"]);
    // An opaque marker alone implies its directory.
    let tree = build(vec![Entry::new("x/.wh..wh..opq", EntryKind::Reg)]);
    assert!(tree.resolve("x").unwrap().xattrs.contains_key(OPAQUE_XATTR));
}

#[test]
fn opaque_xattr_survives_a_later_directory_entry() {
    let tree = build(vec![
        Entry::new("d/.wh..wh..opq", EntryKind::Reg),
        dir("d", 0o750),
    ]);
    let d = tree.resolve("d").unwrap();
    assert_eq!(d.mode, 0o750);
    assert!(d.xattrs.contains_key(OPAQUE_XATTR));
}

#[test]
fn hardlinks_share_the_inode_and_count_links() {
    let tree = build(vec![
        file("bin/busybox", 100),
        link("bin/sh", EntryKind::Hardlink, "bin/busybox"),
        link("usr/bin/env", EntryKind::Hardlink, "/bin/sh"),
        link("bin/ls", EntryKind::Symlink, "busybox"),
    ]);
    let target = tree.resolve("bin/busybox").unwrap();
    let sh = tree.resolve("bin/sh").unwrap();
    let env = tree.resolve("usr/bin/env").unwrap();
    assert_eq!(sh.ino, target.ino);
    assert_eq!(env.ino, target.ino, "a link to a link resolves to the file");
    assert_eq!(target.nlink, 3);
    assert_eq!(target.size, 100);
    let ls = tree.resolve("bin/ls").unwrap();
    assert_eq!(
        (ls.kind, ls.link_target.as_str(), ls.size, ls.nlink),
        (NodeKind::Symlink, "busybox", 7, 1)
    );
    assert_eq!(names(&tree, "bin"), vec!["busybox", "ls", "sh"]);
}

#[test]
fn hardlink_errors() {
    let missing = build_tree(&toc(vec![link("a", EntryKind::Hardlink, "nope")]));
    assert!(matches!(missing, Err(TreeError::Hardlink { .. })));
    let to_dir = build_tree(&toc(vec![
        dir("d", 0o755),
        link("a", EntryKind::Hardlink, "d"),
    ]));
    assert!(matches!(to_dir, Err(TreeError::Hardlink { .. })));
    let looped = build_tree(&toc(vec![
        link("a", EntryKind::Hardlink, "b"),
        link("b", EntryKind::Hardlink, "a"),
    ]));
    assert!(matches!(looped, Err(TreeError::Hardlink { .. })));
    let escape = build_tree(&toc(vec![
        file("f", 1),
        link("a", EntryKind::Hardlink, "../f"),
    ]));
    assert!(matches!(escape, Err(TreeError::DotDot { .. })));
}

#[test]
fn devices_fifos_and_modes() {
    let mut null = Entry::new("dev/null", EntryKind::Char);
    null.mode = 0o666;
    null.dev_major = 1;
    null.dev_minor = 3;
    let mut sda = Entry::new("dev/sda", EntryKind::Block);
    sda.dev_major = 8;
    sda.dev_minor = 300;
    let mut fifo = Entry::new("run/fifo", EntryKind::Fifo);
    fifo.mode = 0o100_600; // a type bit in mode is masked away
    let mut suid = file("bin/su", 1);
    suid.mode = 0o4755;
    let tree = build(vec![null, sda, fifo, suid]);
    let null = tree.resolve("dev/null").unwrap();
    assert_eq!(
        (null.kind, null.mode, null.rdev()),
        (NodeKind::Char, 0o666, (1 << 8) | 3)
    );
    // new_encode_dev: minor's high bits go above the major.
    assert_eq!(
        tree.resolve("dev/sda").unwrap().rdev(),
        (300 & 0xff) | (8 << 8) | ((300 & !0xff) << 12)
    );
    assert_eq!(tree.resolve("run/fifo").unwrap().mode, 0o600);
    assert_eq!(tree.resolve("bin/su").unwrap().mode, 0o4755);
}

#[test]
fn duplicates_resolve_to_the_last_entry() {
    let mut second = file("a", 5);
    second.uid = 9;
    let mut d2 = dir("d", 0o700);
    d2.uid = 4;
    let tree = build(vec![
        file("a", 3),
        dir("d", 0o755),
        file("d/x", 1),
        second,
        d2,
    ]);
    let a = tree.resolve("a").unwrap();
    assert_eq!((a.size, a.uid), (5, 9));
    assert_eq!(tree.file_chunks(a).len(), 1);
    let d = tree.resolve("d").unwrap();
    assert_eq!((d.mode, d.uid), (0o700, 4));
    assert_eq!(
        names(&tree, "d"),
        vec!["x"],
        "a repeated directory keeps its children"
    );
    // Same TOC, same inode numbers.
    let again = build(vec![
        file("a", 3),
        dir("d", 0o755),
        file("d/x", 1),
        file("a", 5),
        dir("d", 0o700),
    ]);
    assert_eq!(
        again.resolve("d/x").unwrap().ino,
        tree.resolve("d/x").unwrap().ino
    );
    // A file replaced by a whiteout, and the reverse.
    let tree = build(vec![file("f", 1), Entry::new(".wh.f", EntryKind::Reg)]);
    assert_eq!(tree.resolve("f").unwrap().kind, NodeKind::Char);
    let tree = build(vec![Entry::new(".wh.f", EntryKind::Reg), file("f", 1)]);
    assert_eq!(tree.resolve("f").unwrap().kind, NodeKind::Reg);
}

#[test]
fn names_are_normalized_and_validated() {
    let tree = build(vec![file("./a//b/./c", 1), file("/abs", 1)]);
    assert!(tree.resolve("a/b/c").is_some());
    assert!(tree.resolve("abs").is_some());
    for bad in ["../etc/passwd", "a/../../b", "a/.wh..."] {
        let result = build_tree(&toc(vec![file(bad, 1)]));
        assert!(
            matches!(result, Err(TreeError::DotDot { .. })),
            "{bad}: {result:?}"
        );
    }
    let long = "x".repeat(MAX_NAME_LEN + 1);
    assert!(matches!(
        build_tree(&toc(vec![file(&long, 1)])),
        Err(TreeError::InvalidName { .. })
    ));
    assert!(matches!(
        build_tree(&toc(vec![file("a\0b", 1)])),
        Err(TreeError::InvalidName { .. })
    ));
    assert!(matches!(
        build_tree(&toc(vec![Entry::new("d/.wh.", EntryKind::Reg)])),
        Err(TreeError::InvalidName { .. })
    ));
    assert!(matches!(
        build_tree(&toc(vec![file("./", 1)])),
        Err(TreeError::RootNotDir { .. })
    ));
    assert!(matches!(
        build_tree(&toc(vec![link("s", EntryKind::Symlink, "")])),
        Err(TreeError::Symlink { .. })
    ));
}

#[test]
fn paths_under_non_directories_are_errors() {
    for entries in [
        vec![file("a", 1), file("a/b", 1)],
        vec![file("a/b", 1), file("a", 1)],
        vec![
            file("t", 1),
            link("h", EntryKind::Hardlink, "t"),
            file("h/x", 1),
        ],
    ] {
        let result = build_tree(&toc(entries));
        assert!(
            matches!(result, Err(TreeError::NotADirectory { .. })),
            "{result:?}"
        );
    }
}

#[test]
fn chunks_must_tile_the_file() {
    let chunk = |file_offset, size, blob_offset, blob_end| Chunk {
        file_offset,
        size,
        blob_offset,
        blob_end,
        inner_offset: 0,
        digest: String::new(),
        compression: Compression::Gzip,
    };
    let mut good = Entry::new("f", EntryKind::Reg);
    good.size = 10;
    good.chunks = vec![chunk(0, 4, 0, 5), chunk(4, 6, 5, 9)];
    let tree = build(vec![file("e", 0), good.clone(), file("g", 2)]);
    assert_eq!(tree.file_chunks(tree.resolve("f").unwrap()).len(), 2);
    assert_eq!(
        tree.resolve("g").unwrap().chunks,
        2..3,
        "layer-wide chunk numbers"
    );
    assert!(tree.file_chunks(tree.resolve("e").unwrap()).is_empty());
    assert_eq!(tree.file_bytes(), 12);

    let mut cases = Vec::new();
    let mut gap = good.clone();
    gap.chunks[1].file_offset = 5;
    cases.push(gap);
    let mut short = good.clone();
    short.size = 11;
    cases.push(short);
    let mut empty_range = good.clone();
    empty_range.chunks[0].blob_end = 0;
    cases.push(empty_range);
    let mut past_blob = good.clone();
    past_blob.chunks[1].blob_end = (1 << 20) + 1;
    cases.push(past_blob);
    let mut zero = good.clone();
    zero.chunks.insert(1, chunk(4, 0, 5, 6));
    cases.push(zero);
    let mut overflow = good;
    overflow.chunks[1].size = u64::MAX;
    cases.push(overflow);
    for bad in cases {
        let result = build_tree(&toc(vec![bad]));
        assert!(
            matches!(result, Err(TreeError::BadChunks { .. })),
            "{result:?}"
        );
    }
}

#[test]
fn paths_are_rebuilt_from_names_stored_once() {
    let tree = build(vec![
        dir("a", 0o755),
        file("a/b/c.txt", 3),
        link("a/hl", EntryKind::Hardlink, "a/b/c.txt"),
    ]);
    let c = tree.resolve("a/b/c.txt").unwrap();
    assert_eq!(tree.path(c.ino), "a/b/c.txt");
    assert_eq!(tree.path(tree.resolve("a/b").unwrap().ino), "a/b");
    assert_eq!(tree.path(ROOT_INO), "");
    // A hard link's inode is named by the path it was first named by.
    assert_eq!(tree.path(tree.resolve("a/hl").unwrap().ino), "a/b/c.txt");
    assert_eq!(tree.path(999), "");
}

#[test]
fn a_path_thirty_thousand_directories_deep_is_refused() {
    let deep = vec!["d"; 30_000].join("/");
    let start = std::time::Instant::now();
    let err = build_tree(&toc(vec![file(&format!("{deep}/f"), 1)])).unwrap_err();
    assert!(start.elapsed() < std::time::Duration::from_secs(5));
    match &err {
        TreeError::TooDeep { name, depth, max } => {
            assert_eq!((*depth, *max), (30_001, MAX_PATH_DEPTH));
            assert!(
                name.len() < 300,
                "the error repeats a {} byte name",
                name.len()
            );
        }
        other => panic!("expected TooDeep, got {other:?}"),
    }
    assert!(err.to_string().contains("MAX_PATH_DEPTH"));
    // A hard link whose target is too deep, the same.
    let err = build_tree(&toc(vec![link("l", EntryKind::Hardlink, &deep)])).unwrap_err();
    assert!(matches!(err, TreeError::TooDeep { .. }), "{err:?}");
}

#[test]
fn memory_is_linear_in_depth() {
    // One file at the depth limit, its directories all implied: one node and one short
    // name per level, never a path per level (that would be ~ depth^2 / 2 bytes more).
    let memory_at = |depth: usize| {
        let path = format!("{}/f", vec!["dd"; depth - 1].join("/"));
        let tree = build(vec![file(&path, 1)]);
        assert_eq!(tree.len(), depth + 1);
        assert_eq!(tree.path(tree.len() as u64), path);
        tree.memory()
    };
    let (half, full) = (memory_at(MAX_PATH_DEPTH / 2), memory_at(MAX_PATH_DEPTH));
    let per_level = (full - half) / (MAX_PATH_DEPTH as u64 / 2);
    assert!(per_level < 400, "{per_level} bytes per level");
    assert!(full < 2 * half + 1024, "{half} at depth/2, {full} at depth");
    assert!(full < (MAX_PATH_DEPTH as u64) * 400);
}

#[test]
fn implied_directories_cannot_outgrow_the_budget() {
    // Many entries each implying a fresh chain of directories: the tree would be many
    // times the TOC model, so it is refused once past the budget.
    let chain = vec!["d"; 200].join("/");
    let entries: Vec<Entry> = (0..2000)
        .map(|i| Entry::new(format!("{i}/{chain}/x"), EntryKind::Fifo))
        .collect();
    let err = build_tree(&toc(entries)).unwrap_err();
    assert!(
        matches!(err, TreeError::OverBudget { .. }),
        "expected OverBudget, got {err:?}"
    );
    assert!(err.to_string().contains("MAX_TREE_BYTES_PER_INDEX_BYTE"));
    // The same number of entries, each listing its place, fits.
    let entries: Vec<Entry> = (0..2000)
        .flat_map(|i| [dir(&format!("{i}"), 0o755), file(&format!("{i}/x"), 1)])
        .collect();
    let tree = build(entries);
    let index: u64 = tree_index(&tree);
    assert!(
        tree.memory() < 2 * index.max(1),
        "{} vs {index}",
        tree.memory()
    );
}

/// The TOC model's memory of a tree built from [`file`] and [`dir`] entries: one entry
/// per node but the root, as built.
fn tree_index(tree: &LayerTree) -> u64 {
    tree.nodes()[1..]
        .iter()
        .map(|n| {
            let mut e = Entry::new(tree.path(n.ino), EntryKind::Reg);
            e.chunks = tree.file_chunks(n).to_vec();
            veil_formats::limits::index_bytes(&e)
        })
        .sum()
}

#[test]
fn configured_limits_are_the_trees_limits() {
    // Three levels deep: built under the defaults, refused under a depth of two.
    let entries = vec![file("a/b/f", 1)];
    let tree = build(entries.clone());
    assert_eq!(tree.limits(), &Limits::default());
    let shallow = Limits {
        max_path_depth: 2,
        ..Limits::default()
    };
    match LayerTree::build(&toc(entries), &shallow) {
        Err(TreeError::TooDeep { depth, max, .. }) => assert_eq!((depth, max), (3, 2)),
        other => panic!("expected TooDeep, got {other:?}"),
    }
    // Two implied directories per entry: inside the default budget (eight bytes of tree
    // per byte of index), over a ratio of one (past the 1 MiB floor).
    let entries: Vec<Entry> = (0..20_000)
        .map(|i| Entry::new(format!("{i}/d/x"), EntryKind::Fifo))
        .collect();
    assert!(build_tree(&toc(entries.clone())).is_ok());
    let tight = Limits {
        max_tree_bytes_per_index_byte: 1,
        ..Limits::default()
    };
    let err = LayerTree::build(&toc(entries), &tight).unwrap_err();
    assert!(matches!(err, TreeError::OverBudget { .. }), "{err:?}");
}
