//! What the disk cache keeps on disk beside the data files: the sidecar format (present
//! ranges with a checksum of their own), loading and checking it at open, and persisting
//! a blob's present set after its bytes were flushed.

use super::*;

/// What the sidecar file records.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Sidecar {
    pub(super) version: u32,
    pub(super) key: String,
    pub(super) size: u64,
    pub(super) ranges: Vec<(u64, u64)>,
}

impl Sidecar {
    /// The JSON body, a newline, its SHA-256 in hex and a newline.
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec(self).unwrap_or_default();
        let sum = hex::encode(Sha256::digest(&out));
        out.push(b'\n');
        out.extend_from_slice(sum.as_bytes());
        out.push(b'\n');
        out
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<(Self, RangeSet), String> {
        let text = bytes
            .strip_suffix(b"\n")
            .ok_or("no final newline (truncated?)")?;
        let split = text
            .iter()
            .rposition(|&b| b == b'\n')
            .ok_or("no checksum line")?;
        let (body, sum) = (&text[..split], &text[split + 1..]);
        if hex::encode(Sha256::digest(body)).as_bytes() != sum {
            return Err("checksum mismatch".into());
        }
        let sidecar: Sidecar = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        if sidecar.version != SIDECAR_VERSION {
            return Err(format!("unknown version {}", sidecar.version));
        }
        let mut set = RangeSet::default();
        let mut last_end = 0;
        for &(start, end) in &sidecar.ranges {
            if start >= end || end > sidecar.size || start < last_end {
                return Err(format!("bad range {start}..{end}"));
            }
            last_end = end;
            set.insert(start..end);
        }
        Ok((sidecar, set))
    }
}

/// The file-name stem for blob `key`.
pub(super) fn stem_of(key: &str) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..20])
}

/// Reads and checks one sidecar against its data file.
pub(super) fn check_sidecar(
    stem: &str,
    path: &Path,
    data: &Path,
) -> Result<(Sidecar, RangeSet, std::time::SystemTime), String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let (sidecar, present) = Sidecar::decode(&bytes)?;
    if stem_of(&sidecar.key) != stem {
        return Err(format!("names blob {:?}, not this file's", sidecar.key));
    }
    let meta = std::fs::metadata(data).map_err(|e| format!("data file: {e}"))?;
    if meta.len() != sidecar.size {
        return Err(format!(
            "data file has {} bytes, expected {}",
            meta.len(),
            sidecar.size
        ));
    }
    let mtime = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or(std::time::UNIX_EPOCH);
    Ok((sidecar, present, mtime))
}

impl DiskCache {
    /// Loads the entries a previous run persisted; deletes everything else.
    pub(super) fn load(&self) -> io::Result<()> {
        let mut sidecars = Vec::new();
        let mut data_files = Vec::new();
        for dirent in std::fs::read_dir(&self.dir)? {
            let dirent = dirent?;
            let name = dirent.file_name().to_string_lossy().into_owned();
            let path = dirent.path();
            if name == LOCK_FILE {
                continue;
            }
            if name.contains(TMP_MARKER) {
                remove_quietly(&path);
            } else if let Some(stem) = name.strip_suffix(SIDECAR_SUFFIX) {
                sidecars.push((stem.to_string(), path));
            } else if let Some(stem) = name.strip_suffix(DATA_SUFFIX) {
                data_files.push(stem.to_string());
            } else {
                tracing::warn!(path = %path.display(), "disk cache: ignoring unknown file");
            }
        }
        let mut loaded = Vec::new();
        for (stem, path) in sidecars {
            let data = self.dir.join(format!("{stem}{DATA_SUFFIX}"));
            match check_sidecar(&stem, &path, &data) {
                Ok((sidecar, present, mtime)) => loaded.push((mtime, sidecar, present, stem)),
                Err(why) => {
                    tracing::warn!(
                        sidecar = %path.display(),
                        reason = %why,
                        "disk cache: discarding an entry that cannot be trusted"
                    );
                    self.error();
                    remove_quietly(&path);
                    remove_quietly(&data);
                }
            }
        }
        for stem in data_files {
            if !loaded.iter().any(|(_, _, _, s)| *s == stem) {
                tracing::debug!(stem, "disk cache: deleting a data file without a sidecar");
                remove_quietly(&self.dir.join(format!("{stem}{DATA_SUFFIX}")));
            }
        }
        loaded.sort_by_key(|(mtime, ..)| *mtime);
        let mut index = lock(&self.index);
        for (_, sidecar, present, stem) in loaded {
            index.tick += 1;
            let bytes = present.total();
            let entry = Arc::new(BlobEntry {
                key: sidecar.key.clone(),
                stem,
                size: sidecar.size,
                io: Mutex::new(()),
                persist: Mutex::new(()),
                state: Mutex::new(BlobState {
                    present,
                    ..BlobState::default()
                }),
            });
            index.total += bytes;
            let tick = index.tick;
            index.slots.insert(
                sidecar.key,
                Slot {
                    entry,
                    present: bytes,
                    reserved: 0,
                    last_used: tick,
                },
            );
        }
        // The budget may have shrunk since.
        let _ = self.make_room(&mut index, None, 0);
        tracing::debug!(
            dir = %self.dir.display(),
            blobs = index.slots.len(),
            bytes = index.total,
            "disk cache opened"
        );
        Ok(())
    }

