//! End to end with real containerd: Veil's snapshotter as containerd's proxy snapshotter,
//! a locally built two-layer image imported into it, a container run with runc, the
//! snapshotter restarted on the same root, the container run again.
//!
//! Needs root, containerd 1.6, runc, umoci and busybox-static (Debian packages). Run with
//! `cargo test -p veil-tests --test containerd_run -- --nocapture`.

use veil_tests::containerd::{shim_pids_for, SnapshotRow};
use veil_tests::scenario;

fn committed(rows: &[SnapshotRow]) -> Vec<&SnapshotRow> {
    rows.iter().filter(|r| r.kind == "Committed").collect()
}

#[test]
fn containerd_runs_containers_from_veil_across_a_restart() {
    veil_tests::require_root();
    let veil_bin = veil_tests::veil_binary("veil-snapshotter");
    let tmp = tempfile::Builder::new()
        .prefix("veil-containerd-run-")
        .tempdir()
        .expect("temp dir");

    let report = scenario::run(tmp.path(), &veil_bin, &mut |step| {
        eprintln!("[containerd_run] {step}\n")
    })
    .unwrap_or_else(|e| panic!("{e:#}"));

    // The proxy plugin is registered and loaded.
    assert_eq!(report.plugin_status, "ok", "veil plugin status");

    // Importing unpacked one committed snapshot per layer into Veil.
    let layers = report.image.layer_count();
    assert_eq!(layers, 2);
    assert_eq!(
        committed(&report.snapshots_after_import).len(),
        layers,
        "committed snapshots in veil after the import: {:?}",
        report.snapshots_after_import
    );

    // The container saw both layers and the whiteout.
    let expected = report.image.expected_output();
    assert_eq!(report.first_run, expected, "first container's output");

    // The snapshotter stopped cleanly on SIGTERM and its metadata survived the restart.
    let exit = report.veil_exit.expect("veil-snapshotter exit status");
    assert!(
        exit.success(),
        "veil-snapshotter exited with {exit} on SIGTERM"
    );
    assert_eq!(
        committed(&report.snapshots_after_restart),
        committed(&report.snapshots_after_import),
        "committed snapshots before and after the restart"
    );
    assert_eq!(
        report.second_run, expected,
        "second container's output (after the restart)"
    );
    // `ctr run --rm` removed the containers' active snapshots.
    assert!(
        report
            .snapshots_at_end
            .iter()
            .all(|r| !r.key.starts_with("veil-run-")),
        "active snapshots of removed containers remain: {:?}",
        report.snapshots_at_end
    );

    // Clean-up: no tasks or shims were left, everything stopped, nothing mounted.
    assert!(
        report.cleanup.shutdown.tasks_killed.is_empty()
            && report.cleanup.shutdown.containers_deleted.is_empty(),
        "tasks/containers left behind by `ctr run --rm`: {:?}",
        report.cleanup.shutdown
    );
    assert!(
        report.cleanup.shutdown.shims_left.is_empty(),
        "containerd shims outlived containerd: {:?}",
        report.cleanup.shutdown.shims_left
    );
    assert!(
        report.cleanup.shutdown.exit.is_some(),
        "containerd exit status missing"
    );
    let final_exit = report
        .cleanup
        .veil_final_exit
        .expect("veil-snapshotter exit status");
    assert!(
        final_exit.success(),
        "veil-snapshotter exited with {final_exit} on SIGTERM at the end"
    );
    assert_eq!(
        report.cleanup.started.len(),
        3,
        "{:?}",
        report.cleanup.started
    );
    assert!(
        report.cleanup.still_alive.is_empty(),
        "processes still alive after clean-up: {:?}",
        report.cleanup.still_alive
    );
    assert!(
        shim_pids_for(
            &tmp.path()
                .canonicalize()
                .unwrap()
                .join("containerd/containerd.sock")
        )
        .is_empty(),
        "shims of this test's containerd are still running"
    );
    assert!(
        report.cleanup.mounts_left.is_empty(),
        "mounts left below the test directory: {:?}",
        report.cleanup.mounts_left
    );
    eprintln!(
        "[containerd_run] containerd reached the restarted snapshotter after {:?}; errors on \
         the way: {:?}; socket file left after SIGTERM: {}",
        report.reconnect_time, report.reconnect_errors, report.socket_left_after_stop
    );
}

