//! Running containers survive restarts of veil-guest (issue 14), with real parts:
//! veil-guest behind the CDH and attestation-agent stand-ins (kata-agent's side is the
//! test's ttrpc client), Veil's fd store (`veil fd-store`), runc, FUSE and overlayfs.
//!
//! `guest_container_survives_kill_and_term`: a container run with runc from a guest
//! pull (eStargz layers, served lazily) hashes the big file in a loop into its own root
//! while veil-guest is killed with SIGKILL and started again, then stopped with SIGTERM
//! and started again. `read-prober` reads the same file through the layer's FUSE mount
//! with its page cache dropped, so every iteration reads through FUSE. Every hash is
//! right, no read fails, nothing says `Transport endpoint is not connected`, and each
//! restarted veil-guest serves both layers again on the connections the fd store kept.
//! The test prints how long reads paused across each restart, measured on a file below
//! the promotion threshold (Veil serves its reads). The big file is promoted to FUSE
//! passthrough before a second prober opens it and holds it across the restarts: its
//! memfd is kept in the fd store beside the connection, the held handle and new opens
//! read right after each restart, and each new veil-guest has the memfd locked whole
//! and left out of core dumps. A second large file, first read after the SIGKILL
//! restart, is promoted by the resumed veil-guest (its backing file registered through
//! the connection's `/dev/fuse` fd), kept in the fd store, and carried over the SIGTERM
//! restart. At the end the container
//! goes and its root is unmounted (as kata-agent does): the adopted layers are released
//! and the fd store holds nothing any more.
//!
//! Needs root, docker-registry, busybox-static, runc, FUSE and overlayfs.
//! Run with `cargo test -p veil-tests --test guest_restart -- --nocapture`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use veil_snapshotter::fdstore::FdStoreClient;
use veil_tests::bundle::{runc_kill_remove, runc_run_detached, unmount_rootfs};
use veil_tests::guest_stack::GuestStack;
use veil_tests::lazy_image::{sha256_hex, BIG_PATH};
use veil_tests::process::ChildGuard;
use veil_tests::restart_watch::{
    confirm_back, probes_of, report_pauses, restart_image, wait_for_more, wait_for_stored, Restart,
    RestartImage, BIG_SIZE, ENOTCONN_TEXT, LAZY_PATH, LAZY_SEED, LAZY_SIZE, PROMOTE_FROM,
    SECOND_PATH, SECOND_SIZE, SETTLE,
};
use veil_tests::smaps::{promote_by_reading, wait_promoted};

/// Seeds of the big and the second file's bytes.
const BIG_SEED: u64 = 0x6e57_2e57;
const SECOND_SEED: u64 = 0x0005_ec0e;

/// How long one `PullImage` may take.
const PULL_TIMEOUT: Duration = Duration::from_secs(120);

/// The container's loop: hash the big file, forever, every line (or error) into its
/// own root (`bundle/rootfs/hashes` from the host).
const LOOP: &str = "while true; do /bin/sha256sum /data/random.bin >> /hashes 2>&1 \
                    || echo \"sha256sum failed: $?\" >> /hashes; done";

/// What the restarted veil-guest logs for each layer it serves again.
const RESUMED: &str = "serving a running container's layer again on its kept connection";

/// The big file in the layer mounts of the work directory.
fn big_file(work: &Path) -> anyhow::Result<PathBuf> {
    layer_file(work, BIG_PATH.trim_start_matches('/'))
}

/// `path` in the layer mounts of the work directory.
fn layer_file(work: &Path, path: &str) -> anyhow::Result<PathBuf> {
    veil_tests::mounts::mounts_below(&work.join("layers"))
        .into_iter()
        .map(|m| Path::new(&m).join(path))
        .find(|p| p.exists())
        .with_context(|| format!("no layer mount of veil-guest has {path}"))
}

#[test]
fn guest_container_survives_kill_and_term() {
    let name = "guest-restart";
    let mut guest = GuestStack::new("veil-guest-restart-", HashMap::new()).unwrap();
    let result = run(name, &mut guest);
    if let Err(e) = result {
        let _ = runc_kill_remove(&guest.dir, name);
        panic!("{e:#}\n{}", guest.logs());
    }
}

