//! What the registry served, counted from its access log.
//!
//! Debian's `docker-registry` writes one line per request in the Apache combined log
//! format to its stdout (which [`crate::registry::Registry`] keeps in `registry.log`):
//!
//! ```text
//! 127.0.0.1 - - [23/Nov/2026:14:44:13 +0000] "GET /v2/app/blobs/sha256:… HTTP/1.1" 206 1234 "" "veil/0.1.0"
//! ```
//!
//! The size is the number of body bytes the registry wrote for the request.

/// One request from the access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub bytes: u64,
    /// The client's `User-Agent` (a pull-through mirror's is Go's, Veil's is `veil/…`).
    pub agent: String,
}

/// Parses the access-log lines of `log` (other lines are skipped).
pub fn parse_access_log(log: &str) -> Vec<Served> {
    log.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Served> {
    let (_, rest) = line.split_once("] \"")?;
    let (request, rest) = rest.split_once('"')?;
    let mut req = request.split(' ');
    let method = req.next()?.to_string();
    let path = req.next()?.to_string();
    let mut fields = rest.split_whitespace();
    let status = fields.next()?.parse().ok()?;
    let bytes = fields.next()?.parse().unwrap_or(0);
    // `"referer" "agent"`: the last quoted field.
    let agent = rest
        .trim_end()
        .strip_suffix('"')
        .and_then(|r| r.rsplit_once('"'))
        .map(|(_, a)| a.to_string())
        .unwrap_or_default();
    Some(Served {
        method,
        path,
        status,
        bytes,
        agent,
    })
}

/// Requests and body bytes the registry served for blob `digest` (GETs only).
pub fn blob_served(log: &str, digest: &str) -> (usize, u64) {
    let suffix = format!("/blobs/{digest}");
    parse_access_log(log)
        .iter()
        .filter(|s| s.method == "GET" && s.path.ends_with(&suffix))
        .fold((0, 0), |(n, b), s| (n + 1, b + s.bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_blob_gets() {
        let log = "127.0.0.1 - - [23/Nov/2026:14:44:13 +0000] \"GET /v2/ HTTP/1.1\" 200 2 \"\" \"curl/7.88.1\"\n\
time=\"2026\" level=error msg=\"x\"\n\
127.0.0.1 - - [23/Nov/2026:14:44:13 +0000] \"GET /v2/a/blobs/sha256:ab HTTP/1.1\" 206 100 \"\" \"veil\"\n\
127.0.0.1 - - [23/Nov/2026:14:44:13 +0000] \"HEAD /v2/a/blobs/sha256:ab HTTP/1.1\" 200 0 \"\" \"veil\"\n\
127.0.0.1 - - [23/Nov/2026:14:44:14 +0000] \"GET /v2/a/blobs/sha256:ab HTTP/1.1\" 206 50 \"\" \"veil\"\n";
        assert_eq!(parse_access_log(log).len(), 4);
        assert_eq!(parse_access_log(log)[1].agent, "veil");
        assert_eq!(parse_access_log(log)[0].agent, "curl/7.88.1");
        assert_eq!(blob_served(log, "sha256:ab"), (2, 150));
        assert_eq!(blob_served(log, "sha256:cd"), (0, 0));
    }
}
