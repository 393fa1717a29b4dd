//! Mounting a [`LayerFs`] at a directory, and unmounting it again.
//!
//! [`mount`] mounts a layer (and [`mount_failed`] the [`FailedFs`] stand-in for one that
//! cannot be mounted) read-only with fsname and subtype `veil` (so `/proc/mounts` shows
//! `veil <dir> fuse.veil ro,...`), by default `allow_other` (containers run as other
//! users), `default_permissions` (the kernel enforces mode bits) and with `dev`/`suid`
//! kept, so the layer behaves like the unpacked directory it replaces. The mount is done
//! in pure Rust by fuser: the `mount(2)` syscall when running as root, `fusermount3`
//! otherwise; no libfuse is linked. Requests are taken by [`MountOptions::threads`]
//! session threads, each reading its own clone of the connection's fd
//! (`FUSE_DEV_IOC_CLONE`), and the mount's readahead is raised to
//! [`MountOptions::read_ahead_kb`] ([`crate::tuning`]).
//!
//! The returned [`LayerMount`] unmounts when dropped or on [`LayerMount::unmount`]; a
//! busy mount (overlayfs still using it, a process with an open file) is detached lazily
//! instead, and the session ends once the last user lets go. [`unmount_path`] and
//! [`veil_mounts`] recover mounts left behind by a previous process.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use fuser::{Config, Filesystem, MountOption, Session, SessionACL, SessionUnmounter};

use crate::failed::FailedFs;
use crate::fs::LayerFs;
use crate::handover::{KernelInit, KernelInitSlot};
use crate::promote::PromoteOptions;
use crate::tuning::{set_read_ahead, READ_AHEAD_KB};

/// The fsname and subtype of Veil's mounts.
pub const FS_NAME: &str = "veil";

/// How long an unmount waits for the FUSE session to end before leaving it to end on its
/// own (it outlives the unmount when the mount is still visible elsewhere, e.g. in another
/// mount namespace).
pub const SESSION_END_WAIT: Duration = Duration::from_secs(5);

/// Threads taking FUSE requests of one mount, by default: chosen with `veil bench
/// --fuse-read` (README, "FUSE read path").
pub const DEFAULT_THREADS: usize = 4;

/// Where the kernel lists backing devices (a FUSE mount's readahead is set there).
const SYSFS_BDI: &str = "/sys/class/bdi";

/// How to mount a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// Let every user (not only the mounter) use the mount.
    pub allow_other: bool,
    /// Let the kernel check permissions from the mode bits.
    pub default_permissions: bool,
    /// Honour device files (`dev`); otherwise `nodev`.
    pub dev: bool,
    /// Honour setuid/setgid bits (`suid`); otherwise `nosuid`.
    pub suid: bool,
    /// Shown as the mount's source (`fsname`).
    pub fsname: String,
    /// Shown in the type as `fuse.<subtype>`.
    pub subtype: String,
    /// Threads taking FUSE requests, each from its own clone of the connection's fd
    /// (reads that must wait for a fetch continue on the tokio runtime).
    pub threads: usize,
    /// The mount's readahead in KiB (sizes a sequential reader's FUSE requests; set as
    /// root only); 0 leaves the kernel's default (128 KiB).
    pub read_ahead_kb: u32,
    /// Whether and from which size files whole in the plaintext cache are served by FUSE
    /// passthrough from a memfd ([`crate::promote`]).
    pub promote: PromoteOptions,
}

impl Default for MountOptions {
    fn default() -> Self {
        Self {
            allow_other: true,
            default_permissions: true,
            dev: true,
            suid: true,
            fsname: FS_NAME.to_string(),
            subtype: FS_NAME.to_string(),
            threads: DEFAULT_THREADS,
            read_ahead_kb: READ_AHEAD_KB,
            promote: PromoteOptions::default(),
        }
    }
}

/// Why mounting or unmounting failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The mount point is not a directory.
    #[error("mount point {0} is not a directory")]
    NotADirectory(PathBuf),
    /// Mounting failed.
    #[error("mounting at {path} failed: {source}")]
    Mount {
        /// The mount point.
        path: PathBuf,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// Unmounting failed.
    #[error("unmounting {path} failed: {source}")]
    Unmount {
        /// The mount point.
        path: PathBuf,
        /// What failed.
        #[source]
        source: io::Error,
    },
}

