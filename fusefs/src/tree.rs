//! The inode tree of a layer, built once from its [`LayerToc`].
//!
//! FUSE speaks in inode numbers; a TOC speaks in paths. [`LayerTree::build`] turns the
//! one into the other and fixes every question the filesystem would otherwise have to
//! answer on the hot path:
//!
//! - **Inode numbers.** The root is [`ROOT_INO`] (1, as FUSE requires); every other node
//!   gets the next number in the order the TOC first needs it. The same TOC always yields
//!   the same numbers.
//! - **Implied directories.** A path like `a/b/c` whose `a` or `a/b` the TOC never lists
//!   gets directories with sane defaults (mode `0755`, root-owned, mtime 0). If the TOC
//!   lists the directory later, its metadata replaces the defaults and the inode stays.
//! - **Hard links** become a second name for the target's inode; `nlink` counts names.
//!   Directories count `2 + subdirectories`, as on disk.
//! - **Overlay whiteouts.** A lower directory of overlayfs marks deletions the way the
//!   kernel expects: `.wh.NAME` is presented as a character device 0/0 named `NAME`, and
//!   `.wh..wh..opq` as the xattr `trusted.overlay.opaque = "y"` on its directory. Other
//!   `.wh..wh.*` bookkeeping entries (aufs) are dropped.
//! - **Bounded cost.** Each name is stored once, in its directory's child list; a node
//!   knows its parent, and [`LayerTree::path`] rebuilds a path for logs. Memory is
//!   linear in the TOC, not in the square of a path's depth. Paths deeper than
//!   [`Limits::max_path_depth`] ([`MAX_PATH_DEPTH`] by default) are refused, and the
//!   whole tree may take at most [`Limits::max_tree_bytes_per_index_byte`]
//!   ([`MAX_TREE_BYTES_PER_INDEX_BYTE`]) times the memory of the TOC model it is built
//!   from (at least [`TREE_BUDGET_FLOOR`]): implied directories cannot turn a small TOC
//!   into a large tree.
//! - **Validation.** `..` components, NUL bytes and over-long names are refused; duplicate
//!   paths resolve deterministically (the later TOC entry wins, as when a tar is
//!   extracted; a directory repeated keeps its children); a path under a non-directory, a
//!   hard link to a missing target or to a directory, and file chunks that do not tile
//!   the file are errors. Nothing here panics on bad input.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use veil_formats::limits::{index_bytes, shorten, Limits};
pub use veil_formats::limits::{MAX_PATH_DEPTH, MAX_TREE_BYTES_PER_INDEX_BYTE};
use veil_formats::toc::{Chunk, Entry, EntryKind, LayerToc};

use check::{check_chunks, check_component, split_parent, split_path};

/// Inode number of the root directory.
pub const ROOT_INO: u64 = 1;

/// The xattr overlayfs reads to find an opaque directory.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Longest file name component accepted (Linux `NAME_MAX`).
pub const MAX_NAME_LEN: usize = 255;

/// Longest symlink target accepted (Linux `PATH_MAX` less the terminating NUL).
pub const MAX_LINK_LEN: usize = 4095;

/// Tree memory any layer may use whatever its TOC (1 MiB).
pub const TREE_BUDGET_FLOOR: u64 = 1 << 20;

/// Mode of directories the TOC implies but does not list.
pub const IMPLIED_DIR_MODE: u32 = 0o755;

/// Prefix of an overlay/aufs whiteout file name.
const WHITEOUT_PREFIX: &str = ".wh.";
/// Prefix of aufs bookkeeping names (`.wh..wh.*`).
const WHITEOUT_META_PREFIX: &str = ".wh..wh.";
/// Name of the opaque-directory marker.
const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// How many hard links may chain (a link to a link ...) before we call it a loop.
const MAX_HARDLINK_CHAIN: usize = 64;

/// What a node is, as presented to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// Directory.
    Dir,
    /// Regular file.
    Reg,
    /// Symbolic link.
    Symlink,
    /// Character device (also overlay whiteouts, 0/0).
    Char,
    /// Block device.
    Block,
    /// Named pipe.
    Fifo,
}

