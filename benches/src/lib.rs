//! `veil bench`: Veil's cold-start benchmark.
//!
//! A sample image is built locally and pushed to Debian's `docker-registry` on loopback,
//! converted with `veil convert` (eStargz and/or zstd:chunked; plain, encrypted for a JWE
//! recipient, encrypted with the workload's files prefetched), and each mode's cold start
//! (from the start of the pull to the end of the workload's container, through a private
//! containerd) is measured N times through a shaping proxy (RTT, bandwidth), caches cold
//! every time. Output: a table, JSON, and a plot (PNG, SVG).
//!
//! [`fuse_read`] (`--fuse-read`) measures something else: a cached file read through
//! Veil's FUSE filesystem against tmpfs, with and without promotion to FUSE passthrough.

pub mod cgroup_run;
pub mod cold_run;
pub mod convert;
pub mod enc_status_quo;
pub mod fuse_read;
pub mod limit;
pub mod mode;
pub mod plot;
pub mod proxy;
pub mod push;
pub mod read_set;
pub mod report;
pub mod run;
pub mod sample;
pub mod scale;
pub mod scale_plot;
pub mod stargz;
