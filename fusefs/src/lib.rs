//! `veil-fusefs`: layer formats (eStargz, zstd:chunked), the chunk pipeline with its
//! caches, and the FUSE filesystem that serves a layer.
//!
//! This crate knows nothing of registries, keys or containerd. It reads blob bytes through
//! the [`source::BlobSource`] seam, describes a layer with the format-neutral
//! [`toc::LayerToc`], and serves that through FUSE; the snapshotter glues a registry (and,
//! later, a decrypting source) to it.

pub mod cache;
pub mod codec;
pub mod ctr;
pub mod disk_cache;
pub mod estargz;
pub mod fs;
pub mod mount;
pub mod pipeline;
pub mod prefetch;
pub mod source;
pub mod stream;
pub mod tar_index;
pub mod toc;
pub mod tree;
pub mod zstdchunked;
