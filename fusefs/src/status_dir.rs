//! A hidden, read-only status file in a layer's mount: `/.veil/<name>`.
//!
//! Whoever mounts a layer may give its [`LayerFs`](crate::fs::LayerFs) a [`StatusFile`]:
//! a file name and a function rendering the file's bytes. The filesystem then answers a
//! lookup of [`STATUS_DIR_NAME`] in its root with a directory (`dr-x------`, root's)
//! holding that one file (`-r--------`), whose bytes are rendered afresh on every open
//! (each open reads one consistent rendering; reads bypass the page cache and its size
//! is never cached). The directory is hidden: a listing of the root does not show it, it
//! is only there for those who ask for it by name. When the layer itself has a
//! `/.veil`, the layer's wins and no status is served. What the bytes say is the
//! caller's business: this crate knows nothing of registries, keys or containerd.
//!
//! The two entries take the inode numbers right after the layer's tree (which the tree,
//! rebuilt from the same TOC after a restart, keeps), so they stay small like the others.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::tree::{LayerTree, Node, NodeKind};

/// The name of the hidden directory in a layer's root.
pub const STATUS_DIR_NAME: &str = ".veil";
/// Permission bits of the hidden directory (root may list and enter it).
const DIR_MODE: u32 = 0o500;
/// Permission bits of the status file (root may read it).
const FILE_MODE: u32 = 0o400;
/// Size reported for the hidden directory.
const DIR_SIZE: u64 = 4096;

/// Renders the status file's bytes (called on every open and `stat` of it).
pub type RenderStatus = Arc<dyn Fn() -> Vec<u8> + Send + Sync>;

/// The file served in the hidden directory: its name and what renders its bytes.
#[derive(Clone)]
pub struct StatusFile {
    name: String,
    render: RenderStatus,
}

impl std::fmt::Debug for StatusFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusFile")
            .field("name", &self.name)
            .finish()
    }
}

impl StatusFile {
    /// A status file called `name` (one path component) whose bytes `render` gives.
    pub fn new(name: impl Into<String>, render: RenderStatus) -> Result<Self, String> {
        let name = name.into();
        let bad = name.is_empty()
            || name == "."
            || name == ".."
            || name.contains('/')
            || name.contains('\0')
            || name.len() > 255;
        if bad {
            return Err(format!("{name:?} is not a file name for the status file"));
        }
        Ok(Self { name, render })
    }

