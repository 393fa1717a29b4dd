//! Layer connections that outlive the process: each layer mount's `/dev/fuse` fd is
//! kept by a [`ConnectionKeeper`] (Veil's fd store over `SCM_RIGHTS`, or systemd's
//! `FDSTORE=1`; the daemon supplies it) under the layer directory's name, with a
//! [`Record`] of what it serves. After a restart the puller takes them back: every layer
//! of a root still mounted (`adopt.rs`) whose connection was kept is resolved again and
//! served on the same connection, so running containers' reads pause instead of
//! failing with `ENOTCONN`. Connections of layers no root uses any more are closed.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use veil_image::layers::LazyLayers;
use veil_image::resolver::{
    parse_entry_name, CarriedFile, Handover, LayerResolver, LiveMount, RemoteLayer, Resolved,
};

pub use crate::keeper::{ConnectionKeeper, KeptConnection};
use crate::kept_promoted::KeptPromoted;

/// What is kept with a layer's connection: the layer it serves and the image service's
/// opaque state of the connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    /// The layer (image, digest, manifest) as the pull asked for it.
    pub layer: RemoteLayer,
    /// The connection's state (`Handover::state`).
    pub state: String,
}

impl Record {
    /// The record as kept.
    pub fn encode(&self) -> Vec<u8> {
        // A struct of strings always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// A kept record; `None` if it is not one.
    pub fn decode(data: &[u8]) -> Option<Self> {
        serde_json::from_slice(data).ok()
    }
}

/// The puller's side: the keeper (if any) and the layer mounts resumed from kept
/// connections (layers of adopted roots).
#[derive(Default)]
pub(crate) struct Kept {
    keeper: Option<Arc<dyn ConnectionKeeper>>,
    resumed: Mutex<HashMap<PathBuf, Box<dyn LiveMount>>>,
    /// The promoted files kept beside the connections.
    promoted: KeptPromoted,
}

/// The keeper's name of the layer mounted at `dir`: the directory's own name.
fn name_of(dir: &Path) -> Option<String> {
    dir.file_name().map(|n| n.to_string_lossy().into_owned())
}

impl Kept {
    /// Keeping connections in `keeper` (`None`: they end with the process).
    pub fn new(keeper: Option<Arc<dyn ConnectionKeeper>>) -> Self {
        Self {
            keeper,
            resumed: Mutex::new(HashMap::new()),
            promoted: KeptPromoted::default(),
        }
    }

    /// Keeps the connection of `live`, mounted at `dir` for `layer`. A failure is logged:
    /// the layer is served, but a restart will cut its containers off.
    pub fn keep(&self, dir: &Path, layer: &RemoteLayer, live: &dyn LiveMount) {
        let (Some(keeper), Some(name)) = (&self.keeper, name_of(dir)) else {
            return;
        };
        let kept = match live.handover() {
            None => return,
            Some(Err(e)) => Err(e.to_string()),
            Some(Ok(h)) => {
                let record = Record {
                    layer: layer.clone(),
                    state: h.state,
                };
                // Files kept beside an earlier connection of this name are not this one's.
                self.promoted.forget_all(keeper.as_ref(), &name);
                let kept = keeper.keep(&name, &record.encode(), h.fd.as_fd());
                if kept.is_ok() {
                    live.keep_promoted(self.promoted.keeper(keeper.clone(), &name));
                }
                kept
            }
        };
        if let Err(e) = kept {
            tracing::warn!(layer = %layer.layer_digest, dir = %dir.display(), error = %e,
                "could not keep the layer's FUSE connection: a restart will break containers using it");
        }
    }

    /// The layer at `dir` is taken down: its kept connection is closed, and its resumed
    /// mount (if it is one) dropped, which unmounts it. Returns whether it was resumed.
    pub fn take_down(&self, dir: &Path) -> bool {
        let resumed = self
            .resumed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(dir);
        let was = resumed.is_some();
        drop(resumed);
        if let (Some(keeper), Some(name)) = (&self.keeper, name_of(dir)) {
            if let Err(e) = keeper.forget(&name) {
                tracing::warn!(dir = %dir.display(), error = %e, "could not close the layer's kept FUSE connection");
            }
            self.promoted.forget_all(keeper.as_ref(), &name);
        }
        was
    }

    /// Lets go of the resumed mounts without unmounting (the process exits; the keeper
    /// holds their connections for the next one).
    pub fn leave_mounted(&self) {
        let all: Vec<_> = self
            .resumed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        for (_, live) in all {
            live.keep_mounted();
        }
    }

