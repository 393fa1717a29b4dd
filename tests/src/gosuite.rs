//! containerd's own snapshotter test suite, run against a snapshotter's gRPC socket.
//!
//! The Go harness in `tests/go/src/veil.test/snapshotsuite` wraps containerd's
//! `snapshots/testsuite` around a gRPC client of the snapshots API. It is built in GOPATH
//! mode against Debian's containerd sources (package `golang-github-containerd-containerd-dev`,
//! under `/usr/share/gocode`) with Debian's `golang-go`; no network is needed. The Go build
//! cache goes to `<target>/go-cache`, so nothing depends on `$HOME`.
//!
//! [`build_suite`] compiles the harness into a test binary, [`run_suite`] runs it (as root:
//! the suite mounts the snapshots it prepares) and [`parse_output`] counts the sub-tests'
//! `--- PASS/FAIL/SKIP` lines.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::binaries::workspace_root;

/// Where Debian installs Go sources, containerd's among them.
pub const SYSTEM_GOPATH: &str = "/usr/share/gocode";

/// The Go import path of the harness.
pub const HARNESS_PACKAGE: &str = "veil.test/snapshotsuite";

/// The environment variable the harness reads the snapshotter's socket path from.
pub const ADDRESS_ENV: &str = "VEIL_SNAPSHOTTER_ADDRESS";

/// The harness's GOPATH root (`tests/go`).
pub fn harness_gopath() -> PathBuf {
    workspace_root().join("tests").join("go")
}

/// The directory holding the harness's sources.
pub fn harness_dir() -> PathBuf {
    harness_gopath().join("src").join(HARNESS_PACKAGE)
}

/// The Go build cache used for the harness: `<target>/go-cache`.
pub fn go_cache_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("go-cache")
}

/// A `go` command set up for GOPATH-mode builds of the harness.
fn go_command() -> Command {
    let gopath = std::env::join_paths([PathBuf::from(SYSTEM_GOPATH), harness_gopath()])
        .expect("GOPATH entries contain no ':'");
    let mut cmd = Command::new("go");
    cmd.env("GO111MODULE", "off")
        .env("GOPATH", gopath)
        .env("GOCACHE", go_cache_dir())
        .env("GOFLAGS", "")
        .env("GOPROXY", "off")
        .env("CGO_ENABLED", "0")
        .current_dir(harness_dir());
    cmd
}

