//! The image security policy: a containers-policy.json (the file CDH's
//! `image_security_policy_uri` names), as far as Veil can honour it.
//!
//! ```json
//! { "default": [{"type": "reject"}],
//!   "transports": { "docker": {
//!       "registry.example/app": [{"type": "insecureAcceptAnything"}],
//!       "registry.example":     [{"type": "reject"}] } } }
//! ```
//!
//! The requirements for an image come from the most specific scope of the `docker`
//! transport that matches it — `host/repo:tag` (or `@digest`), `host/repo`, each
//! namespace prefix `host/ns`, `host`, the wildcard domains `*.example.com` — then the
//! transport's own default (scope `""`), then `default`. All requirements of that list
//! must hold: `insecureAcceptAnything` holds, `reject` never does, and every other
//! requirement (`signedBy`, `sigstoreSigned`, anything unknown) is one Veil cannot check
//! yet, so it refuses the pull saying so — never accepts it. A policy file that cannot
//! be read or parsed refuses every pull.

use std::path::Path;

use serde_json::Value;
use veil_registry::Reference;

/// What the policy says of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Pull it.
    Accept,
    /// Do not: the scope that decided and why.
    Refuse {
        /// The scope (`"default"` for the global default, `""` for the transport's).
        scope: String,
        /// `reject`, or the requirement Veil cannot check.
        reason: String,
    },
}

/// A loaded policy.
#[derive(Debug, Clone)]
pub struct Policy {
    default: Vec<Value>,
    docker: serde_json::Map<String, Value>,
}

impl Policy {
    /// Reads and checks the policy at `path`; `Err` says what is wrong.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read(path).map_err(|e| format!("reading it: {e}"))?;
        Self::parse(&text)
    }

    /// Parses and checks a policy document.
    pub fn parse(text: &[u8]) -> Result<Self, String> {
        let doc: Value = serde_json::from_slice(text).map_err(|e| format!("not JSON: {e}"))?;
        let doc = doc.as_object().ok_or("not a JSON object")?;
        let default = requirements(doc.get("default"), "default")?
            .ok_or("it has no \"default\" requirements")?;
        let docker = match doc.get("transports") {
            None => serde_json::Map::new(),
            Some(t) => {
                let t = t.as_object().ok_or("\"transports\" is not an object")?;
                match t.get("docker") {
                    None => serde_json::Map::new(),
                    Some(d) => d
                        .as_object()
                        .ok_or("\"transports.docker\" is not an object")?
                        .clone(),
                }
            }
        };
        for (scope, reqs) in &docker {
            requirements(Some(reqs), &format!("transports.docker.{scope:?}"))?;
        }
        Ok(Self { default, docker })
    }

    /// What the policy says of `reference`.
    pub fn check(&self, reference: &Reference) -> Verdict {
        let (scope, reqs) = scopes(reference)
            .into_iter()
            .find_map(|s| self.docker.get(&s).map(|r| (s, r)))
            .map(|(s, r)| (s, r.as_array().cloned().unwrap_or_default()))
            .unwrap_or_else(|| ("default".to_string(), self.default.clone()));
        judge(&scope, &reqs)
    }
}

/// A requirements list, checked: an array of objects with a `type`, not empty.
fn requirements(value: Option<&Value>, what: &str) -> Result<Option<Vec<Value>>, String> {
    let Some(value) = value else { return Ok(None) };
    let list = value
        .as_array()
        .ok_or_else(|| format!("{what} is not a list of requirements"))?;
    if list.is_empty() {
        return Err(format!("{what} is an empty list of requirements"));
    }
    for r in list {
        if r.get("type").and_then(Value::as_str).is_none() {
            return Err(format!("{what} has a requirement without a \"type\": {r}"));
        }
    }
    Ok(Some(list.clone()))
}

/// The verdict of requirements `reqs` found at `scope`.
fn judge(scope: &str, reqs: &[Value]) -> Verdict {
    let types: Vec<&str> = reqs
        .iter()
        .filter_map(|r| r.get("type").and_then(Value::as_str))
        .collect();
    let refuse = |reason: String| Verdict::Refuse {
        scope: scope.to_string(),
        reason,
    };
    if types.contains(&"reject") {
        return refuse("the requirement is \"reject\"".into());
    }
    if let Some(other) = types.iter().find(|t| **t != "insecureAcceptAnything") {
        return refuse(format!(
            "it requires {other:?}, which Veil cannot check (only \"insecureAcceptAnything\" \
             and \"reject\" are supported); refused rather than accepted unchecked"
        ));
    }
    Verdict::Accept
}

