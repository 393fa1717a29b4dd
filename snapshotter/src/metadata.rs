//! Persistent snapshot metadata in an embedded transactional store (redb).
//!
//! One table maps a snapshot's key (or, once committed, its name) to its record; a
//! multimap table records parent → children so removal can refuse a snapshot that still
//! has children; a counter hands out the numeric IDs that name snapshot directories.
//! Every change happens in one write transaction: a crash leaves the store as it was
//! before the change or after it, never in between. The caller's filesystem work for a
//! change runs inside that transaction and aborts it on error, so a record never exists
//! without its directory being made first (an orphan directory without a record is what
//! a crash can leave, and [`MetaStore::ids`] lets the owner clean those up).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{
    Database, MultimapTableDefinition, ReadableDatabase, ReadableMultimapTable, ReadableTable,
    TableDefinition,
};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use veil_image::resolver::RemoteLayer;

const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
const CHILDREN: MultimapTableDefinition<&str, &str> = MultimapTableDefinition::new("children");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
const NEXT_ID: &str = "next_id";

/// The three kinds of snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Read-only, made from a committed parent; cannot be committed.
    View,
    /// Writable; can be committed.
    Active,
    /// Immutable; can be a parent.
    Committed,
}

impl Kind {
    /// The name containerd's filters use for this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        }
    }
}

/// Disk usage of a snapshot's own directory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Bytes used on disk.
    pub size: i64,
    /// Number of distinct inodes.
    pub inodes: i64,
}

/// What the store keeps for one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Numeric ID: the snapshot's directory is named after it.
    pub id: u64,
    /// Its kind.
    pub kind: Kind,
    /// Name of the committed parent, or empty.
    pub parent: String,
    /// User labels.
    pub labels: BTreeMap<String, String>,
    /// Creation time, nanoseconds since the Unix epoch.
    pub created_ns: u64,
    /// Last update time, nanoseconds since the Unix epoch.
    pub updated_ns: u64,
    /// Usage recorded at commit (committed snapshots only).
    pub usage: Usage,
    /// For a layer Veil serves lazily: which layer it is, so it can be mounted again.
    #[serde(default)]
    pub remote: Option<RemoteLayer>,
}

impl Record {
    /// Creation time.
    pub fn created(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.created_ns)
    }
    /// Last update time.
    pub fn updated(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.updated_ns)
    }
}

/// Now, in nanoseconds since the Unix epoch.
fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A snapshot made by [`MetaStore::create`]: its record and its ancestors' IDs, nearest
/// first.
#[derive(Debug, Clone)]
pub struct Created {
    /// The new record.
    pub record: Record,
    /// IDs of the parent chain, parent first.
    pub parent_ids: Vec<u64>,
}

/// The metadata store.
pub struct MetaStore {
    db: Database,
}

fn decode(key: &str, bytes: &[u8]) -> Result<Record> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::Store(format!("record of snapshot {key:?} is corrupt: {e}")))
}

fn read_record<T: ReadableTable<&'static str, &'static [u8]>>(
    table: &T,
    key: &str,
) -> Result<Option<Record>> {
    match table.get(key)? {
        Some(v) => Ok(Some(decode(key, v.value())?)),
        None => Ok(None),
    }
}

fn chain<T: ReadableTable<&'static str, &'static [u8]>>(
    table: &T,
    mut parent: String,
) -> Result<Vec<u64>> {
    let mut ids = Vec::new();
    while !parent.is_empty() {
        let rec = read_record(table, &parent)?
            .ok_or_else(|| Error::NotFound(format!("parent snapshot {parent:?}")))?;
        ids.push(rec.id);
        parent = rec.parent;
    }
    Ok(ids)
}

