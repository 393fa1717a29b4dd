//! Locating Veil's binaries for tests, building them first when needed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The workspace root (the directory holding the top `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

static BUILT: OnceLock<Result<(), String>> = OnceLock::new();

/// Path of one of Veil's binaries (`veil`, `veil-snapshotter`), built by `cargo build` the
/// first time any test asks, with the same profile as the tests (debug).
pub fn veil_binary(name: &str) -> PathBuf {
    let built = BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "--quiet",
                "-p",
                "veil-daemon",
                "-p",
                "veil-cli",
                "--bins",
            ])
            .current_dir(workspace_root())
            .status()
            .map_err(|e| format!("running cargo build: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("cargo build of Veil's binaries failed: {status}"))
        }
    });
    if let Err(e) = built {
        panic!("{e}");
    }
    let path = target_dir().join("debug").join(name);
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// Fails the test with a clear message unless it runs as root (mounts need it).
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test mounts filesystems and runs containerd: run it as root"
    );
}
