//! `veil-fusefs`: layer formats (eStargz, zstd:chunked), the ocicrypt layer cipher, the
//! chunk pipeline with its caches, and the FUSE filesystem that serves a layer.
//!
//! Nothing is implemented here yet: lazy layers are tracked as their own issue. This crate
//! will know nothing of registries, keys or containerd; the snapshotter glues them.
