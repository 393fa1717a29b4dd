//! What the `veil bench` end-to-end tests share: running `veil bench` (the `veil` built
//! beside the veil-bench under test) with the arguments of a test, a fast shaped link,
//! its output, JSON and work directory below a fresh temporary directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use veil_tests::process::run_with_timeout;

/// A finished `veil bench` run.
pub struct BenchRun {
    /// Kept until the run is dropped: every path below lies in it.
    _tmp: tempfile::TempDir,
    /// The run's directory (the parent of the others).
    pub dir: PathBuf,
    /// `--out`.
    pub out: PathBuf,
    /// `--work-dir`.
    pub work: PathBuf,
    /// `--json`.
    pub json: PathBuf,
    /// The process's output.
    pub ran: Output,
}

/// Runs `veil bench ARGS --rtt-ms 2 --mbit 1000 --out … --json … --work-dir …` within
/// `timeout`.
pub fn run_bench(args: &[&str], timeout: Duration) -> BenchRun {
    veil_tests::require_root();
    // `veil` (and veil-snapshotter) built, debug, beside the veil-bench under test.
    let veil = veil_tests::veil_binary("veil");
    let bench = Path::new(env!("CARGO_BIN_EXE_veil-bench"));
    assert_eq!(
        veil.parent(),
        bench.parent(),
        "veil and veil-bench must be built into the same directory"
    );
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap();
    let (out, work, json) = (dir.join("out"), dir.join("w"), dir.join("r.json"));
    let mut cmd = Command::new(&veil);
    cmd.arg("bench")
        .args(args)
        .args(["--rtt-ms", "2", "--mbit", "1000"])
        .arg("--out")
        .arg(&out)
        .arg("--json")
        .arg(&json)
        .arg("--work-dir")
        .arg(&work);
    let ran = run_with_timeout(cmd, timeout, &dir.join("bench")).unwrap();
    BenchRun {
        _tmp: tmp,
        dir: dir.clone(),
        out,
        work,
        json,
        ran,
    }
}