/// Builds the Go command `package` (an import path found in [`SYSTEM_GOPATH`] or the
/// harness's GOPATH, e.g. `github.com/containerd/stargz-snapshotter/cmd/ctr-remote`) in
/// GOPATH mode, without network, into `output` (its directory is created). The build cache
/// is [`go_cache_dir`], so a second build of the same sources is quick. Fails with go's
/// output when the build fails, e.g. naming the package that is missing from
/// `/usr/share/gocode`.
pub fn build_go_tool(package: &str, output: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(go_cache_dir())
        .with_context(|| format!("creating {}", go_cache_dir().display()))?;
    if let Some(parent) = output.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let out = go_command()
        .current_dir(workspace_root())
        .args(["build", "-o"])
        .arg(output)
        .arg(package)
        .stdin(Stdio::null())
        .output()
        .context("running `go build` (is golang-go installed?)")?;
    if !out.status.success() || !output.exists() {
        bail!(
            "`GO111MODULE=off GOPATH={SYSTEM_GOPATH}:{} go build -o {} {package}` failed ({}):\n{}{}",
            harness_gopath().display(),
            output.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(output.to_path_buf())
}

/// Where [`build_go_tool`] callers put tools: `<target>/go-tools/NAME`.
pub fn go_tool_path(name: &str) -> PathBuf {
    go_cache_dir()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("go-tools")
        .join(name)
}

/// Compiles the harness into `<out_dir>/suite.test` and returns that path.
pub fn build_suite(out_dir: &Path) -> anyhow::Result<PathBuf> {
    let containerd_src = Path::new(SYSTEM_GOPATH).join("src/github.com/containerd/containerd");
    if !containerd_src.join("snapshots/testsuite").is_dir() {
        bail!(
            "{} has no snapshots/testsuite: install golang-github-containerd-containerd-dev",
            containerd_src.display()
        );
    }
    std::fs::create_dir_all(go_cache_dir())
        .with_context(|| format!("creating {}", go_cache_dir().display()))?;
    let binary = out_dir.join("suite.test");
    let out = go_command()
        .args(["test", "-c", "-o"])
        .arg(&binary)
        .arg(".")
        .stdin(Stdio::null())
        .output()
        .context("running `go test -c` (is golang-go installed?)")?;
    if !out.status.success() || !binary.exists() {
        bail!(
            "building the snapshotter suite in {} failed ({}):\n{}{}",
            harness_dir().display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(binary)
}

/// What one run of the suite gave.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SuiteReport {
    /// Sub-tests that passed.
    pub passed: usize,
    /// Sub-tests that failed.
    pub failed: usize,
    /// Sub-tests that skipped themselves.
    pub skipped: usize,
    /// Names of the failed sub-tests (e.g. `Remove`), in the order reported.
    pub failures: Vec<String>,
    /// Names of the skipped sub-tests.
    pub skips: Vec<String>,
    /// Whether the test binary exited with status 0.
    pub success: bool,
    /// Everything the test binary wrote (stdout and stderr).
    pub output: String,
}

impl SuiteReport {
    /// The suite's output for the named sub-test: its `=== CONT`/`=== RUN` block, which
    /// holds the sub-test's log and error lines.
    pub fn log_of(&self, name: &str) -> String {
        let mut out = String::new();
        let mut inside = false;
        for line in self.output.lines() {
            if let Some(rest) = line
                .strip_prefix("=== CONT  ")
                .or_else(|| line.strip_prefix("=== RUN   "))
                .or_else(|| line.strip_prefix("=== PAUSE "))
            {
                inside = rest.rsplit('/').next() == Some(name) && rest.contains('/');
            } else if line.starts_with("--- ") || line.starts_with("PASS") {
                inside = false;
            }
            if inside {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

/// Counts the sub-tests' results in `go test -v` output.
///
/// Only results of sub-tests (names holding a `/`) are counted; the top-level test's own
/// `--- PASS/FAIL` line is not. A sub-test reported more than once counts once, with its
/// last result. The returned report has `success` false; [`run_suite`] sets it.
pub fn parse_output(output: &str) -> SuiteReport {
    let mut results: BTreeMap<String, (usize, &str)> = BTreeMap::new();
    for line in output.lines() {
        let line = line.trim_start();
        let Some(rest) = line.strip_prefix("--- ") else {
            continue;
        };
        let Some((outcome, rest)) = rest.split_once(": ") else {
            continue;
        };
        if !matches!(outcome, "PASS" | "FAIL" | "SKIP") {
            continue;
        }
        // "TestX/Name (0.01s)"
        let full = rest.split(" (").next().unwrap_or(rest).trim();
        let Some((_, name)) = full.split_once('/') else {
            continue;
        };
        let order = results.len();
        let entry = results.entry(name.to_string()).or_insert((order, outcome));
        entry.1 = outcome;
    }
    let mut ordered: Vec<(usize, String, &str)> = results
        .into_iter()
        .map(|(name, (order, outcome))| (order, name, outcome))
        .collect();
    ordered.sort();
    let mut report = SuiteReport {
        output: output.to_string(),
        ..SuiteReport::default()
    };
    for (_, name, outcome) in ordered {
        match outcome {
            "PASS" => report.passed += 1,
            "FAIL" => {
                report.failed += 1;
                report.failures.push(name);
            }
            _ => {
                report.skipped += 1;
                report.skips.push(name);
            }
        }
    }
    report
}

/// Runs the built suite against the snapshotter listening on the unix socket `address`.
///
/// The sub-tests run one at a time (`-test.parallel 1`) since they share the one
/// snapshotter. The suite's scratch directories (where it mounts snapshots) are made under
/// `tmp_dir`, so a caller's `unmount_below` covers whatever a failing sub-test left mounted.
/// The run is killed (by its PID) if it has not finished after `timeout`; Go's own
/// `-test.timeout` fires a minute before that and dumps the goroutines.
pub fn run_suite(
    binary: &Path,
    address: &Path,
    tmp_dir: &Path,
    timeout: Duration,
) -> anyhow::Result<SuiteReport> {
    std::fs::create_dir_all(tmp_dir).with_context(|| format!("creating {}", tmp_dir.display()))?;
    let log_path = tmp_dir.join("suite.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let go_timeout = timeout
        .saturating_sub(Duration::from_secs(60))
        .max(Duration::from_secs(30));
    let mut child = Command::new(binary)
        .arg("-test.v")
        .args(["-test.parallel", "1"])
        .arg(format!("-test.timeout={}s", go_timeout.as_secs()))
        .env(ADDRESS_ENV, address)
        .env("TMPDIR", tmp_dir)
        .current_dir(tmp_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = String::from_utf8_lossy(&std::fs::read(&log_path)?).into_owned();
    let mut report = parse_output(&output);
    match status {
        Some(status) => report.success = status.success(),
        None => {
            report.output.push_str(&format!(
                "\n[veil-tests: the suite was killed after {timeout:?}]\n"
            ));
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
=== RUN   TestVeilSnapshotterSuite
=== RUN   TestVeilSnapshotterSuite/Basic
=== PAUSE TestVeilSnapshotterSuite/Basic
=== RUN   TestVeilSnapshotterSuite/Remove
=== PAUSE TestVeilSnapshotterSuite/Remove
=== CONT  TestVeilSnapshotterSuite/Basic
=== CONT  TestVeilSnapshotterSuite/Remove
    testsuite.go:555: expected error removing a parent
=== CONT  TestVeilSnapshotterSuite/Rename
    issues.go:118: rename test still fails on some kernels with overlay
--- FAIL: TestVeilSnapshotterSuite (0.00s)
    --- PASS: TestVeilSnapshotterSuite/Basic (0.05s)
    --- FAIL: TestVeilSnapshotterSuite/Remove (0.01s)
    --- SKIP: TestVeilSnapshotterSuite/Rename (0.00s)
FAIL
";

    #[test]
    fn counts_sub_tests_only() {
        let r = parse_output(SAMPLE);
        assert_eq!((r.passed, r.failed, r.skipped), (1, 1, 1));
        assert_eq!(r.failures, vec!["Remove".to_string()]);
        assert_eq!(r.skips, vec!["Rename".to_string()]);
        assert!(!r.success);
    }

    #[test]
    fn log_of_a_sub_test() {
        let r = parse_output(SAMPLE);
        let log = r.log_of("Remove");
        assert!(log.contains("expected error removing a parent"), "{log}");
        assert!(!log.contains("rename test"), "{log}");
    }
}