fn run(name: &str, guest: &mut GuestStack) -> anyhow::Result<()> {
    let store_socket = guest.dir.join("fdstore.sock");
    let cache = format!("\n[cache]\npassthrough_min_bytes = {PROMOTE_FROM}\n");
    guest.write_config_with(&[], None, &cache)?;
    // fd_store_socket is a top-level key: before every section.
    let config = std::fs::read_to_string(&guest.config)?;
    std::fs::write(
        &guest.config,
        format!("fd_store_socket = \"{}\"\n{config}", store_socket.display()),
    )?;
    let mut cmd = Command::new(veil_tests::veil_binary("veil"));
    cmd.arg("fd-store").arg("--socket").arg(&store_socket);
    let mut supervisor = ChildGuard::spawn("veil fd-store", cmd, &guest.dir.join("fdstore.log"))?;
    supervisor.wait_for_path(&store_socket, Duration::from_secs(10))?;

    let RestartImage {
        layers,
        big_sha: want,
        second,
    } = restart_image(BIG_SEED, SECOND_SEED)?;
    let (image, _) = guest.push("restart", &layers)?;
    guest.start()?;
    let bundle = guest.bundle(name)?;
    let client = guest.client()?;
    guest
        .runtime
        .block_on(client.pull_image(&image, &bundle, PULL_TIMEOUT))
        .map_err(|e| anyhow::anyhow!("PullImage: {e:?}"))?;
    drop(client);
    let stored = FdStoreClient::new(&store_socket).take_all()?;
    if stored.len() != layers.len() {
        bail!(
            "the fd store holds {} connections after the pull, not {}",
            stored.len(),
            layers.len()
        );
    }
    drop(stored);

    runc_run_detached(&guest.dir, &bundle, name, LOOP)?;
    let hashes = bundle.join("rootfs/hashes");
    let mut seen = wait_for_more(&hashes, &want, 2, Duration::from_secs(60))?;
    eprintln!("[{name}] the container is hashing ({seen} hashes so far, all right)");
    // Whole in the cache after the first hash: promoted, its memfd kept in the store.
    wait_promoted(guest.veil()?.pid(), BIG_SIZE, Duration::from_secs(60))?;
    // Kept in the store just before the first open by passthrough was answered.
    wait_for_stored(&store_socket, layers.len() + 1, Duration::from_secs(10))?;
    let work = guest.dir.join("work");
    let held_log = guest.dir.join("held-probes.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_read-prober"));
    cmd.arg(big_file(&work)?)
        .arg(BIG_SIZE.to_string())
        .arg(BIG_SEED.to_string());
    let mut holder = ChildGuard::spawn("read-prober (promoted)", cmd, &held_log)?;
    let probe_log = guest.dir.join("probes.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_read-prober"));
    cmd.arg(layer_file(&work, LAZY_PATH)?)
        .arg(LAZY_SIZE.to_string())
        .arg(LAZY_SEED.to_string());
    let mut prober = ChildGuard::spawn("read-prober", cmd, &probe_log)?;
    std::thread::sleep(SETTLE);
    prober.check_running()?;
    holder.check_running()?;

    let mut restarts = Vec::new();
    for (what, signal) in [("SIGKILL", libc::SIGKILL), ("SIGTERM", libc::SIGTERM)] {
        let stopped = SystemTime::now();
        let status = guest.veil()?.stop_with(signal, Duration::from_secs(20));
        if signal == libc::SIGTERM && !status.is_some_and(|s| s.success()) {
            bail!("veil-guest did not exit cleanly on SIGTERM: {status:?}");
        }
        guest.veil = None;
        guest.start()?;
        let ready = SystemTime::now();
        let log = guest.veil()?.output();
        let resumed = log.lines().filter(|l| l.contains(RESUMED)).count();
        if resumed != layers.len() {
            bail!(
                "after the {what} restart veil-guest served {resumed} layers again, not {}",
                layers.len()
            );
        }
        let restart = Restart {
            what,
            stopped,
            ready,
        };
        seen = confirm_back(name, restart, &hashes, &want, seen, &mut restarts)?;
        wait_promoted(guest.veil()?.pid(), BIG_SIZE, Duration::from_secs(60))
            .with_context(|| format!("after the {what} restart"))?;
        if sha256_hex(&std::fs::read(big_file(&work)?)?) != want {
            bail!("after the {what} restart a new open of the big file read other bytes");
        }
        let pid = guest.veil()?.pid();
        let second_file = layer_file(&work, SECOND_PATH)?;
        if signal == libc::SIGKILL {
            // Promoted by the resumed veil-guest, and kept beside the connection.
            promote_by_reading(pid, &second_file, &second, Duration::from_secs(60))
                .context("the second file after the first restart")?;
            wait_for_stored(&store_socket, layers.len() + 2, Duration::from_secs(10))?;
            eprintln!("[{name}] the second file is promoted by the resumed veil-guest {pid}");
        } else {
            // Carried over this restart too.
            wait_promoted(pid, SECOND_SIZE, Duration::from_secs(60))
                .with_context(|| format!("the second file after the {what} restart"))?;
            if std::fs::read(&second_file)? != second {
                bail!("after the {what} restart the second file read other bytes");
            }
        }
    }
    prober.check_running()?;
    prober.stop();
    holder.check_running()?;
    holder.stop();
    report_pauses(name, &restarts, &probes_of(&probe_log))?;
    let held = probes_of(&held_log);
    if let Some(p) = held.iter().find(|p| p.error.is_some()) {
        bail!("a read of the held promoted file failed: {:?}", p.error);
    }
    let last = restarts.last().map(|r| r.ready).context("no restart")?;
    if !held.iter().any(|p| p.start > last) {
        bail!("the held promoted file was not read after the last restart");
    }
    eprintln!(
        "[{name}] the promoted file held open across the restarts read right ({} reads)",
        held.len()
    );
    let mut logs = std::fs::read_to_string(&hashes)?;
    logs.push_str(&guest.logs());
    if let Some(line) = logs.lines().find(|l| l.contains(ENOTCONN_TEXT)) {
        bail!("a log says {ENOTCONN_TEXT:?}: {line}");
    }

    // The container goes and kata-agent unmounts its root: the adopted layers are
    // released and their connections closed.
    runc_kill_remove(&guest.dir, name)?;
    unmount_rootfs(&bundle)?;
    guest.wait_nothing_mounted("unmounting the adopted root")?;
    let start = Instant::now();
    loop {
        let left = FdStoreClient::new(&store_socket).take_all()?.len();
        if left == 0 {
            break;
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!("the fd store still holds {left} connections after the root went");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("[{name}] root unmounted: its layers are released and the fd store is empty");
    supervisor.stop();
    Ok(())
}