/// One inode of the layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Inode number.
    pub ino: u64,
    /// Inode of the directory it was first named in (the root is its own parent).
    /// Its name there is kept only in that directory's child list
    /// ([`LayerTree::path`] rebuilds the path).
    pub parent: u64,
    /// What it is.
    pub kind: NodeKind,
    /// Size in bytes: file length, symlink target length, 4096 for directories.
    pub size: u64,
    /// Permission bits including setuid, setgid and sticky (no file type bits).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the Unix epoch.
    pub mtime: i64,
    /// Nanoseconds part of the modification time.
    pub mtime_nsec: u32,
    /// Number of names (hard links) or, for directories, `2 + subdirectories`.
    pub nlink: u32,
    /// Device major number (devices).
    pub dev_major: u32,
    /// Device minor number (devices).
    pub dev_minor: u32,
    /// Symlink target.
    pub link_target: String,
    /// Extended attributes.
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// For regular files: where their chunks lie in [`LayerTree::chunks`].
    pub chunks: Range<usize>,
    /// For directories: children sorted by name.
    children: Vec<(String, u64)>,
}

impl Node {
    /// The children of a directory, sorted by name (empty for other kinds).
    pub fn children(&self) -> &[(String, u64)] {
        &self.children
    }

    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        self.kind == NodeKind::Dir
    }

    /// The device number in the kernel's encoding (`new_encode_dev`), as FUSE wants it.
    pub fn rdev(&self) -> u32 {
        let (major, minor) = (self.dev_major, self.dev_minor);
        (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
    }

    /// A node in no tree (an entry a filesystem makes up, like its status file): owned
    /// by root, no children, time zero.
    pub fn synthetic(ino: u64, parent: u64, kind: NodeKind, mode: u32, size: u64) -> Self {
        let mut node = Self::new(ino, parent, kind);
        node.mode = mode & 0o7777;
        node.size = size;
        node
    }

    fn new(ino: u64, parent: u64, kind: NodeKind) -> Self {
        Self {
            ino,
            parent,
            kind,
            size: 0,
            mode: 0,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            nlink: 1,
            dev_major: 0,
            dev_minor: 0,
            link_target: String::new(),
            xattrs: BTreeMap::new(),
            chunks: 0..0,
            children: Vec::new(),
        }
    }

    fn implied_dir(ino: u64, parent: u64) -> Self {
        let mut node = Self::new(ino, parent, NodeKind::Dir);
        node.mode = IMPLIED_DIR_MODE;
        node.size = 4096;
        node
    }

    /// Copies metadata from a TOC entry (not the kind, not chunks).
    fn apply_metadata(&mut self, entry: &Entry) {
        self.mode = entry.mode & 0o7777;
        self.uid = entry.uid;
        self.gid = entry.gid;
        self.mtime = entry.mtime;
        self.mtime_nsec = entry.mtime_nsec.min(999_999_999);
        self.xattrs = entry.xattrs.clone();
    }
}

/// Why a TOC cannot be turned into a tree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    /// A path has a `..` component.
    #[error("entry {name:?}: \"..\" path components are not allowed")]
    DotDot {
        /// The entry's name as the TOC gives it.
        name: String,
    },
    /// A name component is unusable.
    #[error("entry {name:?}: {reason}")]
    InvalidName {
        /// The entry's name as the TOC gives it.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The root entry is not a directory.
    #[error("entry {name:?} names the layer root but is a {kind:?}, not a directory")]
    RootNotDir {
        /// The entry's name as the TOC gives it.
        name: String,
        /// Its kind.
        kind: EntryKind,
    },
    /// A path lies under something that is not a directory.
    #[error("entry {name:?}: {parent:?} is not a directory")]
    NotADirectory {
        /// The entry's name.
        name: String,
        /// The ancestor that is not a directory.
        parent: String,
    },
    /// A hard link cannot be resolved.
    #[error("hard link {name:?} -> {target:?}: {reason}")]
    Hardlink {
        /// The link's name.
        name: String,
        /// Its target as the TOC gives it.
        target: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A symlink target is empty or too long.
    #[error("symlink {name:?}: {reason}")]
    Symlink {
        /// The link's name.
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A path (or hard-link target) is deeper than [`Limits::max_path_depth`].
    #[error(
        "entry {name:?}: {depth} path components, more than the MAX_PATH_DEPTH limit of {max}"
    )]
    TooDeep {
        /// The entry's name (shortened when long).
        name: String,
        /// Its depth in components.
        depth: usize,
        /// The limit.
        max: usize,
    },
    /// The tree would take more memory than its budget.
    #[error(
        "entry {name:?}: the layer's tree would take more than {budget} bytes of memory, \
         the MAX_TREE_BYTES_PER_INDEX_BYTE ([limits] max_tree_bytes_per_index_byte) budget \
         of a {index_bytes}-byte TOC index"
    )]
    OverBudget {
        /// The entry being added when the budget ran out (shortened when long).
        name: String,
        /// The budget.
        budget: u64,
        /// The estimated memory of the TOC model it is proportional to.
        index_bytes: u64,
    },
    /// A regular file's chunks do not tile it exactly.
    #[error("file {name:?}: bad chunk list: {reason}")]
    BadChunks {
        /// The file's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

/// The layer as a tree of inodes.
#[derive(Debug, Clone)]
pub struct LayerTree {
    /// Node `ino` is at index `ino - 1`.
    nodes: Vec<Node>,
    /// Every regular file's chunks, file after file; a chunk's index here is its
    /// layer-wide chunk number (the cache key).
    chunks: Vec<Chunk>,
    /// Sum of the sizes of all regular files (each inode once).
    file_bytes: u64,
    /// Estimated memory of the tree ([`LayerTree::memory`]).
    memory: u64,
    /// The limits it was built under.
    limits: Limits,
}

/// One TOC entry after path normalization.
struct Pending<'a> {
    /// Normalized path (`a/b/c`).
    path: String,
    /// The entry (for whiteouts: the whiteout entry itself).
    entry: &'a Entry,
    /// Presented as an overlay whiteout (char device 0/0).
    whiteout: bool,
}