/// Containerd's clean-up must not depend on `ctr run --rm`: a container left running is
/// killed and deleted, its shim exits, and nothing of it stays mounted.
#[test]
fn shutdown_removes_a_container_left_running() {
    use std::time::Duration;
    use veil_tests::containerd::{process_alive, Containerd, SNAPSHOTTER};
    use veil_tests::image::build_test_image;
    use veil_tests::scenario::VeilSnapshotter;

    veil_tests::require_root();
    let veil_bin = veil_tests::veil_binary("veil-snapshotter");
    let tmp = tempfile::Builder::new()
        .prefix("veil-containerd-cleanup-")
        .tempdir()
        .expect("temp dir");
    let dir = tmp.path().canonicalize().unwrap();
    std::fs::create_dir_all(dir.join("image")).unwrap();
    let image = build_test_image(&dir.join("image"), "veil.test/cleanup", "v1").unwrap();

    // Declared before containerd, so dropped after it.
    let mut veil = VeilSnapshotter::new(
        veil_bin,
        dir.join("veil"),
        dir.join("veil.sock"),
        dir.clone(),
    );
    let veil_pid = veil.start().unwrap();
    let mut cd = Containerd::start(&dir.join("containerd"), veil.socket()).unwrap();
    let cd_pid = cd.pid();
    cd.import(
        SNAPSHOTTER,
        &image.archive,
        &image.base_name,
        &image.reference,
    )
    .unwrap();
    cd.run_detached(
        SNAPSHOTTER,
        &image.reference,
        "veil-sleeper",
        &["/bin/sleep", "300"],
    )
    .unwrap();

    let tasks = cd.task_pids().unwrap();
    let task_pid = tasks
        .iter()
        .find(|(id, _)| id == "veil-sleeper")
        .map(|(_, pid)| *pid)
        .unwrap_or_else(|| panic!("no veil-sleeper task: {tasks:?}"));
    assert!(process_alive(task_pid), "the container's process runs");
    let shims = cd.shim_pids();
    assert_eq!(shims.len(), 1, "one shim for one container: {shims:?}");
    let rootfs_mounts = veil_tests::mounts::mounts_below(&dir);
    assert!(
        rootfs_mounts
            .iter()
            .any(|m| m.ends_with("/veil-sleeper/rootfs")),
        "the container's rootfs is mounted below the test directory: {rootfs_mounts:?}"
    );

    let report = cd.shutdown();
    assert_eq!(report.tasks_killed, vec!["veil-sleeper".to_string()]);
    assert_eq!(report.containers_deleted, vec!["veil-sleeper".to_string()]);
    assert!(
        report.shims_left.is_empty(),
        "shims outlived containerd: {report:?}"
    );
    assert!(
        report.mounts_left.is_empty(),
        "mounts left after containerd stopped: {report:?}"
    );
    let exit = veil.stop().expect("veil-snapshotter exit status");
    assert!(exit.success(), "veil-snapshotter exited with {exit}");
    veil_tests::unmount_below(&dir);

    std::thread::sleep(Duration::from_millis(100));
    for (name, pid) in [
        ("container process", task_pid),
        ("containerd", cd_pid),
        ("veil-snapshotter", veil_pid),
    ]
    .into_iter()
    .chain(shims.iter().map(|p| ("shim", *p)))
    {
        assert!(!process_alive(pid), "{name} (PID {pid}) is still alive");
    }
    assert!(veil_tests::mounts::mounts_below(&dir).is_empty());
}
