//! `veil bench` end to end on a tiny image (busybox sample, one run, a fast shaped link):
//! every mode is in the JSON, the lazy modes fetched less than their image, the workload
//! printed what it should in every mode, the plot files are there, and nothing the bench
//! started is left running or mounted. Timings are the bench's to report, not asserted.

use std::time::Duration;

mod common;

use veil_tests::containerd::process_alive;

#[test]
fn veil_bench_on_a_tiny_image() {
    let run = common::run_bench(
        &["--sample", "busybox", "--size", "4", "--runs", "1"],
        Duration::from_secs(300),
    );
    let (dir, out, work, json, ran) = (&run.dir, &run.out, &run.work, &run.json, &run.ran);
    let stdout = String::from_utf8_lossy(&ran.stdout);
    let stderr = String::from_utf8_lossy(&ran.stderr);
    assert!(
        ran.status.success(),
        "veil bench failed ({}):\n{stdout}\n{stderr}",
        ran.status
    );
    assert!(stdout.contains("speed-up"), "no table:\n{stdout}");

    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap();
    let point = &doc["result"]["points"][0];
    let modes = point["modes"].as_array().unwrap();
    let names: Vec<&str> = modes.iter().map(|m| m["mode"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "status-quo",
            "stargz-snapshotter",
            "status-quo-enc-estargz",
            "veil-estargz",
            "veil-estargz-enc",
            "veil-estargz-enc-prefetch",
            "veil-estargz-enc-optimized",
            "status-quo-enc-zstd-chunked",
            "veil-zstd-chunked",
            "veil-zstd-chunked-enc",
            "veil-zstd-chunked-enc-prefetch",
            "veil-zstd-chunked-enc-optimized"
        ]
    );
    // The read set (and the limit) is measured: the files the workload really read.
    let result = &doc["result"];
    assert_eq!(result["read_set_source"], "measured");
    assert!(result["read_set_files"].as_u64().unwrap() >= 2, "{result}");
    assert!(result["read_set_compressed_bytes"].as_u64().unwrap() > 0);
    let expect = doc["result"]["expect"].as_str().unwrap();
    assert_eq!(expect.len(), 64, "the busybox workload prints a sha256");
    for m in modes {
        let name = m["mode"].as_str().unwrap();
        let image = m["image_bytes"].as_u64().unwrap();
        let runs = m["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 1, "{name}");
        let r = &runs[0];
        assert!(r["error"].is_null(), "{name}: {}", r["error"]);
        assert!(r["output_ok"].as_bool().unwrap(), "{name}: {}", r["output"]);
        assert!(
            r["output"].as_str().unwrap().contains(expect),
            "{name}: {}",
            r["output"]
        );
        assert!(r["total_s"].as_f64().unwrap() > 0.0, "{name}");
        let fetched = r["fetched_bytes"].as_u64().unwrap();
        // The status quo, encrypted or not, downloads the whole image.
        if name.starts_with("status-quo") {
            assert!(fetched >= image, "{name}: fetched {fetched} of {image}");
        } else {
            assert!(
                image > 0 && fetched < image,
                "{name}: fetched {fetched} of {image}"
            );
        }
    }
    assert!(doc["all_ok"].as_bool().unwrap());
    // The two limits: the transfer limit, and with the workload's run from a local
    // snapshot (the status quo modes' run part) on top; both in the table.
    let limit = point["limit_s"].as_f64().unwrap();
    let local_run = point["local_run_s"].as_f64().unwrap();
    assert!(limit > 0.0 && local_run > 0.0, "{point}");
    let with_run = point["limit_with_run_s"].as_f64().unwrap();
    assert!((with_run - (limit + local_run)).abs() < 1e-9, "{point}");
    assert!(
        stdout.contains(&format!("{with_run:.2} s")) && stdout.contains("×limit+run"),
        "the limit with the local run is not in the table:\n{stdout}"
    );

    for (name, min) in [("cold-start.png", 20_000), ("cold-start.svg", 5_000)] {
        let len = std::fs::metadata(out.join(name))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(len > min, "{name}: {len} bytes");
    }
    let png = std::fs::read(out.join("cold-start.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    let svg = std::fs::read_to_string(out.join("cold-start.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("status quo"));

    // Clean-up: what the bench says, and what is true.
    let cleanup = &doc["cleanup"];
    assert_eq!(cleanup["processes_left"].as_array().unwrap().len(), 0);
    assert_eq!(cleanup["mounts_left"].as_array().unwrap().len(), 0);
    assert!(!cleanup["work_dir_exists"].as_bool().unwrap());
    let started = doc["result"]["started"].as_array().unwrap();
    assert!(started.len() >= 15, "{started:?}");
    for s in started {
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
}
