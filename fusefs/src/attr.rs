//! What the kernel is told about a node ([`file_attr`]: its `stat`) and who may access
//! it ([`may_access`]), from the layer's [`Node`] alone.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{AccessFlags, FileAttr, FileType, INodeNo};

use crate::tree::{Node, NodeKind};

/// Block size reported by `stat` and `statfs`.
pub(crate) const BLOCK_SIZE: u32 = 4096;

/// The kernel's view of a node.
pub fn file_attr(node: &Node) -> FileAttr {
    let mtime = system_time(node.mtime, node.mtime_nsec);
    FileAttr {
        ino: INodeNo(node.ino),
        size: node.size,
        blocks: node.size.div_ceil(512),
        atime: mtime,
        mtime,
        ctime: mtime,
        crtime: mtime,
        kind: file_type(node.kind),
        perm: (node.mode & 0o7777) as u16,
        nlink: node.nlink,
        uid: node.uid,
        gid: node.gid,
        rdev: node.rdev(),
        blksize: BLOCK_SIZE,
        flags: 0,
    }
}

pub(crate) fn file_type(kind: NodeKind) -> FileType {
    match kind {
        NodeKind::Dir => FileType::Directory,
        NodeKind::Reg => FileType::RegularFile,
        NodeKind::Symlink => FileType::Symlink,
        NodeKind::Char => FileType::CharDevice,
        NodeKind::Block => FileType::BlockDevice,
        NodeKind::Fifo => FileType::NamedPipe,
    }
}

/// Seconds and nanoseconds since the epoch, saturating at the representable range.
fn system_time(secs: i64, nsec: u32) -> SystemTime {
    let nsec = Duration::from_nanos(u64::from(nsec.min(999_999_999)));
    let base = if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(secs.unsigned_abs()))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))
    };
    base.and_then(|t| t.checked_add(nsec)).unwrap_or(UNIX_EPOCH)
}

/// Whether `uid`/`gid` may access `node` for `mask` (root may do anything but execute
/// a file no one may execute).
pub(crate) fn may_access(node: &Node, uid: u32, gid: u32, mask: AccessFlags) -> bool {
    let mode = node.mode;
    if uid == 0 {
        return !mask.contains(AccessFlags::X_OK) || node.is_dir() || mode & 0o111 != 0;
    }
    let bits = if uid == node.uid {
        (mode >> 6) & 7
    } else if gid == node.gid {
        (mode >> 3) & 7
    } else {
        mode & 7
    };
    let need = [
        (AccessFlags::R_OK, 4),
        (AccessFlags::W_OK, 2),
        (AccessFlags::X_OK, 1),
    ];
    need.iter()
        .all(|(flag, bit)| !mask.contains(*flag) || bits & bit != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::LayerTree;

    fn node(mode: u32, uid: u32, gid: u32) -> Node {
        let toc = veil_formats::toc::LayerToc {
            format: veil_formats::toc::Format::Estargz,
            entries: Vec::new(),
            prefetch_end: None,
            blob_size: 0,
        };
        let tree = LayerTree::build(&toc, &veil_formats::limits::Limits::default()).unwrap();
        let mut node = tree.root().clone();
        node.kind = NodeKind::Reg;
        node.mode = mode;
        node.uid = uid;
        node.gid = gid;
        node
    }

    #[test]
    fn access_checks_owner_group_other_and_root() {
        let n = node(0o750, 10, 20);
        assert!(may_access(
            &n,
            10,
            99,
            AccessFlags::R_OK | AccessFlags::X_OK
        ));
        assert!(may_access(
            &n,
            11,
            20,
            AccessFlags::R_OK | AccessFlags::X_OK
        ));
        assert!(!may_access(&n, 11, 20, AccessFlags::W_OK));
        assert!(!may_access(&n, 11, 21, AccessFlags::R_OK));
        assert!(may_access(&n, 0, 0, AccessFlags::R_OK | AccessFlags::W_OK));
        assert!(!may_access(&node(0o644, 0, 0), 0, 0, AccessFlags::X_OK));
    }

    #[test]
    fn times_and_attrs() {
        assert_eq!(system_time(0, 0), UNIX_EPOCH);
        assert_eq!(
            system_time(1, 5),
            UNIX_EPOCH + Duration::from_secs(1) + Duration::from_nanos(5)
        );
        assert!(system_time(-10, 0) < UNIX_EPOCH);
        // Absurd values saturate instead of panicking.
        let _ = system_time(i64::MAX, u32::MAX);
        let _ = system_time(i64::MIN, u32::MAX);
        let attr = file_attr(&node(0o4755, 1, 2));
        assert_eq!(attr.perm, 0o4755);
        assert_eq!((attr.uid, attr.gid), (1, 2));
        assert_eq!(attr.kind, FileType::RegularFile);
    }
}
