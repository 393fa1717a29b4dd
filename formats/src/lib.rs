//! `veil-formats`: what a layer blob holds and how to read and write it, shared by the
//! daemon and `veil convert`.
//!
//! - [`estargz`], [`zstdchunked`]: readers (footer, TOC, authentication against a
//!   digest) and deterministic writers of the two lazily pullable formats;
//! - [`toc`]: the format-neutral index of a layer (entries, chunks, prefetch end);
//! - [`codec`]: one chunk decompressed and checked against its digest;
//! - [`diff_id`]: a whole layer's uncompressed digest, checked against the image config;
//! - [`limits`]: what any layer may cost (chunk size, inner offsets, path depth, index
//!   memory), checked when a TOC is loaded and when a chunk is decoded;
//! - [`tar_index`]: tar headers to TOC entries;
//! - [`stream`]: streamed layers (plain tar, tar+gzip, tar+zstd): one indexing pass with
//!   restart points, then random access from the nearest restart point;
//! - [`classify`]: whether a layer descriptor can be served lazily, and its TOC read.
//!
//! Blob bytes come through [`veil_blob::BlobSource`]; nothing here knows registries,
//! keys, FUSE or containerd.

pub mod classify;
pub mod codec;
pub mod diff_id;
pub mod estargz;
pub mod limits;
pub mod stream;
mod tail;
pub mod tar_index;
pub mod toc;
pub mod zstdchunked;