impl LayerTree {
    /// Builds the tree of `toc` under `limits` (path depth, tree memory); the tree
    /// keeps them for decoding its chunks ([`LayerTree::limits`]). See the module
    /// documentation for the rules.
    pub fn build(toc: &LayerToc, limits: &Limits) -> Result<Self, TreeError> {
        let index: u64 = toc.entries.iter().map(index_bytes).sum();
        let budget = index
            .saturating_mul(limits.max_tree_bytes_per_index_byte)
            .max(TREE_BUDGET_FLOOR);
        Builder::new(toc.blob_size, index, budget, *limits).run(toc)
    }

    /// The limits the tree was built under: its chunks are decoded under the same.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The path `ino` was first named by (`""` for the root), rebuilt from the parent
    /// links and the names in the directories' child lists; for logs and errors.
    pub fn path(&self, ino: u64) -> String {
        let mut parts: Vec<&str> = Vec::new();
        let mut at = ino;
        // Parents always have smaller inode numbers than their children: this ends.
        while at != ROOT_INO {
            let Some(node) = self.node(at) else { break };
            let Some(parent) = self.node(node.parent).filter(|p| p.ino < at) else {
                break;
            };
            match parent.children.iter().find(|(_, child)| *child == at) {
                Some((name, _)) => parts.push(name),
                None => break,
            }
            at = parent.ino;
        }
        parts.reverse();
        parts.join("/")
    }

    /// Estimated memory of the tree: nodes, names, symlink targets, xattrs, chunks.
    /// At most [`Limits::max_tree_bytes_per_index_byte`] times the TOC model's (or
    /// [`TREE_BUDGET_FLOOR`]).
    pub fn memory(&self) -> u64 {
        self.memory
    }

    /// The root directory.
    pub fn root(&self) -> &Node {
        &self.nodes[0]
    }

    /// The node with inode number `ino`.
    pub fn node(&self, ino: u64) -> Option<&Node> {
        let index = usize::try_from(ino.checked_sub(1)?).ok()?;
        self.nodes.get(index)
    }

    /// The child called `name` of directory `parent`.
    pub fn lookup(&self, parent: u64, name: &str) -> Option<&Node> {
        let dir = self.node(parent)?;
        let at = dir
            .children
            .binary_search_by(|(child, _)| child.as_str().cmp(name))
            .ok()?;
        self.node(dir.children[at].1)
    }

    /// The node at `path` (relative to the root; `""` is the root), following no symlinks.
    pub fn resolve(&self, path: &str) -> Option<&Node> {
        let mut node = self.root();
        for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
            node = self.lookup(node.ino, part)?;
        }
        Some(node)
    }

    /// Number of inodes (at least 1: the root).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false: a tree has at least its root.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// All nodes, in inode order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Every chunk of the layer; indices are layer-wide chunk numbers.
    pub fn chunks(&self) -> &[Chunk] {
        &self.chunks
    }

    /// The chunks of a regular file (empty for other kinds).
    pub fn file_chunks(&self, node: &Node) -> &[Chunk] {
        self.chunks.get(node.chunks.clone()).unwrap_or(&[])
    }

    /// Total bytes of regular file contents (each inode counted once).
    pub fn file_bytes(&self) -> u64 {
        self.file_bytes
    }
}

