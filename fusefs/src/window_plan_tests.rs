//! Unit tests of window planning: a directory's small files in one window, its budget
//! and gap, one directory window per directory, and bounded work on hostile TOCs (a
//! huge directory, chunks packed densely).

use std::sync::Arc;

use super::*;
use crate::cache::ChunkCache;
use crate::pipeline::tests::{layer, CountingSource};
use crate::pipeline::{ChunkReader, ReaderOptions};
use crate::window::tests::noise;
use crate::window::{
    WindowOptions, WindowState, DEFAULT_WINDOW_BACK_DIVISOR, DEFAULT_WINDOW_STREAM,
};

/// Files `dir/f000`… of `size` incompressible bytes for each `(dir, n, size)`, one
/// chunk each, back to back in the blob in that order.
fn files(dirs: &[(&str, usize, usize)]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (d, (dir, n, size)) in dirs.iter().enumerate() {
        for i in 0..*n {
            let seed = (d * 100_000 + i) as u64;
            out.push((format!("{dir}/f{i:05}"), noise(*size, seed)));
        }
    }
    out
}

fn tree_of(files: &[(String, Vec<u8>)]) -> (Arc<LayerTree>, Vec<u8>) {
    let named: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, d)| (n.as_str(), d.clone())).collect();
    let (toc, blob) = layer(&named, 1 << 20);
    let tree = LayerTree::build(&toc, &veil_formats::limits::Limits::default()).unwrap();
    (Arc::new(tree), blob)
}

fn options(max: u64, dir: u64) -> WindowOptions {
    WindowOptions {
        min: max,
        max,
        back_divisor: DEFAULT_WINDOW_BACK_DIVISOR,
        dir,
        keep_plaintext: true,
        stream: DEFAULT_WINDOW_STREAM,
    }
}

/// The blob range of `path`'s (only) chunk, and its directory's inode.
fn miss_in(tree: &LayerTree, path: &str) -> (Range<u64>, u64) {
    let node = tree.resolve(path).unwrap();
    let c = &tree.file_chunks(node)[0];
    (c.blob_offset..c.blob_end, node.parent)
}

/// The paths of the files holding `planned` chunks.
fn paths(tree: &LayerTree, planned: &[usize]) -> Vec<String> {
    planned
        .iter()
        .map(|&i| {
            let node = tree.nodes().iter().find(|n| n.chunks.contains(&i)).unwrap();
            tree.path(node.ino)
        })
        .collect()
}

#[test]
fn the_first_miss_in_a_directory_takes_its_small_files_and_no_more() {
    // a/ then b/, 40 files of 3000 bytes each; a neighbourhood of 8 KiB.
    let (tree, _) = tree_of(&files(&[("a", 40, 3000), ("b", 40, 3000)]));
    let state = WindowState::new(options(8 << 10, 1 << 20));
    let (miss, dir) = miss_in(&tree, "a/f00010");
    let planned = paths(&tree, &state.plan(&tree, miss.clone(), Some(dir)));
    let want: Vec<String> = (0..40)
        .filter(|&i| i != 10)
        .map(|i| format!("a/f{i:05}"))
        .collect();
    assert_eq!(planned, want, "every other file of a/, nothing of b/");
    // The second miss in a/ has only its neighbourhood (8 KiB: two or three files).
    let (miss, dir) = miss_in(&tree, "a/f00030");
    let planned = state.plan(&tree, miss, Some(dir));
    assert!(
        (1..=3).contains(&planned.len()),
        "{:?}",
        paths(&tree, &planned)
    );
    // b/'s first miss takes b/ (all but itself), whatever a/ had.
    let (miss, dir) = miss_in(&tree, "b/f00000");
    assert_eq!(state.plan(&tree, miss, Some(dir)).len(), 39);
}

