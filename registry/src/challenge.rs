//! Parsing `WWW-Authenticate` headers (RFC 9110 section 11.6.1), which registries send
//! with a 401: `Bearer realm="https://auth.example/token",service="reg",scope="..."` or
//! `Basic realm="Registry"`. One header may carry several comma-separated challenges.

use std::collections::BTreeMap;

/// One authentication challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The scheme, lowercased (`bearer`, `basic`).
    pub scheme: String,
    /// The parameters, names lowercased (`realm`, `service`, `scope`, `error`).
    pub params: BTreeMap<String, String>,
}

impl Challenge {
    /// The value of parameter `name` (lowercase).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }
}

/// A header value that is not a list of challenges.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed WWW-Authenticate header {header:?}: {reason}")]
pub struct ChallengeError {
    /// The header value.
    pub header: String,
    /// What is wrong.
    pub reason: String,
}

/// Parses one `WWW-Authenticate` header value into its challenges.
pub fn parse_www_authenticate(header: &str) -> Result<Vec<Challenge>, ChallengeError> {
    let fail = |reason: String| ChallengeError {
        header: header.to_string(),
        reason,
    };
    let mut cursor = Cursor {
        bytes: header.as_bytes(),
        pos: 0,
    };
    let mut challenges = Vec::new();
    loop {
        cursor.skip(|b| b == b' ' || b == b'\t' || b == b',');
        if cursor.at_end() {
            break;
        }
        let scheme = cursor.token();
        if scheme.is_empty() {
            return Err(fail(format!(
                "expected an auth scheme at byte {}",
                cursor.pos
            )));
        }
        let mut challenge = Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params: BTreeMap::new(),
        };
        loop {
            cursor.skip(|b| b == b' ' || b == b'\t');
            if cursor.at_end() {
                break;
            }
            if cursor.peek() == Some(b',') {
                cursor.pos += 1;
                continue;
            }
            let start = cursor.pos;
            let name = cursor.token();
            if name.is_empty() {
                return Err(fail(format!("unexpected character at byte {}", cursor.pos)));
            }
            cursor.skip(|b| b == b' ' || b == b'\t');
            if cursor.peek() != Some(b'=') {
                // Not `name=value`: the start of the next challenge.
                cursor.pos = start;
                break;
            }
            cursor.pos += 1;
            cursor.skip(|b| b == b' ' || b == b'\t');
            let value = if cursor.peek() == Some(b'"') {
                cursor.quoted().map_err(fail)?
            } else {
                cursor.token68().to_string()
            };
            challenge.params.insert(name.to_ascii_lowercase(), value);
        }
        challenges.push(challenge);
    }
    Ok(challenges)
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn at_end(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip(&mut self, what: impl Fn(u8) -> bool) {
        while self.peek().is_some_and(&what) {
            self.pos += 1;
        }
    }

    fn take_while(&mut self, what: impl Fn(u8) -> bool) -> &'a str {
        let start = self.pos;
        self.skip(what);
        // Only ASCII bytes are taken, so this is always valid UTF-8.
        std::str::from_utf8(&self.bytes[start..self.pos]).unwrap_or_default()
    }

    /// RFC 9110 `token`.
    fn token(&mut self) -> &'a str {
        self.take_while(is_tchar)
    }

    /// A bare parameter value: a token, also allowing `/` and `=` (token68-like).
    fn token68(&mut self) -> &'a str {
        self.take_while(|b| is_tchar(b) || b == b'/' || b == b'=' || b == b':')
    }

    /// A quoted string starting at the current `"`, with `\` escapes.
    fn quoted(&mut self) -> Result<String, String> {
        let open = self.pos;
        self.pos += 1;
        let mut out = Vec::new();
        while let Some(b) = self.peek() {
            self.pos += 1;
            match b {
                b'"' => return Ok(String::from_utf8_lossy(&out).into_owned()),
                b'\\' => match self.peek() {
                    Some(escaped) => {
                        out.push(escaped);
                        self.pos += 1;
                    }
                    None => break,
                },
                _ => out.push(b),
            }
        }
        Err(format!(
            "unterminated quoted string starting at byte {open}"
        ))
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenge() {
        let c = parse_www_authenticate(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#,
        )
        .unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c[0].param("service"), Some("registry.docker.io"));
        assert_eq!(c[0].param("scope"), Some("repository:library/nginx:pull"));
    }

    #[test]
    fn several_challenges_spaces_escapes_and_tokens() {
        let c = parse_www_authenticate(
            r#"Basic realm="Registry \"Realm\"" , BEARER Realm = "http://127.0.0.1:1/t", service=reg.example,error="insufficient_scope", scope="repository:a:pull repository:b:pull""#,
        )
        .unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].scheme, "basic");
        assert_eq!(c[0].param("realm"), Some(r#"Registry "Realm""#));
        assert_eq!(c[1].scheme, "bearer");
        assert_eq!(c[1].param("realm"), Some("http://127.0.0.1:1/t"));
        assert_eq!(c[1].param("service"), Some("reg.example"));
        assert_eq!(c[1].param("error"), Some("insufficient_scope"));
        assert_eq!(
            c[1].param("scope"),
            Some("repository:a:pull repository:b:pull")
        );
        let bare = parse_www_authenticate("Basic").unwrap();
        assert_eq!(bare[0].scheme, "basic");
        assert!(bare[0].params.is_empty());
        assert!(parse_www_authenticate("").unwrap().is_empty());
    }

    #[test]
    fn malformed_headers_are_errors_not_panics() {
        for bad in [
            r#"Bearer realm="unterminated"#,
            r#"Bearer realm="x\"#,
            "=foo",
            "Bearer realm=\"x\" ;",
            "Bearer \u{e9}=1",
        ] {
            assert!(parse_www_authenticate(bad).is_err(), "{bad:?} accepted");
        }
    }
}
