//! `veil bench --sizes` (the scale mode) end to end on two tiny busybox images in a small
//! memory cgroup whose tmpfs holds the smaller image unpacked but not the larger: the
//! status quo starts the small one and runs out of space on the large one (a result in
//! the table and JSON, not a failure of the bench), Veil starts both, fetching less than
//! the image, with the cgroup's and its daemon's peaks reported and under the limit; the
//! table and plot are written; nothing is left running, mounted or in a cgroup.

use std::path::Path;
use std::time::Duration;

mod common;

use veil_tests::containerd::process_alive;

/// The guest's memory, MiB: its tmpfs (half) holds 4 MiB pulled and unpacked, not 100.
const LIMIT_MIB: u64 = 192;

#[test]
fn veil_bench_scale_on_two_tiny_images() {
    let run = common::run_bench(
        &[
            "--sample",
            "busybox",
            "--sizes",
            "4,100",
            "--runs",
            "1",
            "--memory-limit",
            &LIMIT_MIB.to_string(),
        ],
        Duration::from_secs(900),
    );
    let (dir, out, work, json, ran) = (&run.dir, &run.out, &run.work, &run.json, &run.ran);
    let stdout = String::from_utf8_lossy(&ran.stdout);
    let stderr = String::from_utf8_lossy(&ran.stderr);
    assert!(
        ran.status.success(),
        "veil bench --sizes failed ({}):\n{stdout}\n{stderr}",
        ran.status
    );
    assert!(
        stdout.contains("largest image the status quo started: "),
        "{stdout}"
    );
    assert!(stdout.contains("ENOSPC"), "no out-of-space row:\n{stdout}");

    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap();
    let result = &doc["result"];
    assert_eq!(result["memory_limit"].as_u64(), Some(LIMIT_MIB << 20));
    assert_eq!(result["tmpfs_size"].as_u64(), Some(LIMIT_MIB << 19));
    let sizes = result["sizes"].as_array().unwrap();
    assert_eq!(sizes.len(), 2);
    for (s, sq_verdict) in sizes.iter().zip(["ok", "out-of-space"]) {
        let mib = s["size"].as_u64().unwrap() >> 20;
        let veil_bytes = s["veil_bytes"].as_u64().unwrap();
        let v = &s["veil"][0];
        assert_eq!(v["verdict"], "ok", "{mib} MiB: {v}");
        let fetched = v["fetched_bytes"].as_u64().unwrap();
        assert!(
            fetched > 0 && fetched < veil_bytes,
            "{mib} MiB: {fetched} of {veil_bytes}"
        );
        let peak = v["cgroup_peak"].as_u64().unwrap();
        assert!(
            peak > 0 && peak < LIMIT_MIB << 20,
            "{mib} MiB: cgroup peak {peak}"
        );
        assert!(v["daemon_peak_rss"].as_u64().unwrap() > 0, "{mib} MiB: {v}");
        let sq = &s["status_quo"][0];
        assert_eq!(sq["verdict"], sq_verdict, "{mib} MiB: {sq}");
        assert!(sq["cgroup_peak"].as_u64().unwrap() > 0, "{mib} MiB: {sq}");
    }
    assert_eq!(doc["status_quo_largest_bytes"].as_u64(), Some(4 << 20));
    assert!(doc["veil_ok"].as_bool().unwrap());
    for name in ["scale.png", "scale.svg", "scale.txt", "scale.json"] {
        assert!(out.join(name).exists(), "{name}");
    }
    assert!(std::fs::read(out.join("scale.png"))
        .unwrap()
        .starts_with(b"\x89PNG"));

    // Clean-up: no process, mount, cgroup or file of the bench is left.
    assert_eq!(
        doc["cleanup"]["processes_left"].as_array().unwrap().len(),
        0
    );
    assert_eq!(doc["cleanup"]["mounts_left"].as_array().unwrap().len(), 0);
    for s in result["started"].as_array().unwrap() {
        let pid = s["pid"].as_u64().unwrap() as u32;
        assert!(
            !process_alive(pid),
            "{} (PID {pid}) is still running",
            s["what"]
        );
    }
    assert!(veil_tests::mounts::mounts_below(dir).is_empty());
    let left: Vec<_> = std::fs::read_dir(work).unwrap().flatten().collect();
    assert!(left.is_empty(), "left in the work directory: {left:?}");
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let cgroups = own
        .lines()
        .find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_string()))
        .map(|p| Path::new("/sys/fs/cgroup/memory").join(p.trim_start_matches('/')))
        .unwrap_or_else(|| Path::new("/sys/fs/cgroup").to_path_buf());
    let leftover: Vec<_> = std::fs::read_dir(&cgroups)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("veil-bench-"))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    assert!(leftover.is_empty(), "cgroups left: {leftover:?}");
}
