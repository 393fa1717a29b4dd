//! The `[image]` keys Veil takes from the Confidential Data Hub's own config file
//! (`cdh.toml`): in a peer-pod VM the measured initdata delivers only that file, so the
//! image security policy and the registry credentials are named there.
//!
//! Read: `image_security_policy_uri` (containers-policy.json) and
//! `authenticated_registry_credentials_uri` (docker `config.json`). Each is a
//! `file:///path`, a plain path, or a `kbs://…` resource URI (fetched through CDH's
//! `GetResource` by the wiring); any other scheme is an error naming the key. An empty
//! value is unset (as in CDH). Other `[image]` keys Veil does not apply
//! (`registry_config`, `image_pull_proxy`, `extra_root_certificates`, …) are listed so
//! the daemon can warn about them. Everything outside `[image]` is CDH's business.

use std::path::{Path, PathBuf};

/// CDH's key naming the image security policy.
pub const POLICY_KEY: &str = "image_security_policy_uri";
/// CDH's key naming the registry credentials.
pub const CREDENTIALS_KEY: &str = "authenticated_registry_credentials_uri";

/// Where a resource named in `cdh.toml` is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceLocation {
    /// A file in the guest.
    File(PathBuf),
    /// A KBS resource, fetched through CDH (`kbs:///repo/type/tag`).
    Kbs(String),
}

/// The `[image]` keys of a `cdh.toml` that Veil uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CdhImageConfig {
    /// `image_security_policy_uri`.
    pub policy: Option<ResourceLocation>,
    /// `authenticated_registry_credentials_uri`.
    pub credentials: Option<ResourceLocation>,
    /// Other `[image]` keys that are set but Veil does not apply.
    pub not_applied: Vec<String>,
}

/// Why a `cdh.toml` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CdhTomlError {
    /// The file could not be read.
    #[error("reading CDH's config {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, or a key of the wrong type.
    #[error("CDH's config {}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A URI Veil cannot follow.
    #[error("CDH's config {}: [image] {key} = {value:?}: {reason}", path.display())]
    Uri {
        /// The file.
        path: PathBuf,
        /// The key.
        key: &'static str,
        /// Its value.
        value: String,
        /// Why it cannot be used.
        reason: String,
    },
}

