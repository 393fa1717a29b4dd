//! The TOC's first request reads the blob's tail: footer and TOC in one round trip when
//! the TOC fits, the TOC's front part in a second request when it does not, and hostile
//! footers refused before anything big is read or held.

// The reads are compared with lists of ranges, some of them one range long.
#![allow(clippy::single_range_in_vec_init)]

mod common;

use std::io::{self, Cursor};
use std::ops::Range;
use std::sync::Mutex;

use futures::executor::block_on;
use futures::future::BoxFuture;
use veil_blob::{BlobSource, MemoryBlob};
use veil_formats::classify::{read_layer_toc, LazyFormat};
use veil_formats::estargz::{self, BuildOptions, FormatError, DEFAULT_TOC_TAIL_BYTES};
use veil_formats::limits::Limits;
use veil_formats::zstdchunked::{self, ManifestInfo, Variant, ZstdBuildOptions};

/// A blob (its bytes, or zeros up to `size` with `end` as its last bytes) that records
/// every range read from it.
struct Recorded {
    bytes: Vec<u8>,
    size: u64,
    reads: Mutex<Vec<Range<u64>>>,
}

impl Recorded {
    fn new(bytes: Vec<u8>) -> Self {
        let size = bytes.len() as u64;
        Self {
            bytes,
            size,
            reads: Mutex::new(Vec::new()),
        }
    }

    /// A blob of `size` bytes that are zeros except the last `end.len()`, never held.
    fn sparse(size: u64, end: Vec<u8>) -> Self {
        Self {
            bytes: end,
            size,
            reads: Mutex::new(Vec::new()),
        }
    }

    fn reads(&self) -> Vec<Range<u64>> {
        self.reads.lock().unwrap().clone()
    }
}

impl BlobSource for Recorded {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_range(&self, range: Range<u64>) -> BoxFuture<'_, io::Result<Vec<u8>>> {
        self.reads.lock().unwrap().push(range.clone());
        let end_at = self.size - self.bytes.len() as u64;
        let out = (range.start..range.end)
            .map(|o| match o.checked_sub(end_at) {
                Some(i) => self.bytes[i as usize],
                None => 0,
            })
            .collect();
        Box::pin(async move { Ok(out) })
    }
}

fn estargz_blob() -> (
    Vec<u8>,
    LazyFormat,
    std::collections::BTreeMap<String, Vec<u8>>,
) {
    let (tar, files) = common::sample_layer_tar();
    let opts = BuildOptions {
        chunk_size: 1 << 20,
        ..BuildOptions::default()
    };
    let (blob, out) = estargz::build_to_vec(Cursor::new(&tar), &opts).unwrap();
    let format = LazyFormat::Estargz {
        toc_digest: out.toc_digest,
    };
    (blob, format, files)
}

fn read(
    source: &Recorded,
    format: &LazyFormat,
    tail: u64,
) -> Result<veil_formats::toc::LayerToc, FormatError> {
    block_on(read_layer_toc(source, format, &Limits::default(), tail))
}

#[test]
fn estargz_footer_and_toc_in_one_request() {
    let (blob, format, files) = estargz_blob();
    let size = blob.len() as u64;
    let source = Recorded::new(blob.clone());
    let toc = read(&source, &format, DEFAULT_TOC_TAIL_BYTES).unwrap();
    assert_eq!(source.reads(), [size - DEFAULT_TOC_TAIL_BYTES..size]);
    assert_eq!(common::decode_all(&toc, &blob), files);

    // 0: the footer alone first, then the TOC (as before the tail read).
    let source = Recorded::new(blob.clone());
    let same = read(&source, &format, 0).unwrap();
    let reads = source.reads();
    assert_eq!(reads.len(), 2, "{reads:?}");
    assert_eq!(reads[0], size - estargz::FOOTER_SIZE..size);
    assert_eq!(same.entries, toc.entries);

    // A tail bigger than the blob reads the whole blob, once.
    let source = Recorded::new(blob.clone());
    read(&source, &format, u64::MAX).unwrap();
    assert_eq!(source.reads(), [0..size]);
}