/// What one node costs in the tree besides its name: its record and its entry in the
/// parent's child list.
const NODE_BYTES: u64 = (std::mem::size_of::<Node>() + std::mem::size_of::<(String, u64)>()) as u64;

/// Mutable state while building.
struct Builder {
    nodes: Vec<Node>,
    /// Children of each directory by inode, before sorting: the only place names live.
    children: HashMap<u64, BTreeMap<String, u64>>,
    chunks: Vec<Chunk>,
    file_bytes: u64,
    blob_size: u64,
    /// Estimated memory so far, the budget, and the model's memory it derives from.
    memory: u64,
    budget: u64,
    index_bytes: u64,
    limits: Limits,
}

impl Builder {
    fn new(blob_size: u64, index_bytes: u64, budget: u64, limits: Limits) -> Self {
        let mut root = Node::implied_dir(ROOT_INO, ROOT_INO);
        root.nlink = 2;
        Self {
            nodes: vec![root],
            children: HashMap::new(),
            chunks: Vec::new(),
            file_bytes: 0,
            blob_size,
            memory: NODE_BYTES,
            budget,
            index_bytes,
            limits,
        }
    }

    /// Counts `bytes` more tree memory for the entry `entry_name`.
    fn charge(&mut self, bytes: u64, entry_name: &str) -> Result<(), TreeError> {
        self.memory = self.memory.saturating_add(bytes);
        if self.memory > self.budget {
            return Err(TreeError::OverBudget {
                name: shorten(entry_name),
                budget: self.budget,
                index_bytes: self.index_bytes,
            });
        }
        Ok(())
    }

    /// The child `name` of directory `parent`, if any.
    fn child(&self, parent: u64, name: &str) -> Option<u64> {
        self.children.get(&parent)?.get(name).copied()
    }

    /// The node at `path` (components), if it exists; no directories are created.
    fn find(&self, parts: &[&str]) -> Option<u64> {
        parts
            .iter()
            .try_fold(ROOT_INO, |ino, part| self.child(ino, part))
    }

    fn run(mut self, toc: &LayerToc) -> Result<LayerTree, TreeError> {
        self.charge(0, "")?;
        // 1. Normalize names; sort out the root, whiteouts and opaque markers.
        let mut pending: Vec<Pending<'_>> = Vec::new();
        let mut opaque: Vec<(String, &Entry)> = Vec::new();
        for entry in &toc.entries {
            let parts = split_path(&entry.name, &entry.name, self.limits.max_path_depth)?;
            let Some((last, dirs)) = parts.split_last() else {
                if entry.kind != EntryKind::Dir {
                    return Err(TreeError::RootNotDir {
                        name: entry.name.clone(),
                        kind: entry.kind,
                    });
                }
                self.nodes[0].apply_metadata(entry);
                continue;
            };
            let dir = dirs.join("/");
            if *last == OPAQUE_MARKER {
                opaque.push((dir, entry));
                continue;
            }
            if last.starts_with(WHITEOUT_META_PREFIX) {
                continue;
            }
            let (name, whiteout) = match last.strip_prefix(WHITEOUT_PREFIX) {
                Some(hidden) => {
                    check_component(hidden, &entry.name)?;
                    (hidden, true)
                }
                None => (*last, false),
            };
            let path = if dir.is_empty() {
                name.to_string()
            } else {
                format!("{dir}/{name}")
            };
            pending.push(Pending {
                path,
                entry,
                whiteout,
            });
        }

        // 2. Later entries win: keep the last entry of each path, in TOC order.
        let mut last_of: HashMap<&str, usize> = HashMap::new();
        for (i, p) in pending.iter().enumerate() {
            last_of.insert(p.path.as_str(), i);
        }
        let winners: Vec<&Pending<'_>> = pending
            .iter()
            .enumerate()
            .filter(|(i, p)| last_of.get(p.path.as_str()) == Some(i))
            .map(|(_, p)| p)
            .collect();

        // 3. Everything but hard links.
        for p in winners.iter().filter(|p| !is_hardlink(p)) {
            self.add_entry(p)?;
        }

        // 4. Hard links, now that every target exists.
        let winner_of: HashMap<&str, &Pending<'_>> =
            winners.iter().map(|p| (p.path.as_str(), *p)).collect();
        for p in winners.iter().filter(|p| is_hardlink(p)) {
            self.add_hardlink(p, &winner_of)?;
        }

        // 5. Opaque markers.
        for (dir, entry) in opaque {
            let ino = self.ensure_dir(&dir, &entry.name)?;
            self.node_mut(ino)
                .xattrs
                .insert(OPAQUE_XATTR.to_string(), b"y".to_vec());
        }

        Ok(self.finish())
    }

