//! containerd's snapshotter test suite (`snapshots/testsuite`) against veil-snapshotter.
//!
//! Starts `veil-snapshotter` on a socket in a scratch directory, then builds and runs the
//! Go harness in `tests/go` (see `veil_tests::gosuite`), which drives the snapshotter over
//! containerd's snapshots gRPC API exactly as containerd's proxy plugin does. Needs root,
//! `golang-go` and `golang-github-containerd-containerd-dev`.
//!
//! Run with: `cargo test -p veil-tests --test containerd_suite -- --nocapture`

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use veil_tests::gosuite::{self, SuiteReport};
use veil_tests::{require_root, unmount_below, veil_binary, ChildGuard};

/// Sub-tests of containerd 1.6's suite: all but `Rename`, which the suite skips itself.
const EXPECTED_PASSED: usize = 20;
const EXPECTED_FAILED: usize = 0;
const EXPECTED_SKIPPED: usize = 1;

/// Upper bound for one run of the suite (it takes well under a minute when healthy).
const SUITE_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// The test's scratch directory. Dropping it first lazily unmounts everything still
/// mounted below it, then removes it.
struct Scratch(tempfile::TempDir);

impl Scratch {
    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        unmount_below(self.0.path());
    }
}

/// The counts and, for each failure, its log; with `full`, both processes' whole output.
fn describe(report: &SuiteReport, snapshotter_output: &str, full: bool) -> String {
    let mut s = format!(
        "containerd snapshotter suite: {} passed, {} failed, {} skipped \
         (expected {EXPECTED_PASSED}/{EXPECTED_FAILED}/{EXPECTED_SKIPPED}); exit ok: {}\n\
         failed: {:?}\nskipped: {:?}\n",
        report.passed, report.failed, report.skipped, report.success, report.failures, report.skips
    );
    for name in &report.failures {
        s.push_str(&format!(
            "\n----- log of {name} -----\n{}",
            report.log_of(name)
        ));
    }
    if !full {
        return s;
    }
    s.push_str(&format!(
        "\n----- suite output -----\n{}\n----- veil-snapshotter output -----\n{}",
        report.output, snapshotter_output
    ));
    s
}

#[test]
fn containerd_snapshotter_suite() {
    require_root();

    // Declared before the snapshotter so that it is dropped after it: the snapshotter is
    // stopped first, then whatever is left mounted below the scratch directory is unmounted.
    let scratch = Scratch(
        tempfile::Builder::new()
            .prefix("veil-suite-")
            .tempdir()
            .expect("creating a scratch directory"),
    );
    let dir = scratch.path();

    // Build the Go side before starting the snapshotter.
    let suite = gosuite::build_suite(dir).expect("building the Go suite harness");

    let root = dir.join("root");
    let socket = dir.join("veil.sock");
    std::fs::create_dir_all(&root).expect("creating the snapshotter root");
    let mut cmd = Command::new(veil_binary("veil-snapshotter"));
    cmd.arg("--root")
        .arg(&root)
        .arg("--address")
        .arg(&socket)
        .env("RUST_LOG", "info");
    let mut snapshotter = ChildGuard::spawn("veil-snapshotter", cmd, &dir.join("snapshotter.log"))
        .expect("starting veil-snapshotter");
    snapshotter
        .wait_for_path(&socket, Duration::from_secs(30))
        .expect("veil-snapshotter's socket");

    let report = gosuite::run_suite(&suite, &socket, &dir.join("suite-tmp"), SUITE_TIMEOUT)
        .expect("running the Go suite");

    let still_running = snapshotter.check_running();
    let exit = snapshotter.stop();
    let snapshotter_output = snapshotter.output();
    unmount_below(dir);

    println!("{}", describe(&report, &snapshotter_output, false));
    let summary = describe(&report, &snapshotter_output, true);
    println!("veil-snapshotter exit after SIGTERM: {exit:?}");
    if let Err(e) = still_running {
        panic!("veil-snapshotter died during the suite: {e}\n{summary}");
    }
    assert!(
        report.passed == EXPECTED_PASSED
            && report.failed == EXPECTED_FAILED
            && report.skipped == EXPECTED_SKIPPED,
        "unexpected results; failing sub-tests: {:?}\n{summary}",
        report.failures
    );
    assert!(
        report.success,
        "the suite binary did not exit successfully\n{summary}"
    );
}
