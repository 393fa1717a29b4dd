//! Test support for Veil's integration tests.
//!
//! Integration tests use real parts (containerd, runc, Debian's registry, FUSE). This crate
//! gives them the plumbing to do so safely: building and locating Veil's own binaries,
//! starting processes that are stopped again by PID when the test ends, and unmounting
//! every mount a test made below its own directory. Nothing here stops a process or
//! unmounts a path that the test did not start or make itself.

pub mod attested_scenario;
pub mod binaries;
pub mod bundle;
pub mod cdh_standin;
pub mod cleanup;
pub mod containerd;
pub mod core_dumps;
pub mod cri;
pub mod cri_private;
pub mod encrypted_support;
pub mod gosuite;
pub mod guest_scenario;
pub mod guest_stack;
pub mod image;
pub mod kbs_server;
pub mod lazy_image;
pub mod lazy_scenario;
pub mod lazy_stack;
pub mod local_registry;
pub mod log_secrets;
pub mod memory_cgroup;
pub mod mount_cli;
pub mod mounts;
pub mod process;
pub mod prometheus;
// Debian's `docker-registry` on loopback, and pushing to it: one copy, shared with the
// registry client's tests in snapshotter/tests/registry_support/.
#[path = "../../registry/tests/registry_support/registry.rs"]
pub mod registry;
pub mod registry_log;
pub mod restart_watch;
pub mod smaps;
// The registry client tests' loopback HTTP server and forwarding proxy (stalls, tampering):
// one copy, shared.
#[path = "../../registry/tests/registry_support/http.rs"]
pub mod http;
#[path = "../../registry/tests/registry_support/proxy.rs"]
pub mod proxy;
// The token service of the registry's `auth: token:` mode: one copy, shared.
pub mod scenario;
pub mod status_quo_pull;
pub mod test_kbs;
#[path = "../../registry/tests/registry_support/token.rs"]
#[allow(clippy::new_without_default)]
pub mod token;

pub use binaries::{require_root, veil_binary};
pub use mounts::unmount_below;
pub use process::ChildGuard;
