//! Chain IDs: the names containerd gives the committed snapshot of each layer.
//!
//! `chainID(0) = diffID(0)`, `chainID(n) = sha256(chainID(n-1) + " " + diffID(n))`, as in
//! the OCI image spec (`identity.ChainID` in containerd).

use sha2::{Digest as _, Sha256};

/// The chain IDs of layers with the uncompressed digests `diff_ids`, base layer first.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match out.last() {
            None => diff_id.clone(),
            Some(parent) => format!(
                "sha256:{}",
                hex::encode(Sha256::digest(format!("{parent} {diff_id}").as_bytes()))
            ),
        };
        out.push(next);
    }
    out
}

/// The `rootfs.diff_ids` of an image config, checked to be `sha256:` digests.
pub fn config_diff_ids(config: &[u8]) -> Result<Vec<String>, String> {
    let value: serde_json::Value =
        serde_json::from_slice(config).map_err(|e| format!("the image config is not JSON: {e}"))?;
    let ids = value
        .get("rootfs")
        .and_then(|r| r.get("diff_ids"))
        .and_then(|d| d.as_array())
        .ok_or("the image config has no rootfs.diff_ids")?;
    ids.iter()
        .map(|id| {
            let id = id
                .as_str()
                .ok_or("a rootfs.diff_ids entry is not a string")?;
            let hex = id
                .strip_prefix("sha256:")
                .ok_or_else(|| format!("diff ID {id:?} is not a sha256 digest"))?;
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("diff ID {id:?} is not a sha256 digest"));
            }
            Ok(id.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4";
    const B: &str = "sha256:9d26a8fa5a5b3de5f0d7b0e5d7e3ef8f6f1ebb3ef7de9c8c0b7ab3d8d3e8f5a1";

    #[test]
    fn first_chain_id_is_the_diff_id() {
        assert_eq!(chain_ids(&[A.to_string()]), vec![A.to_string()]);
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn later_chain_ids_hash_parent_space_diff_id() {
        let ids = chain_ids(&[A.to_string(), B.to_string(), A.to_string()]);
        let second = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(format!("{A} {B}").as_bytes()))
        );
        assert_eq!(ids[1], second);
        let third = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(format!("{second} {A}").as_bytes()))
        );
        assert_eq!(ids[2], third);
    }

    /// A value computed independently: `printf '%s %s' "$a" "$b" | sha256sum`.
    #[test]
    fn matches_a_known_value() {
        let a = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
        let b = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
        let ids = chain_ids(&[a.to_string(), b.to_string()]);
        assert_eq!(
            ids[1],
            "sha256:f94b891e05f6e37c90d87edfd5bb98a02d618a437c35f3a94b3b00e48e894631"
        );
    }

    #[test]
    fn diff_ids_from_config() {
        let config = format!(r#"{{"rootfs":{{"type":"layers","diff_ids":["{A}","{B}"]}}}}"#);
        assert_eq!(
            config_diff_ids(config.as_bytes()).unwrap(),
            vec![A.to_string(), B.to_string()]
        );
        assert!(config_diff_ids(b"{}")
            .unwrap_err()
            .contains("rootfs.diff_ids"));
        assert!(config_diff_ids(br#"{"rootfs":{"diff_ids":["md5:00"]}}"#)
            .unwrap_err()
            .contains("md5:00"));
        assert!(config_diff_ids(b"not json").is_err());
    }
}
