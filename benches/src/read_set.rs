//! A workload's own read set, measured: what the container really opened and read, from
//! Veil's access accounting (`veil status --access-order all --json`) after an unshaped
//! warm-up run of the workload on the unencrypted eStargz image. The physical limit of
//! every mode is drawn from it (its compressed bytes over the bandwidth, plus two RTTs),
//! so a custom `--workload` gets its own limit line rather than the default workload's.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Serialize;
use veil_tests::process::run_with_timeout;

/// How long `veil status --access-order` may take.
const STATUS_TIMEOUT: Duration = Duration::from_secs(30);

/// The files a workload read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReadSet {
    /// Where the numbers come from: `measured` (Veil's access accounting) or `static`
    /// (the sample's own list).
    pub source: String,
    /// Absolute paths, first touch first, each once.
    pub paths: Vec<String>,
    /// Their bytes, uncompressed.
    pub bytes: u64,
    /// The bytes of the layer blobs their chunks lie in.
    pub compressed_bytes: u64,
}

impl ReadSet {
    /// The read set of the access orders `veil status --access-order all --json`
    /// printed (a JSON list, one entry per layer): files merged across layers in first
    /// touch order, a path counted once (the first layer it was read from).
    pub fn from_access_orders(orders: &serde_json::Value) -> anyhow::Result<Self> {
        let layers = orders
            .as_array()
            .context("the access order is not a JSON list")?;
        let mut files: Vec<(u64, String, u64, u64)> = Vec::new();
        for layer in layers {
            let Some(list) = layer["files"].as_array() else {
                bail!("an access order without files: {layer}");
            };
            for f in list {
                let path = f["path"].as_str().context("a file without a path")?;
                files.push((
                    f["sequence"].as_u64().unwrap_or(u64::MAX),
                    format!("/{}", path.trim_start_matches('/')),
                    f["size"].as_u64().unwrap_or(0),
                    f["compressed_bytes"].as_u64().unwrap_or(0),
                ));
            }
        }
        files.sort_by_key(|f| f.0);
        let mut seen = std::collections::HashSet::new();
        let mut set = ReadSet {
            source: "measured".into(),
            ..ReadSet::default()
        };
        for (_, path, size, compressed) in files {
            if seen.insert(path.clone()) {
                set.bytes += size;
                set.compressed_bytes += compressed;
                set.paths.push(path);
            }
        }
        Ok(set)
    }

    /// The set as a prefetch list (`veil convert --prefetch-list`).
    pub fn prefetch_list(&self) -> String {
        let mut s = format!("# the files the workload read ({})\n", self.source);
        for p in &self.paths {
            s.push_str(p);
            s.push('\n');
        }
        s
    }
}

/// Asks the daemon whose status socket is `socket` for the access order of every
/// layer, with `veil` (output kept as `log`).
pub fn access_orders(veil: &Path, socket: &Path, log: &Path) -> anyhow::Result<serde_json::Value> {
    let mut cmd = Command::new(veil);
    cmd.arg("status")
        .arg("--address")
        .arg(socket)
        .args(["--access-order", "all", "--json"]);
    let out = run_with_timeout(cmd, STATUS_TIMEOUT, log)?;
    if !out.status.success() {
        bail!(
            "veil status --access-order failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).context("veil status --access-order printed no JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_merge_in_first_touch_order_and_count_each_path_once() {
        let orders = serde_json::json!([
            {"digest": "sha256:a", "files": [
                {"path": "usr/bin/python3", "size": 100, "compressed_bytes": 40, "sequence": 1},
                {"path": "usr/lib/python3/json/__init__.py", "size": 10, "compressed_bytes": 8, "sequence": 4}
            ]},
            {"digest": "sha256:b", "files": [
                {"path": "app/main.py", "size": 20, "compressed_bytes": 12, "sequence": 2},
                {"path": "usr/bin/python3", "size": 100, "compressed_bytes": 40, "sequence": 3}
            ]}
        ]);
        let set = ReadSet::from_access_orders(&orders).unwrap();
        assert_eq!(
            set.paths,
            [
                "/usr/bin/python3",
                "/app/main.py",
                "/usr/lib/python3/json/__init__.py"
            ]
        );
        assert_eq!((set.bytes, set.compressed_bytes), (130, 60));
        assert!(set
            .prefetch_list()
            .ends_with("/usr/lib/python3/json/__init__.py\n"));
    }

    #[test]
    fn an_answer_that_is_not_an_access_order_is_an_error() {
        assert!(ReadSet::from_access_orders(&serde_json::json!({"error": "root only"})).is_err());
        assert!(ReadSet::from_access_orders(&serde_json::json!([{"digest": "x"}])).is_err());
        assert_eq!(
            ReadSet::from_access_orders(&serde_json::json!([]))
                .unwrap()
                .paths
                .len(),
            0
        );
    }
}