/// A mounted layer. Dropping it unmounts.
#[derive(Debug)]
pub struct LayerMount {
    mountpoint: PathBuf,
    unmounter: Option<Unmounter>,
    session: Option<JoinHandle<()>>,
    session_done: Option<mpsc::Receiver<io::Result<()>>>,
    /// The connection's `/dev/fuse` fd and the kernel's INIT offer, for a handover.
    handover: Option<(OwnedFd, KernelInit)>,
}

/// How a [`LayerMount`] is unmounted.
#[derive(Debug)]
enum Unmounter {
    /// fuser mounted it.
    Session(SessionUnmounter),
    /// It was handed over ([`crate::resume`]): by path.
    Path,
}

/// Mounts `fs` at `mountpoint` (an existing directory), promoting files as
/// [`MountOptions::promote`] says.
pub fn mount(
    fs: LayerFs,
    mountpoint: &Path,
    options: &MountOptions,
) -> Result<LayerMount, MountError> {
    let fs = fs.with_promotion(options.promote);
    let offer = fs.kernel_init_slot();
    mount_any(fs, mountpoint, options, Some(offer))
}

/// Mounts the [`FailedFs`] stand-in for `layer` at `mountpoint`: every request on it
/// answers `EIO` until it is unmounted (and the real layer mounted in its place).
pub fn mount_failed(
    layer: &str,
    reason: &str,
    mountpoint: &Path,
    options: &MountOptions,
) -> Result<LayerMount, MountError> {
    mount_any(FailedFs::new(layer, reason), mountpoint, options, None)
}

fn mount_any<F: Filesystem + Send + 'static>(
    fs: F,
    mountpoint: &Path,
    options: &MountOptions,
    offer: Option<KernelInitSlot>,
) -> Result<LayerMount, MountError> {
    let mount_err = |source| MountError::Mount {
        path: mountpoint.to_path_buf(),
        source,
    };
    // A dead FUSE mount left behind answers ENOTCONN here: unmount_path() clears it.
    let metadata = std::fs::metadata(mountpoint).map_err(mount_err)?;
    if !metadata.is_dir() {
        return Err(MountError::NotADirectory(mountpoint.to_path_buf()));
    }
    let mut config = fuser_config(options);
    // Each session thread gets a clone of the connection's fd (FUSE_DEV_IOC_CLONE): its
    // own queue of requests being answered, no lock shared with the others.
    config.clone_fd = true;
    let mut session = Session::new(fs, mountpoint, &config).map_err(mount_err)?;
    let unmounter = session.unmount_callable();
    // The handshake is over: a LayerFs's init has recorded the kernel's offer.
    let offer = offer.and_then(|slot| *slot.lock().unwrap_or_else(|p| p.into_inner()));
    let handover = match offer {
        Some(init) => Some((
            session.as_fd().try_clone_to_owned().map_err(mount_err)?,
            init,
        )),
        None => None,
    };
    let (done_tx, done_rx) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("veil-fuse".to_string())
        .spawn(move || {
            let _ = done_tx.send(session.run());
        })
        .map_err(mount_err)?;
    tune_read_ahead(mountpoint, options.read_ahead_kb);
    Ok(LayerMount {
        mountpoint: mountpoint.to_path_buf(),
        unmounter: Some(Unmounter::Session(unmounter)),
        session: Some(thread),
        session_done: Some(done_rx),
        handover,
    })
}

pub(crate) fn fuser_config(options: &MountOptions) -> Config {
    let mut mount_options = vec![
        MountOption::RO,
        MountOption::FSName(options.fsname.clone()),
        if options.dev {
            MountOption::Dev
        } else {
            MountOption::NoDev
        },
        if options.suid {
            MountOption::Suid
        } else {
            MountOption::NoSuid
        },
    ];
    // The kernel takes `subtype=` itself when we mount(2) as root; fusermount3 wants it
    // as its own option.
    if is_root() {
        mount_options.push(MountOption::CUSTOM(format!("subtype={}", options.subtype)));
    } else {
        mount_options.push(MountOption::Subtype(options.subtype.clone()));
    }
    if options.default_permissions {
        mount_options.push(MountOption::DefaultPermissions);
    }
    let mut config = Config::default();
    config.mount_options = mount_options;
    config.acl = if options.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(options.threads.max(1));
    config
}