    /// Persists `entry`'s sidecar soon, on a blocking thread (now, without a runtime).
    pub(super) fn schedule_persist(self: &Arc<Self>, entry: &Arc<BlobEntry>) {
        {
            let mut state = lock(&entry.state);
            if state.persist_scheduled || !state.dirty {
                return;
            }
            state.persist_scheduled = true;
        }
        let cache = self.clone();
        let entry = entry.clone();
        let run = move || loop {
            let result = cache.persist(&entry);
            let mut state = lock(&entry.state);
            if result.is_err() || !state.dirty {
                state.persist_scheduled = false;
                break;
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn_blocking(run);
            }
            Err(_) => run(),
        }
    }

    /// Writes `entry`'s sidecar if it is dirty: data flushed first, then the sidecar
    /// written aside and renamed into place (blocking).
    pub(super) fn persist(&self, entry: &BlobEntry) -> io::Result<()> {
        let _persist = lock(&entry.persist);
        let (epoch, present, file) = {
            let mut state = lock(&entry.state);
            if !state.dirty {
                return Ok(());
            }
            state.dirty = false;
            (state.epoch, state.present.clone(), state.file.clone())
        };
        let sidecar = self.sidecar_path(entry);
        let tmp = self.dir.join(format!(
            "{}{SIDECAR_SUFFIX}{TMP_MARKER}{}",
            entry.stem,
            self.tmp_seq.fetch_add(1, Ordering::Relaxed)
        ));
        let result = (|| -> io::Result<()> {
            match file {
                Some(file) => file.sync_data()?,
                None if !present.is_empty() => File::open(self.data_path(entry))?.sync_data()?,
                None => {}
            }
            let text = Sidecar {
                version: SIDECAR_VERSION,
                key: entry.key.clone(),
                size: entry.size,
                ranges: present.0.iter().map(|r| (r.start, r.end)).collect(),
            }
            .encode();
            let mut out = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            out.write_all(&text)?;
            out.sync_all()?;
            drop(out);
            {
                let _io = lock(&entry.io);
                if lock(&entry.state).epoch != epoch {
                    // Evicted or replaced meanwhile: this record describes nothing.
                    remove_quietly(&tmp);
                    return Ok(());
                }
                std::fs::rename(&tmp, &sidecar)?;
            }
            // Durability of the rename only; losing it loses recent entries, no more.
            File::open(&self.dir)?.sync_all()
        })();
        if let Err(err) = &result {
            remove_quietly(&tmp);
            let mut state = lock(&entry.state);
            if state.epoch == epoch {
                state.dirty = true;
            }
            drop(state);
            tracing::warn!(
                blob = %entry.key,
                error = %err,
                "disk cache: persisting the range record failed (will retry on the next store)"
            );
            self.error();
        }
        result
    }
}
