//! Image references in docker's syntax: `[host[:port]/]repo/path[:tag][@digest]`.
//!
//! Normalization follows docker: a first path component that has no `.` or `:` and is not
//! `localhost` is part of the repository on `docker.io`; single-component repositories on
//! Docker Hub get the `library/` prefix; `index.docker.io` means `docker.io`; a reference
//! with neither tag nor digest means tag `latest`. The API host of `docker.io`
//! (`registry-1.docker.io`) is chosen by [`super::hosts`], not here.

use std::fmt;
use std::str::FromStr;

use super::digest::Digest;

/// The registry name docker uses for Docker Hub.
pub const DOCKER_HUB: &str = "docker.io";
/// The tag meant when a reference names neither tag nor digest.
pub const DEFAULT_TAG: &str = "latest";
const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

/// A parsed, normalized image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

/// A string that is not a valid image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {reference:?}: {reason}")]
pub struct ReferenceError {
    /// The text that was given.
    pub reference: String,
    /// What is wrong with it.
    pub reason: String,
}

impl Reference {
    /// Parses and normalizes a reference such as `busybox`, `127.0.0.1:5000/app:v1` or
    /// `ghcr.io/org/app@sha256:...`.
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        let fail = |reason: String| ReferenceError {
            reference: input.to_string(),
            reason,
        };
        if input.is_empty() {
            return Err(fail("empty reference".into()));
        }
        if input.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(fail("contains whitespace or control characters".into()));
        }
        let (name_and_tag, digest) = match input.split_once('@') {
            Some((name, digest)) => {
                let digest = Digest::parse(digest).map_err(|e| fail(e.to_string()))?;
                (name, Some(digest))
            }
            None => (input, None),
        };
        let last_slash = name_and_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_and_tag[last_slash..].rfind(':') {
            Some(i) => {
                let at = last_slash + i;
                (&name_and_tag[..at], Some(&name_and_tag[at + 1..]))
            }
            None => (name_and_tag, None),
        };
        if let Some(tag) = tag {
            validate_tag(tag).map_err(fail)?;
        }
        let (registry, repository) = split_domain(name);
        validate_domain(&registry).map_err(fail)?;
        validate_repository(&repository).map_err(fail)?;
        if registry.len() + 1 + repository.len() > MAX_NAME_LEN {
            return Err(fail(format!("name longer than {MAX_NAME_LEN} characters")));
        }
        let tag = match (tag, &digest) {
            (Some(tag), _) => Some(tag.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_TAG.to_string()),
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The registry host (with port when given), e.g. `docker.io` or `127.0.0.1:5000`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path inside the registry, e.g. `library/busybox`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, when the reference has one.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, when the reference has one.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The same repository pinned to `digest` (the tag is kept for display).
    pub fn with_digest(&self, digest: Digest) -> Self {
        Reference {
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// What to ask the manifests endpoint for: the digest when there is one, else the tag.
    pub fn object(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => digest.to_string(),
            (None, Some(tag)) => tag.clone(),
            (None, None) => DEFAULT_TAG.to_string(),
        }
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

/// Splits `name` into (registry, repository) the way docker does.
fn split_domain(name: &str) -> (String, String) {
    let (mut domain, mut rest) = match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':', '['])
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            (first.to_string(), rest.to_string())
        }
        _ => (DOCKER_HUB.to_string(), name.to_string()),
    };
    if domain == "index.docker.io" {
        domain = DOCKER_HUB.to_string();
    }
    if domain == DOCKER_HUB && !rest.contains('/') {
        rest = format!("library/{rest}");
    }
    (domain, rest)
}

fn validate_tag(tag: &str) -> Result<(), String> {
    let ok_first = tag
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    let ok_rest = tag
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if tag.is_empty() || tag.len() > MAX_TAG_LEN || !ok_first || !ok_rest {
        return Err(format!(
            "invalid tag {tag:?} (1 to {MAX_TAG_LEN} of [A-Za-z0-9_.-], not starting with . or -)"
        ));
    }
    Ok(())
}

fn validate_domain(domain: &str) -> Result<(), String> {
    let bad = || Err(format!("invalid registry host {domain:?}"));
    let (host, port) = if let Some(rest) = domain.strip_prefix('[') {
        // IPv6 literal: [addr]:port
        let Some((addr, after)) = rest.split_once(']') else {
            return bad();
        };
        if addr.is_empty() || !addr.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
            return bad();
        }
        match after.strip_prefix(':') {
            Some(port) => (None, Some(port)),
            None if after.is_empty() => (None, None),
            None => return bad(),
        }
    } else {
        match domain.rsplit_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(domain), None),
        }
    };
    if let Some(port) = port {
        if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
            return bad();
        }
    }
    if let Some(host) = host {
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-')
                && !c.starts_with('-')
                && !c.ends_with('-')
        };
        if !host.split('.').all(component_ok) {
            return bad();
        }
    }
    Ok(())
}