/// Sets the readahead of the FUSE mount at `mountpoint` (the newest mount there) to `kb`
/// KiB; 0 leaves it. Best effort: a failure (not root, no sysfs) is logged and the
/// kernel's default stays.
fn tune_read_ahead(mountpoint: &Path, kb: u32) {
    if kb == 0 {
        return;
    }
    let device = std::fs::read_to_string("/proc/self/mountinfo").map(|info| {
        parse_mountinfo(&info)
            .into_iter()
            .rev()
            .find(|m| m.mountpoint == mountpoint)
            .map(|m| m.device)
    });
    let result = match device {
        Ok(Some(device)) => set_read_ahead(Path::new(SYSFS_BDI), &device, kb),
        Ok(None) => Err(io::Error::other("not in /proc/self/mountinfo")),
        Err(e) => Err(e),
    };
    if let Err(error) = result {
        tracing::debug!(mountpoint = %mountpoint.display(), %error,
            "could not raise the mount's readahead; sequential reads use the kernel's default");
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

impl LayerMount {
    /// Where it is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// A mount serving a handed-over connection ([`crate::resume`]).
    pub(crate) fn resumed(
        mountpoint: &Path,
        session: JoinHandle<()>,
        session_done: mpsc::Receiver<io::Result<()>>,
        dev: OwnedFd,
        init: KernelInit,
    ) -> Self {
        Self {
            mountpoint: mountpoint.to_path_buf(),
            unmounter: Some(Unmounter::Path),
            session: Some(session),
            session_done: Some(session_done),
            handover: Some((dev, init)),
        }
    }

    /// A copy of the connection's `/dev/fuse` fd and the kernel's INIT offer, for another
    /// process to [`crate::resume::resume`] serving it; `None` for a mount that cannot be
    /// handed over (the `EIO` stand-in).
    pub fn handover(&self) -> Option<io::Result<(OwnedFd, KernelInit)>> {
        let (fd, init) = self.handover.as_ref()?;
        Some(fd.try_clone().map(|fd| (fd, *init)))
    }

    /// Lets go of the mount without unmounting it: the session serves on until this
    /// process exits, and whoever holds a copy of the fd can resume it.
    pub fn keep_mounted(mut self) {
        self.unmounter = None;
    }

    /// Unmounts; a busy mount is detached lazily instead (and still counts as success).
    pub fn unmount(mut self) -> Result<(), MountError> {
        self.unmount_inner()
    }

    fn unmount_inner(&mut self) -> Result<(), MountError> {
        let Some(unmounter) = self.unmounter.take() else {
            return Ok(());
        };
        let session = self.session.take();
        let session_done = self.session_done.take();
        let unmounted = match unmounter {
            Unmounter::Session(mut u) => u.unmount(),
            Unmounter::Path => unmount_now(&self.mountpoint),
        };
        match unmounted {
            Ok(()) => {}
            Err(err) if err.raw_os_error() == Some(libc::EBUSY) => {
                tracing::warn!(mountpoint = %self.mountpoint.display(),
                    "layer mount is busy; detaching it lazily");
                // The session keeps serving open files until the last user lets go.
                return detach(&self.mountpoint);
            }
            Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {
                // Already unmounted (by path, from outside): nothing more to do here.
                tracing::debug!(mountpoint = %self.mountpoint.display(),
                    "layer was already unmounted");
            }
            Err(source) => {
                return Err(MountError::Unmount {
                    path: self.mountpoint.clone(),
                    source,
                })
            }
        }
        // Normally the kernel has ended the connection and the session thread is exiting;
        // wait for that, but only so long.
        match session_done.map(|done| done.recv_timeout(SESSION_END_WAIT)) {
            Some(Ok(result)) => {
                if let Err(err) = result {
                    tracing::debug!(mountpoint = %self.mountpoint.display(), error = %err,
                        "FUSE session ended with an error");
                }
                if let Some(session) = session {
                    let _ = session.join();
                }
            }
            Some(Err(mpsc::RecvTimeoutError::Timeout)) => {
                tracing::warn!(mountpoint = %self.mountpoint.display(),
                    "FUSE session still running after unmount (mounted elsewhere?); \
                     leaving it to end when the kernel releases it");
            }
            _ => {}
        }
        Ok(())
    }
}

impl Drop for LayerMount {
    fn drop(&mut self) {
        if let Err(err) = self.unmount_inner() {
            tracing::error!(error = %err, "could not unmount layer");
        }
    }
}

/// Unmounts `path` (not lazily: `EBUSY` when in use).
fn unmount_now(path: &Path) -> io::Result<()> {
    let c_path = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: c_path is a valid NUL-terminated string that outlives the call.
    if unsafe { libc::umount2(c_path.as_ptr(), 0) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Unmounts whatever is mounted at `path`, lazily (`MNT_DETACH`); for recovery.
///
/// Falls back to `fusermount3 -u -z` when not privileged.
pub fn unmount_path(path: &Path) -> Result<(), MountError> {
    detach(path)
}

fn detach(path: &Path) -> Result<(), MountError> {
    let unmount_err = |source| MountError::Unmount {
        path: path.to_path_buf(),
        source,
    };
    let c_path = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()))
        .map_err(|e| unmount_err(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    // SAFETY: c_path is a valid NUL-terminated string that outlives the call.
    let rc = unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EPERM) {
        return Err(unmount_err(err));
    }
    let output = std::process::Command::new("fusermount3")
        .args(["-u", "-z", "--"])
        .arg(path)
        .output()
        .map_err(unmount_err)?;
    if output.status.success() {
        Ok(())
    } else {
        Err(unmount_err(io::Error::other(format!(
            "fusermount3 -u -z: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))))
    }
}

/// Mount points of Veil FUSE mounts visible to this process (fstype `fuse.veil` or
/// source `veil`), from `/proc/self/mountinfo`.
pub fn veil_mounts() -> io::Result<Vec<PathBuf>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(parse_mountinfo(&info)
        .into_iter()
        .filter(|m| {
            m.fstype == format!("fuse.{FS_NAME}")
                || (m.fstype.starts_with("fuse") && m.source == FS_NAME)
        })
        .map(|m| m.mountpoint)
        .collect())
}

/// Whether `path` is a mount point, from `/proc/self/mountinfo`.
pub fn is_mountpoint(path: &Path) -> io::Result<bool> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(parse_mountinfo(&info).iter().any(|m| m.mountpoint == path))
}

struct MountInfo {
    /// `major:minor` of the mount's device.
    device: String,
    mountpoint: PathBuf,
    fstype: String,
    source: String,
}

/// Parses mountinfo lines: `id parent major:minor root mountpoint opts [tags] - type source superopts`.
fn parse_mountinfo(info: &str) -> Vec<MountInfo> {
    info.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut left = left.split(' ');
            let device = left.nth(2)?;
            let mountpoint = left.nth(1)?;
            let mut right = right.split(' ');
            let fstype = right.next()?;
            let source = right.next()?;
            Some(MountInfo {
                device: device.to_string(),
                mountpoint: PathBuf::from(unescape(mountpoint)),
                fstype: unescape(fstype),
                source: unescape(source),
            })
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                let value = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                out.push(value as u8);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_parsing_and_unescaping() {
        let info = "\
36 35 98:0 / /mnt/a\\040b rw,noatime master:1 - ext4 /dev/root rw
99 36 0:55 / /run/veil/l1 ro,nosuid - fuse.veil veil ro,user_id=0
100 36 0:56 / /run/other rw - fuse veil rw
garbage line
";
        let mounts = parse_mountinfo(info);
        assert_eq!(mounts.len(), 3);
        assert_eq!(mounts[0].mountpoint, PathBuf::from("/mnt/a b"));
        assert_eq!(mounts[1].fstype, "fuse.veil");
        assert_eq!(mounts[1].device, "0:55");
        assert_eq!(mounts[2].source, "veil");
        assert_eq!(unescape("\\134x\\"), "\\x\\");
    }

    #[test]
    fn options_map_to_fuser() {
        let config = fuser_config(&MountOptions::default());
        assert!(config.mount_options.contains(&MountOption::RO));
        assert!(config
            .mount_options
            .contains(&MountOption::DefaultPermissions));
        assert_eq!(config.acl, SessionACL::All);
        let config = fuser_config(&MountOptions {
            allow_other: false,
            dev: false,
            suid: false,
            ..MountOptions::default()
        });
        assert!(config.mount_options.contains(&MountOption::NoDev));
        assert!(config.mount_options.contains(&MountOption::NoSuid));
        assert_eq!(config.acl, SessionACL::Owner);
    }
}