    fn is_dir(&self, ino: u64) -> bool {
        self.nodes.get((ino - 1) as usize).is_some_and(Node::is_dir)
    }

    fn node_mut(&mut self, ino: u64) -> &mut Node {
        // Inode numbers handed out by this builder always index `nodes`.
        &mut self.nodes[(ino - 1) as usize]
    }

    /// Creates a node as child `name` of `parent` for the entry `entry_name`; returns
    /// its inode number.
    fn create(
        &mut self,
        parent: u64,
        name: &str,
        kind: NodeKind,
        entry_name: &str,
    ) -> Result<u64, TreeError> {
        self.charge(NODE_BYTES + name.len() as u64, entry_name)?;
        let ino = self.nodes.len() as u64 + 1;
        let node = if kind == NodeKind::Dir {
            Node::implied_dir(ino, parent)
        } else {
            Node::new(ino, parent, kind)
        };
        self.nodes.push(node);
        self.link(parent, name, ino);
        Ok(ino)
    }

    /// Names `ino` as `name` in directory `parent`.
    fn link(&mut self, parent: u64, name: &str, ino: u64) {
        self.children
            .entry(parent)
            .or_default()
            .insert(name.to_string(), ino);
    }

    /// The directory at `path`, creating implied directories as needed.
    fn ensure_dir(&mut self, path: &str, entry_name: &str) -> Result<u64, TreeError> {
        let mut ino = ROOT_INO;
        for (depth, part) in path.split('/').filter(|p| !p.is_empty()).enumerate() {
            ino = match self.child(ino, part) {
                Some(child) if self.is_dir(child) => child,
                Some(_) => {
                    let parent: Vec<&str> = path
                        .split('/')
                        .filter(|p| !p.is_empty())
                        .take(depth + 1)
                        .collect();
                    return Err(TreeError::NotADirectory {
                        name: shorten(entry_name),
                        parent: shorten(&parent.join("/")),
                    });
                }
                None => self.create(ino, part, NodeKind::Dir, entry_name)?,
            };
        }
        Ok(ino)
    }

    fn add_entry(&mut self, p: &Pending<'_>) -> Result<(), TreeError> {
        let entry = p.entry;
        let (dir, name) = split_parent(&p.path);
        let parent = self.ensure_dir(dir, &entry.name)?;
        let kind = if p.whiteout {
            NodeKind::Char
        } else {
            node_kind(entry.kind)
        };
        let ino = match self.child(parent, name) {
            // Only an implied directory can be here: winners have unique paths.
            Some(existing) if kind == NodeKind::Dir => existing,
            Some(_) => {
                return Err(TreeError::NotADirectory {
                    name: format!("{}/...", shorten(&p.path)),
                    parent: shorten(&p.path),
                })
            }
            None => self.create(parent, name, kind, &entry.name)?,
        };
        if kind == NodeKind::Reg {
            check_chunks(entry, self.blob_size)?;
        }
        // What the node holds beyond its record: xattrs, a symlink target, chunks.
        let held = index_bytes(entry)
            - (std::mem::size_of::<Entry>() + entry.name.len()) as u64
            - entry.digest.as_ref().map_or(0, |d| d.len() as u64);
        self.charge(held, &entry.name)?;
        let chunk_start = self.chunks.len();
        let node = self.node_mut(ino);
        node.apply_metadata(entry);
        match kind {
            NodeKind::Dir => node.size = 4096,
            NodeKind::Char if p.whiteout => {
                // What overlayfs itself creates: mknod(name, S_IFCHR | 0, 0).
                node.mode = 0;
                node.xattrs.clear();
            }
            NodeKind::Char | NodeKind::Block => {
                node.dev_major = entry.dev_major;
                node.dev_minor = entry.dev_minor;
            }
            NodeKind::Fifo => {}
            NodeKind::Symlink => {
                if entry.link_name.is_empty() {
                    return Err(symlink_error(entry, "empty target"));
                }
                if entry.link_name.len() > MAX_LINK_LEN || entry.link_name.contains('\0') {
                    return Err(symlink_error(entry, "target too long or contains NUL"));
                }
                node.link_target = entry.link_name.clone();
                node.size = entry.link_name.len() as u64;
            }
            NodeKind::Reg => {
                node.size = entry.size;
                node.chunks = chunk_start..chunk_start + entry.chunks.len();
            }
        }
        if kind == NodeKind::Reg {
            self.chunks.extend(entry.chunks.iter().cloned());
            self.file_bytes = self.file_bytes.saturating_add(entry.size);
        }
        Ok(())
    }