    /// Serves again the kept connections of `in_use` (the layer directories of adopted
    /// roots); closes the others. Returns how many layers were resumed. A layer that
    /// cannot be resumed stays as the old process left it (its reads fail) and is logged.
    pub async fn resume(
        &self,
        lazy: &Arc<LazyLayers>,
        in_use: &HashSet<PathBuf>,
        kept: Vec<KeptConnection>,
    ) -> usize {
        let mut resumed = 0;
        let (kept, mut carried) = split_promoted(kept);
        for (name, files) in &carried {
            self.promoted.note(name, files.iter().map(|f| f.ino));
        }
        // Promoted files of no kept connection.
        let names: HashSet<&str> = kept.iter().map(|c| c.name.as_str()).collect();
        let orphans: Vec<String> = carried
            .keys()
            .filter(|n| !names.contains(n.as_str()))
            .cloned()
            .collect();
        for name in orphans {
            carried.remove(&name);
            if let Some(keeper) = &self.keeper {
                self.promoted.forget_all(keeper.as_ref(), &name);
            }
        }
        for conn in kept {
            let files = carried.remove(&conn.name).unwrap_or_default();
            let dir = in_use
                .iter()
                .find(|d| name_of(d).as_deref() == Some(&conn.name));
            let record = Record::decode(&conn.data);
            let (Some(dir), Some(record)) = (dir, record) else {
                tracing::info!(name = %conn.name, "a kept FUSE connection no mounted root uses: closing it");
                drop(conn.fd);
                if let Some(keeper) = &self.keeper {
                    let _ = keeper.forget(&conn.name);
                    self.promoted.forget_all(keeper.as_ref(), &conn.name);
                }
                continue;
            };
            match resume_one(lazy, dir, &record, conn.fd, files).await {
                Ok(live) => {
                    // Its connection is still kept: files it promotes from now on are
                    // kept beside it (as are those carried over).
                    if let Some(keeper) = &self.keeper {
                        live.keep_promoted(self.promoted.keeper(keeper.clone(), &conn.name));
                    }
                    tracing::info!(layer = %record.layer.layer_digest, dir = %dir.display(),
                        "serving a running container's layer again on its kept connection");
                    self.resumed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(dir.clone(), live);
                    resumed += 1;
                }
                Err(why) => {
                    tracing::error!(layer = %record.layer.layer_digest, dir = %dir.display(), reason = %why,
                        "could not serve a kept layer connection again: containers using it lose it");
                    if let Some(keeper) = &self.keeper {
                        let _ = keeper.forget(&conn.name);
                        self.promoted.forget_all(keeper.as_ref(), &conn.name);
                    }
                }
            }
        }
        resumed
    }
}

/// Resolves `record`'s layer again (its key unwrapped again when encrypted) and serves
/// the live mount at `dir` on the kept connection `fd`.
async fn resume_one(
    lazy: &Arc<LazyLayers>,
    dir: &Path,
    record: &Record,
    fd: OwnedFd,
    carried: Vec<CarriedFile>,
) -> Result<Box<dyn LiveMount>, String> {
    match lazy.authorize(&record.layer).await {
        Ok(veil_image::resolver::Authorization::Granted(_)) => {}
        Ok(veil_image::resolver::Authorization::Denied(why)) => return Err(why),
        Err(e) => return Err(e.to_string()),
    }
    let ready = match lazy.resolve(&record.layer).await {
        Ok(Resolved::Lazy(ready)) => ready,
        Ok(Resolved::NotLazy(why)) | Ok(Resolved::Fail(why)) => return Err(why),
        Err(e) => return Err(e.to_string()),
    };
    let handover = Handover {
        fd,
        state: record.state.clone(),
        carried,
    };
    let d = dir.to_path_buf();
    tokio::task::spawn_blocking(move || ready.resume(&d, handover))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

/// The kept connections, and the promoted files kept beside them by connection name.
fn split_promoted(
    kept: Vec<KeptConnection>,
) -> (Vec<KeptConnection>, HashMap<String, Vec<CarriedFile>>) {
    let mut connections = Vec::new();
    let mut carried: HashMap<String, Vec<CarriedFile>> = HashMap::new();
    for conn in kept {
        match parse_entry_name(&conn.name) {
            Some((name, ino)) => carried
                .entry(name.to_string())
                .or_default()
                .push(CarriedFile {
                    ino,
                    data: conn.data,
                    fd: conn.fd,
                }),
            None => connections.push(conn),
        }
    }
    (connections, carried)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_foreign_data_is_refused() {
        let r = Record {
            layer: RemoteLayer {
                image_ref: "r.example/app:1".into(),
                layer_digest: "sha256:ab".into(),
                manifest_digest: Some("sha256:cd".into()),
                toc_digest: None,
            },
            state: "{}".into(),
        };
        assert_eq!(Record::decode(&r.encode()), Some(r));
        assert_eq!(Record::decode(b"not json"), None);
    }
}
