//! `veil-guest`: Veil inside a CoCo guest (a confidential VM, bare-metal CoCo or a
//! peer-pod VM), serving kata-agent's image pulls lazily.
//!
//! In the guest there is no containerd: for every container kata-agent creates
//! `bundle = /run/kata-containers/<cid>`, asks the Confidential Data Hub to
//! `PullImage {image_url, bundle_path}` (ttrpc, `api.ImagePullService`) and runs the
//! container from `bundle/rootfs`. CDH's own puller downloads, decrypts and unpacks every
//! layer into `/run` (guest RAM), one pull at a time. [`GuestPuller::pull`] does the
//! same job on Veil's image service instead (the front door that speaks ttrpc is another
//! crate's; it calls this):
//!
//! 1. **Policy** ([`policy`]): the containers-policy.json named by
//!    [`GuestOptions::policy`] — `insecureAcceptAnything` and `reject`, by the most
//!    specific `docker` scope; any requirement Veil cannot check (`signedBy`,
//!    `sigstoreSigned`, ...) refuses the pull, never accepted unchecked.
//! 2. **Manifest**: resolved for this platform by the image service's registry client,
//!    whose credentials come from [`GuestOptions::auth_file`] (a docker `config.json`;
//!    build the client with [`registry_options`]). The image config is fetched (digest
//!    checked) for the bundle's spec.
//! 3. **Layers** (`pool.rs`), all at once, never one pull at a time: every layer is
//!    authorized on every pull (an encrypted layer's key is unwrapped now, or the pull
//!    fails naming the layer and why), then shared by its identity — blob digest, TOC
//!    digest, encrypted or not (issue 16's rule; never by chainID) — and mounted once
//!    under `work_dir/layers/`, counted per container; a second pull of the same layer
//!    waits for the first mount and shares its fetches. eStargz and zstd:chunked layers
//!    are served lazily (encrypted or not), encrypted layers without a usable TOC are
//!    streamed and HMAC-checked, and plain tar / tar.gz / tar.zst layers — no containerd
//!    here to unpack them — are streamed too when the image service has
//!    `LazyOptions::stream_plain`: fetched whole once, checked against the manifest's
//!    digest before anything is served, indexed with restart points, and served from
//!    those (chunk digests guard every later read). Streamed rather than unpacked
//!    because unpacking into `/run` costs the image's whole size in guest RAM; the index
//!    costs about 1 % of it, and the plaintext cache stays within the image service's
//!    budget. Nothing here holds a layer in memory.
//! 4. **Root filesystem**: ONE overlay at `bundle/rootfs` (created if missing, refused
//!    if already a mount point), lowers = the layer mounts (top layer first), upper and
//!    work in `work_dir/containers/<id>/` — guest memory, or the encrypted scratch disk
//!    when `work_dir` is on it. The upper directory takes the image root's owner and
//!    mode, so the container sees its image's own `/`. Who can read: the guest is
//!    single-tenant and kata-agent is root; the layers are mounted as the image service
//!    says (by default `allow_other` + `default_permissions`, so the container's own
//!    user, whatever its uid, reads what the image's mode bits allow), and
//!    `work_dir` is 0700, so no other guest user reaches the layer mounts directly. No
//!    private guard layer is stacked (as `veil mount` does without `allow_other`): it
//!    would hide the image's root mode from the container.
//! 5. **Spec** ([`spec`]): `bundle/config.json` from the image config as CDH's image-rs
//!    writes it (args = Entrypoint + Cmd, env, cwd, user, root `rootfs`).
//! 6. **Release**: kata-agent unmounts `rootfs` itself and tells no one. A watcher
//!    thread (`watch.rs`) polls `/proc/self/mountinfo` for changes (and every
//!    [`GuestOptions::watch_interval`]); once a container's root overlay (by mount ID)
//!    is gone, its writable layer is removed and its layers released — a layer is
//!    unmounted when its last container goes. [`GuestPuller::release`] does the same on
//!    request, [`GuestPuller::shutdown`] for everything.
//! 7. **Restarts** (`adopt.rs`): a process stopping while containers run calls
//!    [`GuestPuller::leave_mounted`] (nothing is taken down); the next puller on the same
//!    work directory sweeps only what no mounted root uses, and *adopts* the roots still
//!    in the mount table (their layer directories and writable layers), releasing them
//!    once they are unmounted. The layer filesystems were served by the old process: with
//!    a [`keeper::ConnectionKeeper`] (the daemon's fd store: Veil's supervisor or
//!    systemd's) each layer's FUSE connection is kept while it is mounted, and the next
//!    puller serves the adopted roots' layers on those same connections
//!    ([`GuestPuller::resume_kept`]): running containers' reads pause, never fail.
//!    Without one, a running container's uncached reads fail (`ENOTCONN`) after the
//!    process exits; adoption keeps its root in place and the cleanup correct.
//!
//! Errors ([`GuestError`]) name the image and what is to blame (layer, kid, path, policy
//! scope); on any error the pull is undone: nothing stays mounted, no count leaks.
//!
//! The bundle directory must exist: kata-agent creates it before it calls `PullImage`,
//! so a missing one is a caller's mistake (or a container already torn down), and Veil,
//! running as root, does not create directories at paths a socket peer names. (CDH's
//! image-rs would create it.) `rootfs` inside it is created.

mod adopt;
pub mod error;
pub mod handover;
pub mod keeper;
mod kept_promoted;
pub mod options;
pub mod policy;
mod pool;
pub mod puller;
pub mod spec;
mod watch;

pub use error::GuestError;
pub use keeper::{ConnectionKeeper, KeptConnection};
pub use options::{registry_options, GuestOptions};
pub use puller::{GuestPuller, PulledImage};