    fn add_hardlink(
        &mut self,
        p: &Pending<'_>,
        winner_of: &HashMap<&str, &Pending<'_>>,
    ) -> Result<(), TreeError> {
        let entry = p.entry;
        let err = |reason| TreeError::Hardlink {
            name: entry.name.clone(),
            target: entry.link_name.clone(),
            reason,
        };
        // Follow link -> link -> ... to a real entry.
        let max_depth = self.limits.max_path_depth;
        let mut target = split_path(&entry.link_name, &entry.name, max_depth)?.join("/");
        for _ in 0..MAX_HARDLINK_CHAIN {
            match winner_of.get(target.as_str()) {
                Some(next) if is_hardlink(next) => {
                    let (link, name) = (&next.entry.link_name, &next.entry.name);
                    target = split_path(link, name, max_depth)?.join("/");
                }
                _ => break,
            }
        }
        if winner_of
            .get(target.as_str())
            .is_some_and(|t| is_hardlink(t))
        {
            return Err(err("hard links form a loop"));
        }
        let target_parts: Vec<&str> = target.split('/').filter(|p| !p.is_empty()).collect();
        let Some(target_ino) = self.find(&target_parts) else {
            return Err(err("target does not exist in the layer"));
        };
        if target_ino == ROOT_INO || self.is_dir(target_ino) {
            return Err(err("target is a directory"));
        }
        let (dir, name) = split_parent(&p.path);
        let parent = self.ensure_dir(dir, &entry.name)?;
        if self.child(parent, name).is_some() {
            // An implied directory: something lies under the link's path.
            return Err(TreeError::NotADirectory {
                name: format!("{}/...", shorten(&p.path)),
                parent: shorten(&p.path),
            });
        }
        self.charge(
            (std::mem::size_of::<(String, u64)>() + name.len()) as u64,
            &entry.name,
        )?;
        self.link(parent, name, target_ino);
        let node = self.node_mut(target_ino);
        node.nlink = node.nlink.saturating_add(1);
        Ok(())
    }

    fn finish(mut self) -> LayerTree {
        let mut children = std::mem::take(&mut self.children);
        for index in 0..self.nodes.len() {
            let ino = index as u64 + 1;
            if !self.nodes[index].is_dir() {
                continue;
            }
            let list: Vec<(String, u64)> = children
                .remove(&ino)
                .unwrap_or_default()
                .into_iter()
                .collect();
            let subdirs = list
                .iter()
                .filter(|(_, child)| self.nodes[(*child - 1) as usize].is_dir())
                .count();
            let node = &mut self.nodes[index];
            node.nlink = u32::try_from(subdirs)
                .unwrap_or(u32::MAX - 2)
                .saturating_add(2);
            node.children = list;
        }
        LayerTree {
            nodes: self.nodes,
            chunks: self.chunks,
            file_bytes: self.file_bytes,
            memory: self.memory,
            limits: self.limits,
        }
    }
}

fn is_hardlink(p: &Pending<'_>) -> bool {
    !p.whiteout && p.entry.kind == EntryKind::Hardlink
}

fn node_kind(kind: EntryKind) -> NodeKind {
    match kind {
        EntryKind::Dir => NodeKind::Dir,
        // Hard links never reach here; treat defensively as files.
        EntryKind::Reg | EntryKind::Hardlink => NodeKind::Reg,
        EntryKind::Symlink => NodeKind::Symlink,
        EntryKind::Char => NodeKind::Char,
        EntryKind::Block => NodeKind::Block,
        EntryKind::Fifo => NodeKind::Fifo,
    }
}

fn symlink_error(entry: &Entry, reason: &'static str) -> TreeError {
    TreeError::Symlink {
        name: entry.name.clone(),
        reason,
    }
}

#[path = "tree_check.rs"]
mod check;

#[cfg(test)]
#[path = "tree_tests.rs"]
mod tests;