    /// Its name in the hidden directory.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Which hidden entry an inode number is.
pub(crate) enum Hidden<'a> {
    /// The directory.
    Dir(&'a Node),
    /// The status file.
    File(&'a Node),
}

/// The hidden directory and its status file, as one filesystem serves them.
pub(crate) struct HiddenStatus {
    file: StatusFile,
    dir_node: Node,
    file_node: Node,
    /// Renderings of the open status file, by file handle.
    open: Mutex<HashMap<u64, Arc<Vec<u8>>>>,
    next_handle: AtomicU64,
}

impl HiddenStatus {
    /// The hidden entries of `tree`'s mount, or `None` when the layer has its own
    /// [`STATUS_DIR_NAME`] (the layer's wins).
    pub(crate) fn new(file: StatusFile, tree: &LayerTree) -> Option<Self> {
        let root = tree.root();
        if tree.lookup(root.ino, STATUS_DIR_NAME).is_some() {
            return None;
        }
        let base = tree.len() as u64;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let dir_ino = base + 1;
        let mut dir_node = Node::synthetic(dir_ino, root.ino, NodeKind::Dir, DIR_MODE, DIR_SIZE);
        dir_node.nlink = 2;
        dir_node.mtime = now;
        let mut file_node = Node::synthetic(base + 2, dir_ino, NodeKind::Reg, FILE_MODE, 0);
        file_node.mtime = now;
        Some(Self {
            file,
            dir_node,
            file_node,
            open: Mutex::new(HashMap::new()),
            // File handle 0 is what the layer's own files get.
            next_handle: AtomicU64::new(1),
        })
    }

    /// The hidden entry `ino` is, if it is one.
    pub(crate) fn entry(&self, ino: u64) -> Option<Hidden<'_>> {
        if ino == self.dir_node.ino {
            Some(Hidden::Dir(&self.dir_node))
        } else if ino == self.file_node.ino {
            Some(Hidden::File(&self.file_node))
        } else {
            None
        }
    }

    /// The hidden entry called `name` in directory `parent` (`root`: the layer's root).
    pub(crate) fn lookup(&self, root: u64, parent: u64, name: &str) -> Option<&Node> {
        if parent == root && name == STATUS_DIR_NAME {
            Some(&self.dir_node)
        } else if parent == self.dir_node.ino && name == self.file.name {
            Some(&self.file_node)
        } else {
            None
        }
    }

    /// The directory's entries from index `start`: `.`, `..`, the status file.
    pub(crate) fn dir_entries<'a>(
        &'a self,
        root: &'a Node,
        start: u64,
    ) -> impl Iterator<Item = (u64, &'a str, &'a Node)> + 'a {
        let all = [
            (".", &self.dir_node),
            ("..", root),
            (self.file.name.as_str(), &self.file_node),
        ];
        all.into_iter()
            .enumerate()
            .skip(usize::try_from(start).unwrap_or(usize::MAX))
            .map(|(index, (name, node))| (index as u64 + 1, name, node))
    }

    /// The status file's current size (renders it).
    pub(crate) fn size(&self) -> u64 {
        (self.file.render)().len() as u64
    }

    /// Renders the status file for a new open; returns its file handle.
    pub(crate) fn open(&self) -> u64 {
        let handle = self.next_handle.fetch_add(1, Ordering::Relaxed);
        let bytes = Arc::new((self.file.render)());
        self.lock().insert(handle, bytes);
        handle
    }

    /// Up to `size` bytes at `offset` of open file `handle`'s rendering (a fresh one for a
    /// handle this process did not hand out: one opened before a restart).
    pub(crate) fn read(&self, handle: u64, offset: u64, size: u32) -> Vec<u8> {
        let bytes = self
            .lock()
            .get(&handle)
            .cloned()
            .unwrap_or_else(|| Arc::new((self.file.render)()));
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        let end = start.saturating_add(size as usize).min(bytes.len());
        bytes[start..end].to_vec()
    }

    /// Forgets open file `handle`'s rendering.
    pub(crate) fn release(&self, handle: u64) {
        self.lock().remove(&handle);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Vec<u8>>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use veil_formats::limits::Limits;
    use veil_formats::toc::{Entry, EntryKind, Format, LayerToc};

    fn tree(names: &[&str]) -> LayerTree {
        let toc = LayerToc {
            format: Format::Estargz,
            entries: names
                .iter()
                .map(|n| Entry::new(*n, EntryKind::Dir))
                .collect(),
            prefetch_end: None,
            blob_size: 0,
        };
        LayerTree::build(&toc, &Limits::default()).unwrap()
    }

    fn counting() -> (StatusFile, Arc<AtomicU64>) {
        let count = Arc::new(AtomicU64::new(0));
        let c = count.clone();
        let render: RenderStatus =
            Arc::new(move || format!("n={}", c.fetch_add(1, Ordering::Relaxed)).into_bytes());
        (StatusFile::new("s.json", render).unwrap(), count)
    }

    #[test]
    fn names_that_are_not_one_component_are_refused() {
        let render: RenderStatus = Arc::new(Vec::new);
        for bad in ["", ".", "..", "a/b", "a\0b"] {
            let err = StatusFile::new(bad, render.clone()).unwrap_err();
            assert!(err.contains("is not a file name"), "{err}");
        }
    }

    #[test]
    fn the_layers_own_dir_wins() {
        let (file, _) = counting();
        assert!(HiddenStatus::new(file, &tree(&[".veil", "etc"])).is_none());
    }

    #[test]
    fn each_open_reads_one_rendering_and_entries_follow_the_tree() {
        let (file, _) = counting();
        let t = tree(&["etc", "usr"]);
        let hidden = HiddenStatus::new(file, &t).unwrap();
        let root = t.root().ino;
        let dir = hidden.lookup(root, root, STATUS_DIR_NAME).unwrap();
        assert_eq!(dir.ino, t.len() as u64 + 1);
        assert!(t.node(dir.ino).is_none());
        let f = hidden.lookup(root, dir.ino, "s.json").unwrap();
        assert_eq!(f.mode, FILE_MODE);
        assert!(hidden.lookup(root, dir.ino, "other").is_none());
        assert!(hidden.lookup(root, 2, STATUS_DIR_NAME).is_none());
        let names: Vec<&str> = hidden.dir_entries(t.root(), 0).map(|e| e.1).collect();
        assert_eq!(names, [".", "..", "s.json"]);
        assert_eq!(hidden.dir_entries(t.root(), 2).count(), 1);
        // Two opens: two renderings; reads of one open stay on its rendering.
        let (a, b) = (hidden.open(), hidden.open());
        assert_eq!(hidden.read(a, 0, 100), b"n=0");
        assert_eq!(hidden.read(b, 2, 100), b"1");
        assert_eq!(hidden.read(a, 1, 1), b"=");
        assert_eq!(hidden.read(a, 99, 1), b"");
        hidden.release(a);
        // An unknown handle (opened before a restart) gets a fresh rendering.
        assert_eq!(hidden.read(a, 0, 100), b"n=2");
    }
}
