//! systemd's file-descriptor store as the fd store: the service manager holds each
//! layer's FUSE connection while the daemon restarts, with no supervisor of Veil's own.
//!
//! Storing is `sd_notify` `FDSTORE=1` with `FDNAME=<name>` and the fd (the unit needs
//! `FileDescriptorStoreMax=`); removing is `FDSTOREREMOVE=1` with the name. systemd passes
//! every stored fd to the next start of the service (`LISTEN_FDS`, `LISTEN_FDNAMES`,
//! `LISTEN_PID`), keeps them while a restart is pending (`systemctl restart`, or
//! `Restart=` after a crash or SIGKILL), and with `FileDescriptorStorePreserve=yes`
//! (systemd 254+) also across a stop. It drops an fd on its own when the fd reports an
//! error (a FUSE connection that was aborted or unmounted).
//!
//! systemd keeps only a name with each fd; the data stored with it lives in a file of
//! its own (`<dir>/<name>`), written before the fd is handed over and removed after.

use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use sd_notify::NotifyState;

use super::wire::check;
use super::{FdKeeper, FdStoreError, StoredFd};

/// Longest `FDNAME=` systemd accepts.
pub const MAX_FDNAME_BYTES: usize = 255;

/// Only one owner may take the fds systemd passed at start: they are plain numbers.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// systemd's fd store of the service this process runs as.
#[derive(Debug, Clone)]
pub struct SystemdFdStore {
    data_dir: PathBuf,
}

impl SystemdFdStore {
    /// The service manager's store; the data stored with each fd goes to files in
    /// `data_dir` (created when needed, mode 0700: it lives as long as the daemon's
    /// state).
    pub fn new(data_dir: &Path) -> Self {
        Self {
            data_dir: data_dir.to_path_buf(),
        }
    }

    /// Whether this process was started by systemd with an fd store: `$NOTIFY_SOCKET`
    /// and a positive `$FDSTORE` (set from `FileDescriptorStoreMax=` by systemd 254 and
    /// later; older ones set no `$FDSTORE`, so there the store is asked for explicitly).
    pub fn offered() -> bool {
        std::env::var_os("NOTIFY_SOCKET").is_some()
            && std::env::var("FDSTORE")
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .is_some_and(|n| n > 0)
    }

    /// Whether a service manager listens at all (`$NOTIFY_SOCKET`).
    pub fn reachable() -> bool {
        std::env::var_os("NOTIFY_SOCKET").is_some()
    }

    fn data_path(&self, name: &str) -> PathBuf {
        self.data_dir.join(name)
    }

    fn write_data(&self, name: &str, data: &[u8]) -> Result<(), FdStoreError> {
        use std::os::unix::fs::DirBuilderExt;
        let io = |cause| FdStoreError::Io {
            path: self.data_dir.display().to_string(),
            cause,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.data_dir)
            .map_err(io)?;
        let tmp = self.data_dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, data).map_err(io)?;
        std::fs::rename(&tmp, self.data_path(name)).map_err(io)
    }

    fn notify(
        &self,
        state: &[NotifyState],
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<(), FdStoreError> {
        if !Self::reachable() {
            return Err(FdStoreError::Refused(
                "no service manager: $NOTIFY_SOCKET is not set (not started by systemd?)".into(),
            ));
        }
        let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
        sd_notify::notify_with_fds(state, &fds).map_err(|cause| FdStoreError::Io {
            path: "$NOTIFY_SOCKET".into(),
            cause,
        })
    }
}

/// Checks `name` as systemd checks an `FDNAME=`: printable ASCII without `:`.
fn check_fdname(name: &str) -> Result<(), FdStoreError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_FDNAME_BYTES
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b':' && b != b'/');
    if valid {
        Ok(())
    } else {
        Err(FdStoreError::Protocol(format!(
            "{name:?} cannot be an FDNAME (printable ASCII without ':' or '/', at most {MAX_FDNAME_BYTES} bytes)"
        )))
    }
}

impl FdKeeper for SystemdFdStore {
    fn store(&self, name: &str, data: &[u8], fd: BorrowedFd<'_>) -> Result<(), FdStoreError> {
        check(name, data)?;
        check_fdname(name)?;
        self.write_data(name, data)?;
        // systemd keeps every fd sent under a name: drop the one held under it first.
        let name_state = NotifyState::FdName(name);
        self.notify(&[NotifyState::FdStoreRemove, name_state], None)?;
        self.notify(&[NotifyState::FdStore, NotifyState::FdName(name)], Some(fd))
    }

    fn remove(&self, name: &str) -> Result<(), FdStoreError> {
        check_fdname(name)?;
        self.notify(
            &[NotifyState::FdStoreRemove, NotifyState::FdName(name)],
            None,
        )?;
        match std::fs::remove_file(self.data_path(name)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(cause) => Err(FdStoreError::Io {
                path: self.data_path(name).display().to_string(),
                cause,
            }),
        }
    }

    /// The fds systemd passed to this process at start, with the data stored for each.
    /// They can be taken once; a second call returns none. An fd without data (or data
    /// without an fd) is not returned: the fd is given back under its name with empty
    /// data for the caller to remove, the file is deleted.
    fn take_all(&self) -> Result<Vec<StoredFd>, FdStoreError> {
        if TAKEN.swap(true, Ordering::SeqCst) {
            return Ok(Vec::new());
        }
        let passed = sd_notify::listen_fds_with_names().map_err(|cause| FdStoreError::Io {
            path: "$LISTEN_FDS".into(),
            cause,
        })?;
        let mut out = Vec::new();
        for (raw, name) in passed {
            // SAFETY: systemd passed this fd to this process (LISTEN_PID is ours) and
            // nothing else in the process owns it: TAKEN lets only one caller here.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            let data = if check_fdname(&name).is_ok() {
                std::fs::read(self.data_path(&name)).unwrap_or_default()
            } else {
                Vec::new()
            };
            out.push(StoredFd { name, data, fd });
        }
        // Data files of fds systemd no longer holds are stale.
        let names: std::collections::HashSet<&str> = out.iter().map(|s| s.name.as_str()).collect();
        if let Ok(entries) = std::fs::read_dir(&self.data_dir) {
            for e in entries.flatten() {
                let file = e.file_name();
                let file = file.to_string_lossy();
                if !names.contains(&*file) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(out)
    }

    fn describe(&self) -> String {
        "systemd's fd store (FDSTORE=1)".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn fdnames_are_checked_as_systemd_does() {
        assert!(check_fdname("42").is_ok());
        assert!(check_fdname("0123456789abcdef.3").is_ok());
        for bad in ["", "a:b", "a b", "../x", ".hidden", &"x".repeat(256)] {
            assert!(check_fdname(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn without_a_service_manager_storing_is_refused_and_names_why() {
        if SystemdFdStore::reachable() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let store = SystemdFdStore::new(dir.path());
        let file = std::fs::File::open("/dev/null").unwrap();
        let err = store.store("1", b"{}", file.as_fd()).unwrap_err();
        assert!(err.to_string().contains("NOTIFY_SOCKET"), "{err}");
    }
}
