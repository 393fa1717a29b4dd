//! Disk usage of a directory tree, counted as containerd counts it: every inode once
//! (hard links are not counted twice), bytes as allocated on disk.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::error::{Error, Result};
use crate::metadata::Usage;

/// Usage of everything under `root`, `root` included. Symlinks are not followed.
pub fn disk_usage(root: &Path) -> Result<Usage> {
    let mut seen = HashSet::new();
    let mut size = 0i64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta =
            std::fs::symlink_metadata(&path).map_err(|e| Error::io("measuring", &path, e))?;
        if seen.insert((meta.dev(), meta.ino())) {
            size += (meta.blocks() * 512) as i64;
        }
        if meta.is_dir() {
            let entries = std::fs::read_dir(&path).map_err(|e| Error::io("listing", &path, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| Error::io("listing", &path, e))?;
                stack.push(entry.path());
            }
        }
    }
    Ok(Usage {
        size,
        inodes: seen.len() as i64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hard_links_count_once() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), vec![7u8; 10000]).unwrap();
        let before = disk_usage(d.path()).unwrap();
        std::fs::hard_link(d.path().join("f"), d.path().join("g")).unwrap();
        let after = disk_usage(d.path()).unwrap();
        assert_eq!(before.inodes, 2);
        assert_eq!(after.inodes, 2);
        assert_eq!(before.size, after.size);
        assert!(after.size >= 10000);
    }
}
