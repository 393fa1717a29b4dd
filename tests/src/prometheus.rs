//! Reading a Prometheus text page (`veil-snapshotter`'s `/metrics`) in tests: fetching it
//! and looking samples up by name and labels.

use std::time::Duration;

use anyhow::Context;

/// `GET http://ADDRESS/metrics`, the page as text; fails on anything but 200.
pub async fn scrape(address: &str) -> anyhow::Result<String> {
    let url = format!("http://{address}/metrics");
    let answer = reqwest::Client::new()
        .get(&url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = answer.status();
    let body = answer.text().await?;
    anyhow::ensure!(status.is_success(), "GET {url}: {status}\n{body}");
    Ok(body)
}

/// A sample: metric name, labels, value.
type Sample<'a> = (&'a str, Vec<(&'a str, &'a str)>, f64);

/// One sample line (`None` for a comment or a line that does not parse).
fn parse_line(line: &str) -> Option<Sample<'_>> {
    if line.starts_with('#') || line.trim().is_empty() {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => (name, rest.strip_suffix('}')?),
        None => (series, ""),
    };
    let labels = labels
        .split("\",")
        .filter(|kv| !kv.is_empty())
        .filter_map(|kv| {
            let (k, v) = kv.split_once("=\"")?;
            Some((k, v.trim_end_matches('"')))
        })
        .collect();
    Some((name, labels, value))
}

/// The sum of the samples of `name` whose labels include all of `labels` (0 when none).
pub fn sum(page: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    page.lines()
        .filter_map(parse_line)
        .filter(|(n, have, _)| *n == name && labels.iter().all(|want| have.contains(want)))
        .map(|(_, _, v)| v)
        .sum()
}

/// A free loopback `IP:PORT` for a daemon's `[metrics] address` (bound, then released).
pub fn free_loopback_address() -> anyhow::Result<String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    Ok(format!("127.0.0.1:{port}"))
}

/// Whether any sample of `name` is on the page.
pub fn has(page: &str, name: &str) -> bool {
    page.lines()
        .filter_map(parse_line)
        .any(|(n, _, _)| n == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_found_by_name_and_labels() {
        let page = "# TYPE a counter\na{x=\"1\",y=\"b\"} 3\na{x=\"2\",y=\"b\"} 4\nb 7\n";
        assert_eq!(sum(page, "a", &[("y", "b")]), 7.0);
        assert_eq!(sum(page, "a", &[("x", "2")]), 4.0);
        assert_eq!(sum(page, "b", &[]), 7.0);
        assert_eq!(sum(page, "c", &[]), 0.0);
        assert!(has(page, "b") && !has(page, "c"));
    }
}
