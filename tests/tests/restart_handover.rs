//! Running containers survive restarts of veil-snapshotter (issue 14), with real parts:
//! Debian's `docker-registry`, containerd, runc, veil-snapshotter and its fd store
//! (`veil fd-store`) on loopback.
//!
//! `container_survives_kill_term_and_upgrade`: a container hashes a large lazily served
//! file in a loop (`sha256sum` every iteration, into a file the test reads) while
//! veil-snapshotter is killed with SIGKILL and started again, stopped with SIGTERM and
//! started again, and replaced by a copy of its binary at another path (an upgrade). The
//! page cache of the file is dropped all the time (from the host, `POSIX_FADV_DONTNEED`
//! on the layer's FUSE mount, by `read-prober`), so every iteration reads through FUSE. Every hash the
//! container prints is the right one, it never prints an error, and no log says
//! `Transport endpoint is not connected`. The prober reading the same file measures
//! how long reads paused across each restart; the test prints the pauses (each, median,
//! worst). At the end the image is removed: containerd's Remove unmounts the layers and
//! the fd store holds nothing any more.
//!
//! The big file is promoted to FUSE passthrough (whole in the cache after the first
//! hash: `veil_fusefs::promote`) before a second prober opens it, so that one holds a
//! passthrough handle across every restart, and the container's opens after a restart
//! come beside it. The fd store holds the promoted file's memfd beside the connection;
//! after every restart the held handle still reads the right bytes, new opens (the
//! container's, and one from the test) read right (no `EIO`), and the new daemon has
//! the memfd mapped, locked whole and left out of core dumps (`/proc/PID/smaps`). The
//! pauses are measured on another file, below the promotion threshold, whose reads
//! Veil serves.
//!
//! A second large file, never read before, is read whole after the first restart and
//! opened again: the resumed daemon promotes it (registering its backing file through
//! the connection's `/dev/fuse` fd, as the socketpair it serves cannot), keeps it in the
//! fd store, and the daemons after the next restarts have it mapped too, its bytes
//! right.
//!
//! Needs root, docker-registry, busybox-static, FUSE, overlayfs, containerd and runc.
//! Run with `cargo test -p veil-tests --test restart_handover -- --nocapture`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use veil_snapshotter::fdstore::FdStoreClient;
use veil_tests::containerd::SNAPSHOTTER;
use veil_tests::lazy_image::{sha256_hex, BIG_PATH};
use veil_tests::lazy_stack::{lines_with, text, with_stack, LazyStack};
use veil_tests::process::ChildGuard;
use veil_tests::restart_watch::{
    check_hashes, confirm_back, probes_of, report_pauses, restart_image, wait_for_more,
    wait_for_stored, Restart, RestartImage, BIG_SIZE, ENOTCONN_TEXT, LAZY_PATH, LAZY_SEED,
    LAZY_SIZE, LOOP, PROMOTE_FROM, SECOND_PATH, SECOND_SIZE, SETTLE,
};
use veil_tests::smaps::{promote_by_reading, wait_promoted};

/// Seeds of the big and the second file's bytes.
const BIG_SEED: u64 = 0x005e_5510;
const SECOND_SEED: u64 = 0x0005_ec0d;

/// Waits until the current daemon has the big file's memfd mapped, and checks that it is
/// locked whole and left out of core dumps.
fn check_promoted(stack: &LazyStack, when: &str) -> anyhow::Result<()> {
    let pid = *stack.veil.pids.last().context("no daemon started")?;
    wait_promoted(pid, BIG_SIZE, Duration::from_secs(60)).with_context(|| when.to_string())?;
    eprintln!(
        "[restart-handover] {when}: the big file is promoted, its memfd locked in daemon {pid}"
    );
    Ok(())
}

/// The big file in the mounted top layer (among the FUSE mounts below Veil's root).
fn big_file(stack: &LazyStack) -> anyhow::Result<PathBuf> {
    layer_file(stack, BIG_PATH.trim_start_matches('/'))
}