/// The docker transport scopes that can match `reference`, most specific first
/// (without the transport default `""`, which [`Policy::check`] treats with `default`).
pub fn scopes(reference: &Reference) -> Vec<String> {
    let name = reference.name();
    let mut out = Vec::new();
    if let Some(digest) = reference.digest() {
        out.push(format!("{name}@{digest}"));
    } else if let Some(tag) = reference.tag() {
        out.push(format!("{name}:{tag}"));
    }
    // host/a/b/repo, host/a/b, host/a, host
    let mut prefix = name.as_str();
    out.push(prefix.to_string());
    while let Some((shorter, _)) = prefix.rsplit_once('/') {
        out.push(shorter.to_string());
        prefix = shorter;
    }
    // *.b.c, *.c for host a.b.c (no wildcards for a host with a port).
    let host = reference.registry();
    if !host.contains(':') {
        let mut rest = host;
        while let Some((_, tail)) = rest.split_once('.') {
            out.push(format!("*.{tail}"));
            rest = tail;
        }
    }
    out.push(String::new());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(policy: &str, image: &str) -> Verdict {
        Policy::parse(policy.as_bytes())
            .unwrap()
            .check(&Reference::parse(image).unwrap())
    }

    const MIXED: &str = r#"{
        "default": [{"type": "reject"}],
        "transports": {"docker": {
            "reg.example/team": [{"type": "insecureAcceptAnything"}],
            "reg.example/team/secret": [{"type": "reject"}],
            "reg.example/team/app:signed": [{"type": "sigstoreSigned", "keyPath": "/k"}],
            "*.mirror.example": [{"type": "insecureAcceptAnything"}]
        }}}"#;

    #[test]
    fn the_most_specific_scope_wins() {
        assert_eq!(verdict(MIXED, "reg.example/team/app:v1"), Verdict::Accept);
        let Verdict::Refuse { scope, reason } = verdict(MIXED, "reg.example/team/secret:v1") else {
            panic!("accepted")
        };
        assert_eq!(scope, "reg.example/team/secret");
        assert!(reason.contains("reject"), "{reason}");
        let Verdict::Refuse { scope, reason } = verdict(MIXED, "reg.example/team/app:signed")
        else {
            panic!("accepted")
        };
        assert_eq!(scope, "reg.example/team/app:signed");
        assert!(reason.contains("sigstoreSigned") && reason.contains("cannot check"));
        assert_eq!(verdict(MIXED, "eu.mirror.example/x/y:1"), Verdict::Accept);
        let Verdict::Refuse { scope, .. } = verdict(MIXED, "other.example/x:1") else {
            panic!("accepted")
        };
        assert_eq!(scope, "default");
    }

    #[test]
    fn the_transport_default_comes_before_the_global_default() {
        let p = r#"{"default":[{"type":"insecureAcceptAnything"}],
                    "transports":{"docker":{"":[{"type":"reject"}]}}}"#;
        let Verdict::Refuse { scope, .. } = verdict(p, "127.0.0.1:5000/app:1") else {
            panic!("accepted")
        };
        assert_eq!(scope, "");
    }

    #[test]
    fn unusable_policies_are_errors() {
        for (doc, want) in [
            ("[]", "not a JSON object"),
            ("{}", "no \"default\""),
            (r#"{"default":[]}"#, "empty list"),
            (r#"{"default":[{"keyPath":"x"}]}"#, "without a \"type\""),
            ("{", "not JSON"),
        ] {
            let err = Policy::parse(doc.as_bytes()).unwrap_err();
            assert!(err.contains(want), "{doc}: {err}");
        }
    }

    #[test]
    fn scopes_of_a_docker_hub_image() {
        let s = scopes(&Reference::parse("busybox").unwrap());
        assert_eq!(s[0], "docker.io/library/busybox:latest");
        assert!(s.contains(&"docker.io/library".to_string()));
        assert!(s.contains(&"*.io".to_string()));
    }
}