impl CdhImageConfig {
    /// Reads the `[image]` keys of the `cdh.toml` at `path`.
    pub fn load(path: &Path) -> Result<Self, CdhTomlError> {
        let text = std::fs::read_to_string(path).map_err(|source| CdhTomlError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses the text of a `cdh.toml`; `path` is only used in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, CdhTomlError> {
        let value: toml::Table = toml::from_str(text).map_err(|e| CdhTomlError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let Some(image) = value.get("image") else {
            return Ok(Self::default());
        };
        let image = image.as_table().ok_or_else(|| CdhTomlError::Parse {
            path: path.to_path_buf(),
            message: "[image] is not a table".into(),
        })?;
        let mut config = Self::default();
        for (key, value) in image {
            let slot = match key.as_str() {
                POLICY_KEY => &mut config.policy,
                CREDENTIALS_KEY => &mut config.credentials,
                _ => {
                    config.not_applied.push(key.clone());
                    continue;
                }
            };
            let key: &'static str = if key == POLICY_KEY {
                POLICY_KEY
            } else {
                CREDENTIALS_KEY
            };
            let text = value.as_str().ok_or_else(|| CdhTomlError::Uri {
                path: path.to_path_buf(),
                key,
                value: value.to_string(),
                reason: "not a string".into(),
            })?;
            *slot = location(text).map_err(|reason| CdhTomlError::Uri {
                path: path.to_path_buf(),
                key,
                value: text.to_string(),
                reason,
            })?;
        }
        Ok(config)
    }
}

/// A `cdh.toml` URI: `file:///path`, a plain path, `kbs://…`; empty is unset.
fn location(text: &str) -> Result<Option<ResourceLocation>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    if let Some(rest) = text.strip_prefix("file://") {
        if !rest.starts_with('/') {
            return Err("a file:// URI needs an absolute path (file:///etc/policy.json)".into());
        }
        return Ok(Some(ResourceLocation::File(PathBuf::from(rest))));
    }
    if text.starts_with("kbs://") {
        return Ok(Some(ResourceLocation::Kbs(text.to_string())));
    }
    if let Some((scheme, _)) = text.split_once("://") {
        return Err(format!(
            "Veil follows file:// and kbs:// URIs and plain paths, not {scheme}://"
        ));
    }
    if !text.starts_with('/') {
        return Err("a plain path must be absolute".into());
    }
    Ok(Some(ResourceLocation::File(PathBuf::from(text))))
}

/// CDH's config text `original` (none: CDH's defaults) with its `socket` key set to
/// `upstream` (`unix://` + the path): the config the drop-in starts the real CDH with, so
/// it listens where Veil forwards to. Everything else is kept (comments are not).
pub fn with_upstream_socket(
    original: Option<&str>,
    upstream: &Path,
    path: &Path,
) -> Result<String, CdhTomlError> {
    let mut table: toml::Table = match original {
        Some(text) => toml::from_str(text).map_err(|e| CdhTomlError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?,
        None => toml::Table::new(),
    };
    table.insert(
        "socket".into(),
        toml::Value::String(format!("unix://{}", upstream.display())),
    );
    toml::to_string(&table).map_err(|e| CdhTomlError::Parse {
        path: path.to_path_buf(),
        message: format!("writing it back: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upstream_config_moves_only_the_socket() {
        let text = "socket = 'unix:///run/confidential-containers/cdh.sock'\ncredentials = []\n\
                    [kbc]\nname = \"cc_kbc\"\nurl = \"https://kbs\"\n\
                    [image]\nimage_security_policy_uri = \"kbs:///default/security-policy/x\"\n";
        let out = with_upstream_socket(Some(text), Path::new("/run/cdh-up.sock"), Path::new("x"))
            .unwrap();
        let table: toml::Table = toml::from_str(&out).unwrap();
        assert_eq!(table["socket"].as_str(), Some("unix:///run/cdh-up.sock"));
        assert_eq!(table["kbc"]["url"].as_str(), Some("https://kbs"));
        assert_eq!(
            table["image"]["image_security_policy_uri"].as_str(),
            Some("kbs:///default/security-policy/x")
        );
        let out = with_upstream_socket(None, Path::new("/u.sock"), Path::new("x")).unwrap();
        assert_eq!(out.trim(), "socket = \"unix:///u.sock\"");
    }

    #[test]
    fn the_image_keys_are_read() {
        let c = CdhImageConfig::parse(
            "socket = \"unix:///run/confidential-containers/cdh.sock\"\n\
             [kbc]\nname = \"cc_kbc\"\nurl = \"http://kbs:8080\"\n\
             [image]\nimage_security_policy_uri = \"file:///run/peerpod/policy.json\"\n\
             authenticated_registry_credentials_uri = \"kbs:///default/credential/test\"\n\
             image_pull_proxy = \"\"\n",
            Path::new("cdh.toml"),
        )
        .unwrap();
        assert_eq!(
            c.policy,
            Some(ResourceLocation::File("/run/peerpod/policy.json".into()))
        );
        assert_eq!(
            c.credentials,
            Some(ResourceLocation::Kbs(
                "kbs:///default/credential/test".into()
            ))
        );
        assert_eq!(c.not_applied, ["image_pull_proxy"]);
        let c = CdhImageConfig::parse(
            "[image]\nimage_security_policy_uri = \"/etc/policy.json\"\n\
             authenticated_registry_credentials_uri = \"\"\n",
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(
            c.policy,
            Some(ResourceLocation::File("/etc/policy.json".into()))
        );
        assert_eq!(c.credentials, None);
        assert_eq!(
            CdhImageConfig::parse("", Path::new("x")).unwrap(),
            CdhImageConfig::default()
        );
    }

    #[test]
    fn other_schemes_are_errors_naming_the_key() {
        for (value, want) in [
            ("https://example.com/p.json", "not https://"),
            ("file://relative/p.json", "absolute"),
            ("policy.json", "absolute"),
        ] {
            let e = CdhImageConfig::parse(
                &format!("[image]\nimage_security_policy_uri = \"{value}\"\n"),
                Path::new("/run/peerpod/cdh.toml"),
            )
            .unwrap_err()
            .to_string();
            assert!(
                e.contains(want) && e.contains(POLICY_KEY) && e.contains("/run/peerpod/cdh.toml"),
                "{value}: {e}"
            );
        }
    }
}
