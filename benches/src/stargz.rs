//! The peer: stargz-snapshotter, built here from Debian's
//! `golang-github-containerd-stargz-snapshotter-dev` sources (GOPATH mode, no network).
//!
//! Upstream's `cmd/containerd-stargz-grpc` is not packaged and its `service` package does
//! not compile without the k8s CRI API, so `benches/go/stargz-grpc/main.go` (embedded in
//! this program) wires the packaged `fs`, `fs/source` and `snapshot` packages into a proxy
//! snapshotter. Images are pulled with `ctr-remote images rpull` (built from the same
//! sources), which sets the labels stargz-snapshotter finds layers by.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// The Go source of the snapshotter's main.
const MAIN_GO: &str = include_str!("../go/stargz-grpc/main.go");
/// Debian's Go sources.
const SYSTEM_GOPATH: &str = "/usr/share/gocode";
/// Debian packages go-fuse v2 without the `/v2` directory GOPATH mode needs.
const GO_FUSE: &str = "/usr/share/gocode/src/github.com/hanwen/go-fuse";

/// The two built tools.
#[derive(Debug, Clone)]
pub struct StargzTools {
    pub snapshotter: PathBuf,
    pub ctr_remote: PathBuf,
}

/// Builds `stargz-grpc` and `ctr-remote` below `cache` (a GOPATH with the embedded main,
/// the Go build cache, the binaries); quick when the cache is warm.
pub fn build(cache: &Path) -> anyhow::Result<StargzTools> {
    if Command::new("go").arg("version").output().is_err() {
        bail!("go is not installed (Debian: apt-get install golang-go)");
    }
    if !Path::new(SYSTEM_GOPATH)
        .join("src/github.com/containerd/stargz-snapshotter/fs")
        .is_dir()
    {
        bail!("the stargz-snapshotter sources are missing (Debian: apt-get install golang-github-containerd-stargz-snapshotter-dev)");
    }
    let gopath = cache.join("gopath");
    let fuse_v2 = gopath.join("src/github.com/hanwen/go-fuse/v2");
    std::fs::create_dir_all(fuse_v2.parent().context("a parent")?)?;
    if std::fs::symlink_metadata(&fuse_v2).is_err() {
        std::os::unix::fs::symlink(GO_FUSE, &fuse_v2)
            .with_context(|| format!("linking {}", fuse_v2.display()))?;
    }
    let main_dir = gopath.join("src/veil-bench/stargz-grpc");
    std::fs::create_dir_all(&main_dir)?;
    std::fs::write(main_dir.join("main.go"), MAIN_GO)?;
    let bin = cache.join("bin");
    let tools = StargzTools {
        snapshotter: bin.join("stargz-grpc"),
        ctr_remote: bin.join("ctr-remote"),
    };
    for (package, out) in [
        ("veil-bench/stargz-grpc", &tools.snapshotter),
        (
            "github.com/containerd/stargz-snapshotter/cmd/ctr-remote",
            &tools.ctr_remote,
        ),
    ] {
        let paths = std::env::join_paths([PathBuf::from(SYSTEM_GOPATH), gopath.clone()])?;
        let built = Command::new("go")
            .args(["build", "-o"])
            .arg(out)
            .arg(package)
            .env("GO111MODULE", "off")
            .env("GOPATH", paths)
            .env("GOCACHE", cache.join("go-build"))
            .env("GOFLAGS", "")
            .output()
            .with_context(|| format!("running go build {package}"))?;
        if !built.status.success() {
            bail!(
                "go build {package} failed:\n{}",
                String::from_utf8_lossy(&built.stderr)
            );
        }
    }
    Ok(tools)
}
