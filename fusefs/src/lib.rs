//! `veil-fusefs`: the chunk pipeline with its caches, and the FUSE filesystem that serves
//! a layer.
//!
//! This crate knows nothing of registries, keys or containerd. It reads blob bytes through
//! the [`veil_blob::BlobSource`] seam, takes a layer as the format-neutral
//! [`veil_formats::toc::LayerToc`], and serves that through FUSE: [`tree`] (inodes,
//! whiteouts, hard links), [`pipeline`] (chunk reads: coalescing, single flight,
//! verification), [`cache`] (the plaintext chunk cache), [`disk_cache`] (blob bytes as
//! stored), [`prefetch`] (prioritized files) and [`background`] (whole blobs into the disk cache), [`fs`] and
//! [`mount`] (the FUSE filesystem and its mount), [`read_data`] (a read's bytes without
//! copying cached chunks), [`tuning`] (the kernel's side: INIT answer, readahead),
//! [`window`] (fetching the neighbourhood of a miss), [`window_plan`] (where its
//! range goes: neighbourhood, the directory's small files) and [`window_stream`] (its
//! chunks completed as the response streams in; the streaming itself, shared with the
//! prefetch's pieces, is `chunk_stream`), [`handover`] and [`resume`]
//! (serving a live connection another process made, after a restart), [`access_log`]
//! (which files a workload touched, in order), [`failed`] (the `EIO` stand-in for a layer
//! that cannot be mounted), [`no_dump`] (plaintext buffers left out
//! of core dumps), [`status_dir`] (the hidden read-only status file in a layer's mount),
//! [`promote`] (files whole in the cache served by FUSE passthrough from a memfd),
//! [`carry`] (the record that carries a promoted file over a restart, and its checks),
//! [`kept_entries`] (which promoted files of each connection a keeper of fds holds),
//! [`backing`] (registering backing files on a `/dev/fuse` fd, for a resumed session).

pub mod access_log;
mod attr;
pub mod background;
pub mod backing;
pub mod cache;
pub mod carry;
mod chunk_stream;
pub mod disk_cache;
pub mod failed;
pub mod fs;
pub mod handover;
pub mod kept_entries;
pub mod metrics;
pub mod mount;
pub mod no_dump;
pub mod pipeline;
pub mod prefetch;
pub mod promote;
pub mod read_data;
pub mod resume;
pub mod status_dir;
pub mod tree;
pub mod tuning;
pub mod window;
pub mod window_plan;
pub mod window_stream;
