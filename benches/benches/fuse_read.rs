//! Micro-benchmark (`cargo bench -p veil-bench --bench fuse_read`, as root): a sequential
//! read of a 32 MiB file whose chunks are all in Veil's plaintext cache, through Veil's
//! FUSE filesystem, against the same file on tmpfs. Before every pass the kernel's page
//! cache of both files is dropped (`posix_fadvise(DONTNEED)`), so the FUSE side measures
//! Veil (FUSE round trips, the chunk cache, copying) and not the page cache; on tmpfs the
//! pages are the file itself, so it is a memory copy: the floor.
//!
//! Without root or `/dev/fuse` it says so and measures nothing.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use veil_bench::fuse_read::{read_dropping_cache, Mounted, READ_SIZE};
use veil_blob::MemoryBlob;
use veil_formats::codec::sha256_digest;
use veil_formats::toc::{Chunk, Compression, Entry, EntryKind, Format, LayerToc};
use veil_fusefs::cache::ChunkCache;
use veil_fusefs::fs::{FsOptions, LayerFs};
use veil_fusefs::mount::{self, MountOptions};
use veil_fusefs::pipeline::{ChunkReader, ReaderOptions};
use veil_fusefs::tree::LayerTree;

const FILE_SIZE: usize = 32 << 20;
const CHUNK: usize = 1 << 20;

/// Bytes that compress a little (a pattern with noise).
fn data() -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..FILE_SIZE)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if i % 3 == 0 {
                x as u8
            } else {
                (i / 7) as u8
            }
        })
        .collect()
}

/// A one-file layer: `data` cut into gzip members of [`CHUNK`] bytes.
fn layer(data: &[u8]) -> (LayerToc, Vec<u8>) {
    let mut blob = Vec::new();
    let mut entry = Entry::new("data.bin", EntryKind::Reg);
    entry.mode = 0o644;
    entry.size = data.len() as u64;
    for (i, piece) in data.chunks(CHUNK).enumerate() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(piece).unwrap();
        let member = gz.finish().unwrap();
        let blob_offset = blob.len() as u64;
        blob.extend_from_slice(&member);
        entry.chunks.push(Chunk {
            file_offset: (i * CHUNK) as u64,
            size: piece.len() as u64,
            blob_offset,
            blob_end: blob.len() as u64,
            inner_offset: 0,
            digest: sha256_digest(piece),
            compression: Compression::Gzip,
        });
    }
    let toc = LayerToc {
        format: Format::Estargz,
        entries: vec![entry],
        prefetch_end: None,
        blob_size: blob.len() as u64,
    };
    (toc, blob)
}

fn fuse_vs_tmpfs(c: &mut Criterion) {
    if !Path::new("/dev/fuse").exists() || unsafe { libc::geteuid() } != 0 {
        eprintln!("fuse_read: SKIPPED: needs root and /dev/fuse");
        return;
    }
    let data = data();
    let (toc, blob) = layer(&data);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let reader = Arc::new(ChunkReader::new(
        "sha256:bench",
        Arc::new(LayerTree::build(&toc, &veil_formats::limits::Limits::default()).unwrap()),
        Arc::new(MemoryBlob(blob)),
        Arc::new(ChunkCache::new(2 * FILE_SIZE as u64)),
        ReaderOptions::default(),
    ));
    let fs = LayerFs::new(reader, runtime.handle().clone(), FsOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("layer");
    std::fs::create_dir(&mnt).unwrap();
    // Veil's own read path: promotion to passthrough off (`veil bench --fuse-read`
    // measures the promoted file beside it).
    let options = MountOptions {
        promote: veil_fusefs::promote::PromoteOptions::off(),
        ..MountOptions::default()
    };
    let _mounted = Mounted::new(mount::mount(fs, &mnt, &options).unwrap());
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let on_tmpfs = shm.path().join("data.bin");
    std::fs::write(&on_tmpfs, &data).unwrap();
    let on_fuse = mnt.join("data.bin");

    let mut buf = vec![0u8; READ_SIZE];
    // Every chunk into Veil's plaintext cache, and a check that the bytes are right.
    assert_eq!(
        std::fs::read(&on_fuse).unwrap(),
        data,
        "FUSE serves the file"
    );
    let mut g = c.benchmark_group("sequential read, 32 MiB, chunks cached, page cache dropped");
    g.sample_size(20);
    g.throughput(Throughput::Bytes(FILE_SIZE as u64));
    g.bench_function("Veil FUSE", |b| {
        b.iter(|| {
            assert_eq!(
                read_dropping_cache(&on_fuse, &mut buf).unwrap(),
                FILE_SIZE as u64
            )
        })
    });
    g.bench_function("tmpfs", |b| {
        b.iter(|| {
            assert_eq!(
                read_dropping_cache(&on_tmpfs, &mut buf).unwrap(),
                FILE_SIZE as u64
            )
        })
    });
    g.finish();
}

criterion_group!(fuse_read, fuse_vs_tmpfs);
criterion_main!(fuse_read);