#[test]
fn a_directory_window_keeps_to_its_budget_and_is_off_at_zero() {
    let (tree, _) = tree_of(&files(&[("a", 200, 3000)]));
    let (miss, dir) = miss_in(&tree, "a/f00100");
    // 64 KiB: about 21 files of 3000 bytes, half of the budget at most before the miss.
    let state = WindowState::new(options(4 << 10, 64 << 10));
    let planned = state.plan(&tree, miss.clone(), Some(dir));
    let chunks = tree.chunks();
    let start = planned
        .iter()
        .map(|&i| chunks[i].blob_offset)
        .min()
        .unwrap();
    let end = planned.iter().map(|&i| chunks[i].blob_end).max().unwrap();
    assert!(end - start <= 64 << 10, "{} bytes", end - start);
    assert!(miss.start - start <= 32 << 10);
    assert!(planned.len() >= 15, "{}", planned.len());
    // dir = 0: the neighbourhood only.
    let state = WindowState::new(options(4 << 10, 0));
    assert!(state.plan(&tree, miss, Some(dir)).len() <= 2);
}

#[test]
fn a_directory_window_ends_at_a_gap_and_skips_other_directories_before_it() {
    // x/ (1 file), then a big stretch of y/ (200 KiB of files), then a/.
    let (tree, _) = tree_of(&files(&[("x", 1, 3000), ("y", 50, 4000), ("a", 10, 3000)]));
    let (miss, dir) = miss_in(&tree, "a/f00000");
    let state = WindowState::new(options(4 << 10, 4 << 20));
    let planned = paths(&tree, &state.plan(&tree, miss, Some(dir)));
    // Backwards, y/ is a gap of more than DIR_WINDOW_GAP: only the neighbourhood's
    // quarter before the miss reaches into it.
    assert!(planned.iter().all(|p| !p.starts_with("x/")), "{planned:?}");
    assert!(planned.iter().filter(|p| p.starts_with("y/")).count() <= 1);
    assert_eq!(planned.iter().filter(|p| p.starts_with("a/")).count(), 9);
}

#[test]
fn a_huge_directory_costs_bounded_work_per_miss() {
    // 20,000 one-byte files in one directory: dense chunks (a few dozen bytes each).
    let (tree, _) = tree_of(&files(&[("huge", 20_000, 1)]));
    let index = BlobIndex::new(&tree);
    let chunks = tree.chunks();
    for path in ["huge/f00000", "huge/f10000", "huge/f19999"] {
        let (miss, dir) = miss_in(&tree, path);
        let region = index.dir_extent(chunks, dir, miss.clone(), u64::MAX / 4);
        assert!(region.scanned <= 2 * MAX_PLAN_CHUNKS, "{}", region.scanned);
        let planned = index.chunks_in(chunks, region.found, miss, 0);
        assert!(planned.scanned <= MAX_PLAN_CHUNKS);
        assert!(planned.found.len() <= MAX_PLAN_CHUNKS);
        assert!(planned.found.len() >= MAX_PLAN_CHUNKS / 2, "{path}");
    }
    // Through the window state too: every miss, each directory window once.
    let state = WindowState::new(options(1 << 20, u64::MAX / 4));
    let (miss, dir) = miss_in(&tree, "huge/f10000");
    assert!(state.plan(&tree, miss.clone(), Some(dir)).len() <= MAX_PLAN_CHUNKS);
    assert!(!state.dirs_started.first(dir));
}

#[tokio::test]
async fn reading_a_directory_file_by_file_costs_two_requests_with_directory_windows() {
    // 60 files of 6000 bytes in d/ (360 KB), then 60 in e/; read d/'s files in a
    // scattered order, as imports do.
    let all = files(&[("d", 60, 6000), ("e", 60, 6000)]);
    let mut counts = Vec::new();
    for dir_window in [0, 1 << 20] {
        let (tree, blob) = tree_of(&all);
        let source = Arc::new(CountingSource::new(blob));
        let reader = ChunkReader::new(
            "sha256:dir-window-test",
            tree,
            source.clone(),
            Arc::new(ChunkCache::new(64 << 20)),
            ReaderOptions {
                window: options(16 << 10, dir_window),
                ..ReaderOptions::default()
            },
        );
        for i in (0..60).map(|i| (i * 7) % 60) {
            let (name, data) = &all[i];
            let ino = reader.tree().resolve(name).unwrap().ino;
            // Sequential reads, each waiting for the windows before it to land.
            crate::window::tests::settle(&reader).await;
            assert_eq!(&reader.read(ino, 0, 1 << 20).await.unwrap(), data);
        }
        counts.push(source.requests().len());
    }
    assert!(counts[1] <= 3, "with directory windows: {counts:?}");
    assert!(counts[0] >= 10, "neighbourhood only: {counts:?}");
}