#[test]
fn a_toc_bigger_than_the_tail_costs_one_more_request_for_its_front_only() {
    let (blob, format, files) = estargz_blob();
    let size = blob.len() as u64;
    let tail = 256;
    let source = Recorded::new(blob.clone());
    let toc = read(&source, &format, tail).unwrap();
    let reads = source.reads();
    assert_eq!(reads.len(), 2, "{reads:?}");
    assert_eq!(reads[0], size - tail..size);
    // The second request ends where the first began: no byte is fetched twice.
    assert_eq!(reads[1].end, size - tail);
    assert!(reads[1].start < reads[1].end);
    assert_eq!(common::decode_all(&toc, &blob), files);
}

#[test]
fn a_tampered_toc_in_the_tail_is_refused() {
    let (mut blob, format, _) = estargz_blob();
    // Flip a byte inside the TOC member (just before the footer).
    let at = blob.len() - estargz::FOOTER_SIZE as usize - 20;
    blob[at] ^= 0x55;
    let source = Recorded::new(blob);
    assert!(read(&source, &format, DEFAULT_TOC_TAIL_BYTES).is_err());
}

#[test]
fn a_hostile_footer_is_refused_before_the_toc_is_read() {
    // A 1 TiB blob whose footer claims a TOC starting at 0: the TOC would be 1 TiB.
    let size = 1u64 << 40;
    let format = LazyFormat::Estargz {
        toc_digest: format!("sha256:{}", "0".repeat(64)),
    };
    let source = Recorded::sparse(size, estargz::footer_bytes(0).to_vec());
    let err = read(&source, &format, DEFAULT_TOC_TAIL_BYTES).unwrap_err();
    assert!(matches!(err, FormatError::TocTooLarge { .. }), "{err}");
    assert_eq!(source.reads(), [size - DEFAULT_TOC_TAIL_BYTES..size]);

    // A footer pointing past its own position.
    let source = Recorded::sparse(size, estargz::footer_bytes(size - 10).to_vec());
    let err = read(&source, &format, DEFAULT_TOC_TAIL_BYTES).unwrap_err();
    assert!(matches!(err, FormatError::TocOutOfRange { .. }), "{err}");
    assert_eq!(source.reads().len(), 1);
}

#[test]
fn zstd_chunked_footer_and_manifest_in_one_request() {
    let (tar, files) = common::sample_layer_tar();
    let opts = ZstdBuildOptions {
        chunk_size: 1 << 20,
        variant: Variant::Current,
        ..ZstdBuildOptions::default()
    };
    let (blob, out) = zstdchunked::build_to_vec(Cursor::new(&tar), &opts).unwrap();
    let size = blob.len() as u64;
    let mut info = ManifestInfo::from_annotations(&out.annotations).unwrap();
    // Without the position annotation the footer says where the manifest is.
    info.position = None;
    let format = LazyFormat::ZstdChunked(info);
    let source = Recorded::new(blob.clone());
    let toc = read(&source, &format, DEFAULT_TOC_TAIL_BYTES).unwrap();
    assert_eq!(source.reads(), [size - DEFAULT_TOC_TAIL_BYTES..size]);
    assert_eq!(common::decode_all(&toc, &blob), files);

    let source = Recorded::new(blob.clone());
    read(&source, &format, 0).unwrap();
    assert_eq!(source.reads().len(), 2);

    let source = Recorded::new(blob.clone());
    read(&source, &format, 300).unwrap();
    let reads = source.reads();
    assert_eq!(reads.len(), 2, "{reads:?}");
    // The tar-split lies between the manifest and the footer: the second request ends
    // at the tail or before it, never inside it.
    assert!(reads[1].end <= size - 300, "{reads:?}");

    // With the position annotation: one request for the manifest's frame, as before.
    let info = ManifestInfo::from_annotations(&out.annotations).unwrap();
    let source = Recorded::new(blob);
    read(
        &source,
        &LazyFormat::ZstdChunked(info),
        DEFAULT_TOC_TAIL_BYTES,
    )
    .unwrap();
    assert_eq!(source.reads().len(), 1);
}

#[test]
fn memory_blobs_read_as_before() {
    let (blob, format, files) = estargz_blob();
    let toc = block_on(read_layer_toc(
        &MemoryBlob(blob.clone()),
        &format,
        &Limits::default(),
        DEFAULT_TOC_TAIL_BYTES,
    ))
    .unwrap();
    assert_eq!(common::decode_all(&toc, &blob), files);
}
