//! The tar side of a streamed layer: entries and chunk digests, in one pass.
//!
//! [`index_entries`] walks the decompressed tar stream once with the crate's own tar
//! walker ([`crate::tar_index::index_tar_stream`]: PAX and GNU long names and links,
//! hard links, symlinks, devices, FIFOs and `SCHILY.xattr.*` come out exactly as the
//! eStargz writer sees them) and turns each entry into a [`crate::toc::Entry`]. A regular
//! file's payload is cut into chunks of at most `chunk_size` bytes, each described by its
//! range in the uncompressed tar stream (the "blob" of a streamed layer) and the SHA-256
//! of its bytes, computed here as they stream past. Those digests are what every later
//! read of the chunk is checked against, so bytes served later are the bytes seen now.
//! Whiteouts are ordinary entries here; [`crate::tree::LayerTree`] turns them into what
//! overlayfs expects, as for every other format.

use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

use crate::tar_index::{index_tar_stream, TarIndexError};
use crate::toc::{Chunk, Compression, Entry, EntryKind};

/// Names that are eStargz bookkeeping, not layer contents: dropped when an eStargz layer
/// is streamed (the lazy reader drops them too).
pub const ESTARGZ_BOOKKEEPING: &[&str] = &[
    crate::estargz::TOC_TAR_NAME,
    crate::estargz::PREFETCH_LANDMARK,
    crate::estargz::NO_PREFETCH_LANDMARK,
];

/// Walks the tar stream `reader` and returns its entries with their chunks; names in
/// `skip` (cleaned, as [`crate::tar_index::clean_name`] makes them) are left out.
pub fn index_entries<R: Read>(
    reader: R,
    chunk_size: u64,
    skip: &[&str],
) -> Result<Vec<Entry>, TarIndexError> {
    let chunk_size = chunk_size.max(1);
    let mut chunks: Vec<Vec<Chunk>> = Vec::new();
    let mut buf = vec![0u8; 256 << 10];
    let entries = index_tar_stream(reader, |entry, data| {
        let mut file_chunks = Vec::new();
        if entry.meta.kind == EntryKind::Reg && !skip.contains(&entry.meta.name.as_str()) {
            let mut file_offset = 0u64;
            while file_offset < entry.data_size {
                let size = chunk_size.min(entry.data_size - file_offset);
                let mut hasher = Sha256::new();
                let mut left = size;
                while left > 0 {
                    let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
                    let n = data.read(&mut buf[..want])?;
                    if n == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("tar stream ends inside {:?}", entry.meta.name),
                        ));
                    }
                    hasher.update(&buf[..n]);
                    left -= n as u64;
                }
                let blob_offset = entry.data_offset + file_offset;
                file_chunks.push(Chunk {
                    file_offset,
                    size,
                    blob_offset,
                    blob_end: blob_offset + size,
                    inner_offset: 0,
                    digest: format!("sha256:{}", hex::encode(hasher.finalize())),
                    compression: Compression::None,
                });
                file_offset += size;
            }
        }
        chunks.push(file_chunks);
        Ok(())
    })?;
    Ok(entries
        .into_iter()
        .zip(chunks)
        .filter(|(entry, _)| !skip.contains(&entry.meta.name.as_str()))
        .map(|(entry, chunks)| {
            let mut meta = entry.meta;
            meta.chunks = chunks;
            meta
        })
        .collect())
}