/// `path` in the mounted top layer.
fn layer_file(stack: &LazyStack, path: &str) -> anyhow::Result<PathBuf> {
    veil_tests::mounts::mounts_below(stack.veil.root())
        .into_iter()
        .map(|m| Path::new(&m).join(path))
        .find(|p| p.exists())
        .with_context(|| format!("no mounted layer below Veil's root has {path}"))
}

#[test]
fn container_survives_kill_term_and_upgrade() {
    let name = "restart-handover";
    with_stack(name, |stack| {
        let store_socket = stack.dir.join("fdstore.sock");
        std::fs::write(
            stack.dir.join("veil-config.toml"),
            format!(
                "fd_store_socket = \"{}\"\n\n[registry]\nplain_http = [\"{}\"]\n\n\
                 [lazy]\nbackground_fetch = false\n\n[cache]\npassthrough_min_bytes = {}\n",
                store_socket.display(),
                stack.registry.host(),
                PROMOTE_FROM
            ),
        )?;
        let mut cmd = Command::new(veil_tests::veil_binary("veil"));
        cmd.arg("fd-store").arg("--socket").arg(&store_socket);
        let mut supervisor =
            ChildGuard::spawn("veil fd-store", cmd, &stack.dir.join("fdstore.log"))?;
        supervisor.wait_for_path(&store_socket, Duration::from_secs(10))?;

        let RestartImage {
            layers,
            big_sha: want,
            second,
        } = restart_image(BIG_SEED, SECOND_SEED)?;
        stack.push("handover", "1", &layers)?;
        stack.start()?;
        let reference = stack.image_ref("handover", "1");
        let (out, _) = stack.veil_pull(&reference, &[])?;
        if !out.status.success() {
            bail!(
                "veil pull failed:\n{}{}",
                text(&out.stdout),
                text(&out.stderr)
            );
        }
        let stored = FdStoreClient::new(&store_socket).take_all()?;
        if stored.len() != layers.len() {
            bail!(
                "the fd store holds {} connections after the pull, not {}",
                stored.len(),
                layers.len()
            );
        }

        // The container hashes the big file in a loop, into a file the test reads.
        let out_dir = stack.dir.join("out");
        std::fs::create_dir_all(&out_dir)?;
        let hashes = out_dir.join("hashes");
        let container = format!("{name}-loop");
        let mut args: Vec<String> = vec!["run".into(), "--detach".into(), "--null-io".into()];
        args.extend(["--snapshotter".into(), SNAPSHOTTER.into()]);
        args.extend(stack.cd().run_args());
        args.push("--mount".into());
        args.push(format!(
            "type=bind,src={},dst=/out,options=rbind:rw",
            out_dir.display()
        ));
        args.extend([reference.clone(), container.clone()]);
        args.extend(["/bin/sh".into(), "-c".into(), LOOP.into()]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        stack.cd().ctr(&refs)?;
        let mut seen = wait_for_more(&hashes, &want, 2, Duration::from_secs(60))?;
        eprintln!("[{name}] the container is hashing ({seen} hashes so far, all right)");
        // Whole in the cache after the first hash: promoted on a later open, and its
        // memfd kept beside the connection.
        check_promoted(stack, "before the restarts")?;
        // Kept in the store just before the first open by passthrough was answered.
        wait_for_stored(&store_socket, layers.len() + 1, Duration::from_secs(10))?;

        // A prober holds the promoted file open from the host, reading it, in a process
        // of its own; another reads a file Veil serves, measuring the pauses.
        let held_log = stack.dir.join("held-probes.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_read-prober"));
        cmd.arg(big_file(stack)?)
            .arg(BIG_SIZE.to_string())
            .arg(BIG_SEED.to_string());
        let mut holder = ChildGuard::spawn("read-prober (promoted)", cmd, &held_log)?;
        let probe_log = stack.dir.join("probes.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_read-prober"));
        cmd.arg(layer_file(stack, LAZY_PATH)?)
            .arg(LAZY_SIZE.to_string())
            .arg(LAZY_SEED.to_string());
        let mut prober = ChildGuard::spawn("read-prober", cmd, &probe_log)?;
        std::thread::sleep(SETTLE);
        prober.check_running()?;
        holder.check_running()?;

        let upgraded = stack.dir.join("upgrade").join("veil-snapshotter");
        std::fs::create_dir_all(upgraded.parent().context("no parent")?)?;
        std::fs::copy(veil_tests::veil_binary("veil-snapshotter"), &upgraded)?;
        let mut restarts = Vec::new();
        for what in ["SIGKILL", "SIGTERM", "upgrade"] {
            let stopped = SystemTime::now();
            match what {
                "SIGKILL" => {
                    stack.veil.kill();
                }
                _ => {
                    let exit = stack.veil.stop();
                    if !exit.map(|e| e.success()).unwrap_or(false) {
                        bail!("veil-snapshotter exited with {exit:?} on SIGTERM");
                    }
                }
            }
            if what == "upgrade" {
                stack.veil.set_binary(upgraded.clone());
            }
            stack.start_veil_again()?;
            let ready = SystemTime::now();
            let log = stack.veil.log_text();
            if lines_with(&log, &["the fd store handed back layer connections"]).is_empty() {
                bail!("after the {what} restart the daemon did not take the connections back");
            }
            let restart = Restart {
                what,
                stopped,
                ready,
            };
            seen = confirm_back(name, restart, &hashes, &want, seen, &mut restarts)?;
            check_promoted(stack, &format!("after the {what} restart"))?;
            let again = sha256_hex(&std::fs::read(big_file(stack)?)?);
            if again != want {
                bail!("after the {what} restart a new open of the big file read other bytes");
            }
            let pid = *stack.veil.pids.last().context("no daemon started")?;
            let second_file = layer_file(stack, SECOND_PATH)?;
            if what == "SIGKILL" {
                // Promoted by the resumed daemon, and kept beside the connection.
                promote_by_reading(pid, &second_file, &second, Duration::from_secs(60))
                    .context("the second file after the first restart")?;
                wait_for_stored(&store_socket, layers.len() + 2, Duration::from_secs(10))?;
                eprintln!("[{name}] the second file is promoted by the resumed daemon {pid}");
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
        // The handle held across the restarts read the right bytes all along, and after
        // the last restart too.
        let held = probes_of(&held_log);
        if let Some(p) = held.iter().find(|p| p.error.is_some()) {
            bail!("a read of the held promoted file failed: {:?}", p.error);
        }
        let last = restarts.last().map(|r| r.ready).context("no restart")?;
        let after = held.iter().filter(|p| p.start > last).count();
        if after == 0 {
            bail!("the held promoted file was not read after the last restart");
        }
        eprintln!("[{name}] the promoted file held open across the restarts read right ({} reads, {after} after the last restart)", held.len());

        // Nothing anywhere says the connection was lost.
        let mut logs = check_hashes(&hashes, &want).map(|_| String::new())?;
        for log in &stack.veil.logs {
            logs.push_str(&std::fs::read_to_string(log).unwrap_or_default());
        }
        logs.push_str(&stack.cd().log_text());
        if let Some(line) = logs.lines().find(|l| l.contains(ENOTCONN_TEXT)) {
            bail!("a log says {ENOTCONN_TEXT:?}: {line}");
        }

        // Removing the image unmounts its layers and empties the fd store.
        let cd = stack.cd();
        cd.ctr(&["tasks", "kill", "--signal", "SIGKILL", &container])?;
        let start = Instant::now();
        while cd.task_pids()?.iter().any(|(id, _)| id == &container) {
            let _ = cd.ctr(&["tasks", "rm", &container]);
            if start.elapsed() > Duration::from_secs(20) {
                bail!("the container's task did not go away");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        cd.ctr(&["containers", "rm", &container])?;
        cd.ctr(&["images", "rm", "--sync", &reference])?;
        let start = Instant::now();
        loop {
            let left = FdStoreClient::new(&store_socket).take_all()?.len();
            if left == 0 {
                break;
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!("the fd store still holds {left} connections after the image was removed");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let left = veil_tests::mounts::mounts_below(stack.veil.root());
        if !left.is_empty() {
            bail!("layer mounts left after the image was removed: {left:?}");
        }
        eprintln!("[{name}] image removed: its layers are unmounted and the fd store is empty");
        supervisor.stop();
        Ok(())
    });
}