impl MetaStore {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let db = Database::create(path)
            .map_err(|e| Error::Store(format!("opening {}: {e}", path.display())))?;
        let txn = db.begin_write()?;
        txn.open_table(SNAPSHOTS)?;
        txn.open_multimap_table(CHILDREN)?;
        txn.open_table(COUNTERS)?;
        txn.commit()?;
        Ok(Self { db })
    }

    /// The record of `key`.
    pub fn get(&self, key: &str) -> Result<Record> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SNAPSHOTS)?;
        read_record(&table, key)?.ok_or_else(|| Error::NotFound(format!("snapshot {key:?}")))
    }

    /// The record of `key` and the IDs of its parent chain, parent first.
    pub fn get_with_chain(&self, key: &str) -> Result<(Record, Vec<u64>)> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SNAPSHOTS)?;
        let rec = read_record(&table, key)?
            .ok_or_else(|| Error::NotFound(format!("snapshot {key:?}")))?;
        let ids = chain(&table, rec.parent.clone())?;
        Ok((rec, ids))
    }

    /// Every snapshot, by key.
    pub fn list(&self) -> Result<Vec<(String, Record)>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SNAPSHOTS)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (k, v) = item?;
            out.push((k.value().to_string(), decode(k.value(), v.value())?));
        }
        Ok(out)
    }

    /// The IDs of every snapshot in the store.
    pub fn ids(&self) -> Result<HashSet<u64>> {
        Ok(self.list()?.into_iter().map(|(_, r)| r.id).collect())
    }

    /// Creates an active or view snapshot `key` on `parent` (empty for none). `make_dirs`
    /// is given the new ID and the parent chain and must create the snapshot's directory;
    /// if it fails, nothing is recorded.
    pub fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
        make_dirs: impl FnOnce(u64, &[u64]) -> Result<()>,
    ) -> Result<Created> {
        if kind == Kind::Committed {
            return Err(Error::InvalidArgument(
                "only active or view snapshots can be created".into(),
            ));
        }
        self.insert_new(kind, key, parent, labels, None, make_dirs)
    }

    /// Creates the committed snapshot `name` for a lazily served layer. `make_layer` is
    /// given the new ID and parent chain and must create and mount its directory; if it
    /// fails, nothing is recorded.
    pub fn create_remote(
        &self,
        name: &str,
        parent: &str,
        labels: HashMap<String, String>,
        remote: RemoteLayer,
        make_layer: impl FnOnce(u64, &[u64]) -> Result<()>,
    ) -> Result<Created> {
        self.insert_new(
            Kind::Committed,
            name,
            parent,
            labels,
            Some(remote),
            make_layer,
        )
    }

    fn insert_new(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
        remote: Option<RemoteLayer>,
        make_dirs: impl FnOnce(u64, &[u64]) -> Result<()>,
    ) -> Result<Created> {
        if key.is_empty() {
            return Err(Error::InvalidArgument("snapshot key is empty".into()));
        }
        let txn = self.db.begin_write()?;
        let created = {
            let mut table = txn.open_table(SNAPSHOTS)?;
            if read_record(&table, key)?.is_some() {
                return Err(Error::AlreadyExists(format!("snapshot {key:?}")));
            }
            let parent_ids = if parent.is_empty() {
                Vec::new()
            } else {
                let prec = read_record(&table, parent)?
                    .ok_or_else(|| Error::NotFound(format!("parent snapshot {parent:?}")))?;
                if prec.kind != Kind::Committed {
                    return Err(Error::InvalidArgument(format!(
                        "parent {parent:?} is not a committed snapshot"
                    )));
                }
                let mut ids = vec![prec.id];
                ids.extend(chain(&table, prec.parent.clone())?);
                ids
            };
            let mut counters = txn.open_table(COUNTERS)?;
            let id = counters.get(NEXT_ID)?.map(|v| v.value()).unwrap_or(1);
            counters.insert(NEXT_ID, id + 1)?;
            let now = now_ns();
            let record = Record {
                id,
                kind,
                parent: parent.to_string(),
                labels: labels.into_iter().collect(),
                created_ns: now,
                updated_ns: now,
                usage: Usage::default(),
                remote,
            };
            table.insert(key, serde_json::to_vec(&record)?.as_slice())?;
            if !parent.is_empty() {
                txn.open_multimap_table(CHILDREN)?.insert(parent, key)?;
            }
            make_dirs(id, &parent_ids)?;
            Created { record, parent_ids }
        };
        txn.commit()?;
        Ok(created)
    }

    /// Commits the active snapshot `key` as `name` with `labels` (which replace the
    /// active snapshot's labels). `measure` is given the snapshot's ID and returns its
    /// usage. The directory (ID) carries over.
    pub fn commit(
        &self,
        key: &str,
        name: &str,
        labels: HashMap<String, String>,
        measure: impl FnOnce(u64) -> Result<Usage>,
    ) -> Result<Record> {
        if name.is_empty() {
            return Err(Error::InvalidArgument("snapshot name is empty".into()));
        }
        let txn = self.db.begin_write()?;
        let record = {
            let mut table = txn.open_table(SNAPSHOTS)?;
            if read_record(&table, name)?.is_some() {
                return Err(Error::AlreadyExists(format!("committed snapshot {name:?}")));
            }
            let active = read_record(&table, key)?
                .ok_or_else(|| Error::NotFound(format!("active snapshot {key:?}")))?;
            if active.kind != Kind::Active {
                return Err(Error::FailedPrecondition(format!(
                    "snapshot {key:?} is not active"
                )));
            }
            let usage = measure(active.id)?;
            let now = now_ns();
            let record = Record {
                kind: Kind::Committed,
                labels: labels.into_iter().collect(),
                created_ns: now,
                updated_ns: now,
                usage,
                ..active
            };
            table.remove(key)?;
            table.insert(name, serde_json::to_vec(&record)?.as_slice())?;
            let mut children = txn.open_multimap_table(CHILDREN)?;
            if !record.parent.is_empty() {
                children.remove(record.parent.as_str(), key)?;
                children.insert(record.parent.as_str(), name)?;
            }
            record
        };
        txn.commit()?;
        Ok(record)
    }

    /// Removes `key`, refusing while it has children. Returns the removed record.
    pub fn remove(&self, key: &str) -> Result<Record> {
        let txn = self.db.begin_write()?;
        let record = {
            let mut table = txn.open_table(SNAPSHOTS)?;
            let rec = read_record(&table, key)?
                .ok_or_else(|| Error::NotFound(format!("snapshot {key:?}")))?;
            let mut children = txn.open_multimap_table(CHILDREN)?;
            if children.get(key)?.next().is_some() {
                return Err(Error::FailedPrecondition(format!(
                    "cannot remove snapshot {key:?}: it has children"
                )));
            }
            if !rec.parent.is_empty() {
                children.remove(rec.parent.as_str(), key)?;
            }
            table.remove(key)?;
            rec
        };
        txn.commit()?;
        Ok(record)
    }

    /// Updates the labels of `key` as containerd does: with no field paths the labels are
    /// replaced; `labels` replaces them too; `labels.K` sets (or, given an empty or
    /// missing value, removes) one label. Any other path is an invalid argument.
    pub fn update_labels(
        &self,
        key: &str,
        labels: &HashMap<String, String>,
        fieldpaths: &[String],
    ) -> Result<Record> {
        let txn = self.db.begin_write()?;
        let record = {
            let mut table = txn.open_table(SNAPSHOTS)?;
            let mut rec = read_record(&table, key)?
                .ok_or_else(|| Error::NotFound(format!("snapshot {key:?}")))?;
            let mut new = rec.labels.clone();
            if fieldpaths.is_empty() {
                new = labels.clone().into_iter().collect();
            }
            for path in fieldpaths {
                if let Some(label) = path.strip_prefix("labels.") {
                    match labels.get(label) {
                        Some(v) if !v.is_empty() => {
                            new.insert(label.to_string(), v.clone());
                        }
                        _ => {
                            new.remove(label);
                        }
                    }
                } else if path == "labels" {
                    new = labels.clone().into_iter().collect();
                } else {
                    return Err(Error::InvalidArgument(format!(
                        "cannot update field {path:?} of snapshot {key:?}"
                    )));
                }
            }
            new.retain(|_, v| !v.is_empty());
            rec.labels = new;
            rec.updated_ns = now_ns();
            table.insert(key, serde_json::to_vec(&rec)?.as_slice())?;
            rec
        };
        txn.commit()?;
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, MetaStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = MetaStore::open(&dir.path().join("meta.redb")).unwrap();
        (dir, s)
    }

    fn ok(_: u64, _: &[u64]) -> Result<()> {
        Ok(())
    }

    #[test]
    fn chain_and_children_are_kept() {
        let (_d, s) = store();
        s.create(Kind::Active, "a", "", HashMap::new(), ok).unwrap();
        let c = s
            .commit("a", "base", HashMap::new(), |_| Ok(Usage::default()))
            .unwrap();
        let made = s
            .create(Kind::View, "v", "base", HashMap::new(), ok)
            .unwrap();
        assert_eq!(made.parent_ids, vec![c.id]);
        assert!(matches!(
            s.remove("base"),
            Err(Error::FailedPrecondition(_))
        ));
        s.remove("v").unwrap();
        s.remove("base").unwrap();
        assert!(s.list().unwrap().is_empty());
    }

    #[test]
    fn failed_directory_creation_records_nothing() {
        let (_d, s) = store();
        let err = s.create(Kind::Active, "a", "", HashMap::new(), |_, _| {
            Err(Error::Store("disk full".into()))
        });
        assert!(err.is_err());
        assert!(matches!(s.get("a"), Err(Error::NotFound(_))));
        // The ID counter did not move either: the whole transaction was dropped.
        let made = s.create(Kind::Active, "a", "", HashMap::new(), ok).unwrap();
        assert_eq!(made.record.id, 1);
    }

    #[test]
    fn records_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        {
            let s = MetaStore::open(&path).unwrap();
            let labels = HashMap::from([("l".to_string(), "1".to_string())]);
            s.create(Kind::Active, "a", "", labels, ok).unwrap();
        }
        let s = MetaStore::open(&path).unwrap();
        assert_eq!(s.get("a").unwrap().labels["l"], "1");
    }

    #[test]
    fn update_follows_field_paths() {
        let (_d, s) = store();
        let start = HashMap::from([
            ("a".to_string(), "1".to_string()),
            ("b".to_string(), "2".to_string()),
        ]);
        s.create(Kind::Active, "k", "", start, ok).unwrap();
        let upd = HashMap::from([
            ("a".to_string(), "x".to_string()),
            ("c".to_string(), "3".to_string()),
        ]);
        let r = s
            .update_labels("k", &upd, &["labels.a".into(), "labels.b".into()])
            .unwrap();
        assert_eq!(
            r.labels,
            BTreeMap::from([("a".to_string(), "x".to_string())])
        );
        assert!(matches!(
            s.update_labels("k", &upd, &["parent".into()]),
            Err(Error::InvalidArgument(_))
        ));
    }
}