fn validate_repository(repository: &str) -> Result<(), String> {
    if repository.is_empty() {
        return Err("empty repository name".into());
    }
    for component in repository.split('/') {
        if !path_component_ok(component) {
            return Err(format!(
                "invalid repository path component {component:?} in {repository:?} \
                 (lowercase letters and digits, separated by '.', '_', '__' or dashes)"
            ));
        }
    }
    Ok(())
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn path_component_ok(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut i = 0;
    let mut expect_alnum = true;
    if bytes.is_empty() {
        return false;
    }
    while i < bytes.len() {
        if alnum(bytes[i]) {
            while i < bytes.len() && alnum(bytes[i]) {
                i += 1;
            }
            expect_alnum = false;
            continue;
        }
        if expect_alnum {
            return false;
        }
        let start = i;
        match bytes[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < bytes.len() && bytes[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < bytes.len() && bytes[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || i >= bytes.len() || !alnum(bytes[i]) {
            return false;
        }
        expect_alnum = true;
    }
    !expect_alnum
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn parts(s: &str) -> (String, String, Option<String>, Option<String>) {
        let r = Reference::parse(s).unwrap();
        (
            r.registry().into(),
            r.repository().into(),
            r.tag().map(Into::into),
            r.digest().map(ToString::to_string),
        )
    }

    #[test]
    fn docker_hub_defaults() {
        assert_eq!(
            parts("busybox"),
            (
                "docker.io".into(),
                "library/busybox".into(),
                Some("latest".into()),
                None
            )
        );
        assert_eq!(
            parts("org/app:1.2"),
            (
                "docker.io".into(),
                "org/app".into(),
                Some("1.2".into()),
                None
            )
        );
        assert_eq!(parts("index.docker.io/busybox:1").1, "library/busybox");
        assert_eq!(
            Reference::parse("busybox").unwrap().to_string(),
            "docker.io/library/busybox:latest"
        );
    }

    #[test]
    fn hosts_ports_tags_digests() {
        assert_eq!(
            parts("127.0.0.1:5000/a/b:v1"),
            (
                "127.0.0.1:5000".into(),
                "a/b".into(),
                Some("v1".into()),
                None
            )
        );
        assert_eq!(parts("localhost/app").0, "localhost");
        assert_eq!(parts("localhost:5000/app").2, Some("latest".into()));
        let (reg, repo, tag, digest) = parts(&format!("ghcr.io/org/app@{D}"));
        assert_eq!(
            (reg.as_str(), repo.as_str(), tag),
            ("ghcr.io", "org/app", None)
        );
        assert_eq!(digest.as_deref(), Some(D));
        let r = Reference::parse(&format!("reg.example:443/x:t@{D}")).unwrap();
        assert_eq!(r.object(), D);
        assert_eq!(r.to_string(), format!("reg.example:443/x:t@{D}"));
        assert_eq!(parts("[::1]:5000/app").0, "[::1]:5000");
        assert_eq!(parts("a__b/c-d--e.f_g:t").1, "a__b/c-d--e.f_g");
    }

    #[test]
    fn rejects_bad_references() {
        for bad in [
            "",
            "UPPER",
            "docker.io/App",
            "app:",
            "app:-tag",
            "app:tag/x",
            "a//b",
            "a/b/",
            "/a",
            "a..b",
            "a___b",
            "a-",
            "a b",
            "host:99999999/app",
            "ho_st.io/app",
            "app@sha256:abc",
            "app@md5:abc",
            "-host.io/app",
        ] {
            let err = Reference::parse(bad);
            assert!(err.is_err(), "{bad:?} accepted as {err:?}");
        }
        let err = Reference::parse("docker.io/App").unwrap_err();
        assert!(err.to_string().contains("\"App\""), "{err}");
    }

    #[test]
    fn rejects_overlong_tags_and_names() {
        assert!(Reference::parse(&format!("app:{}", "t".repeat(129))).is_err());
        assert!(Reference::parse(&format!("app:{}", "t".repeat(128))).is_ok());
        assert!(Reference::parse(&format!("h.io/{}", "a".repeat(260))).is_err());
    }
}
