//! Checks of TOC paths and file chunks for [`super::LayerTree`]: name components, path
//! depth (`Limits::max_path_depth`), and chunk lists that must tile their file.

use veil_formats::limits::shorten;
use veil_formats::toc::Entry;

use super::{TreeError, MAX_NAME_LEN};

/// `a/b/c` -> (`a/b`, `c`); `c` -> (``, `c`).
pub(super) fn split_parent(path: &str) -> (&str, &str) {
    match path.rsplit_once('/') {
        Some((dir, name)) => (dir, name),
        None => ("", path),
    }
}

/// Splits a TOC path into checked components, dropping `.`, empty parts and leading `/`;
/// refuses paths deeper than `max_depth` components.
pub(super) fn split_path<'a>(
    path: &'a str,
    entry_name: &str,
    max_depth: usize,
) -> Result<Vec<&'a str>, TreeError> {
    let mut parts = Vec::new();
    for part in path.split('/') {
        if part.is_empty() || part == "." {
            continue;
        }
        check_component(part, entry_name)?;
        parts.push(part);
    }
    if parts.len() > max_depth {
        return Err(TreeError::TooDeep {
            name: shorten(entry_name),
            depth: parts.len(),
            max: max_depth,
        });
    }
    Ok(parts)
}

pub(super) fn check_component(part: &str, entry_name: &str) -> Result<(), TreeError> {
    let invalid = |reason| TreeError::InvalidName {
        name: entry_name.to_string(),
        reason,
    };
    if part == ".." {
        return Err(TreeError::DotDot {
            name: entry_name.to_string(),
        });
    }
    if part.is_empty() || part == "." {
        return Err(invalid("whiteout of an empty name"));
    }
    if part.contains('\0') {
        return Err(invalid("name contains a NUL byte"));
    }
    if part.len() > MAX_NAME_LEN {
        return Err(invalid("name component longer than 255 bytes"));
    }
    Ok(())
}

/// Checks that a regular file's chunks tile `0..size` and lie inside the blob.
pub(super) fn check_chunks(entry: &Entry, blob_size: u64) -> Result<(), TreeError> {
    let bad = |reason: String| TreeError::BadChunks {
        name: entry.name.clone(),
        reason,
    };
    let mut next = 0u64;
    for (i, chunk) in entry.chunks.iter().enumerate() {
        if chunk.file_offset != next {
            return Err(bad(format!(
                "chunk {i} starts at {} but the previous one ends at {next}",
                chunk.file_offset
            )));
        }
        if chunk.size == 0 {
            return Err(bad(format!("chunk {i} is empty")));
        }
        if chunk.blob_end <= chunk.blob_offset {
            return Err(bad(format!(
                "chunk {i} has an empty blob range {}..{}",
                chunk.blob_offset, chunk.blob_end
            )));
        }
        if blob_size != 0 && chunk.blob_end > blob_size {
            return Err(bad(format!(
                "chunk {i} ends at blob offset {} past the {blob_size}-byte blob",
                chunk.blob_end
            )));
        }
        next = next
            .checked_add(chunk.size)
            .ok_or_else(|| bad(format!("chunk {i} overflows the file size")))?;
    }
    if next != entry.size {
        return Err(bad(format!(
            "chunks cover {next} bytes, the file has {}",
            entry.size
        )));
    }
    Ok(())
}
