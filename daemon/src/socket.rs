//! Unix sockets Veil listens on: one way to bind them, for every server (the snapshots
//! API, the status socket, `veil keyprovider serve`).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tokio::net::UnixListener;

use crate::error::{DaemonError, IoContext};

/// Mode of Veil's sockets: owner and group (containerd runs as root; a group may be
/// given access).
pub const SOCKET_MODE: u32 = 0o660;

/// Binds `address`, creating its directory, replacing a stale socket file but refusing to
/// take over a socket that another process still answers on.
pub async fn bind_unix(address: &Path) -> Result<UnixListener, DaemonError> {
    if let Some(dir) = address.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .io_context(|| format!("creating socket directory {}", dir.display()))?;
    }
    if address.exists() {
        if tokio::net::UnixStream::connect(address).await.is_ok() {
            return Err(DaemonError::InUse(address.to_path_buf()));
        }
        std::fs::remove_file(address)
            .io_context(|| format!("removing stale socket {}", address.display()))?;
    }
    let listener =
        UnixListener::bind(address).io_context(|| format!("listening on {}", address.display()))?;
    std::fs::set_permissions(address, std::fs::Permissions::from_mode(SOCKET_MODE))
        .io_context(|| format!("setting mode of {}", address.display()))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_a_live_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/veil.sock");
        let first = bind_unix(&path).await.unwrap();
        let err = bind_unix(&path).await.unwrap_err().to_string();
        assert!(err.contains("is in use"), "{err}");
        drop(first);
        // The file is left behind by the dropped listener: stale, so it is replaced.
        assert!(path.exists());
        bind_unix(&path).await.unwrap();
    }
}
