//! `veil-demo`: shows Veil working as containerd's snapshotter, step by step.
//!
//! Starts veil-snapshotter and a private containerd (its own root, state and socket in a
//! temporary directory; a system containerd, if any, is not touched), builds a small image
//! locally, imports it into Veil, runs a container, restarts the snapshotter, runs the
//! container again, and cleans everything up.
//!
//! Run as root: `cargo run -p veil-tests --bin veil-demo` (add `-- --keep` to keep the
//! temporary directory with the logs).

use std::process::ExitCode;

use veil_tests::containerd::SNAPSHOTTER;
use veil_tests::scenario::{self, indent};

fn main() -> ExitCode {
    let keep = std::env::args().skip(1).any(|a| a == "--keep");
    if std::env::args().skip(1).any(|a| a == "-h" || a == "--help") {
        println!("usage: veil-demo [--keep]\n\nRuns Veil behind a private containerd and shows each step. Needs root.\n  --keep  keep the temporary directory (logs, config) afterwards");
        return ExitCode::SUCCESS;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("veil-demo mounts filesystems and runs containerd: run it as root.");
        return ExitCode::FAILURE;
    }

    println!("== Veil demo: containerd with Veil as its snapshotter ==\n");
    println!("Building veil-snapshotter (cargo build -p veil-snapshotter) if needed...");
    let veil_bin = match std::panic::catch_unwind(|| veil_tests::veil_binary("veil-snapshotter")) {
        Ok(p) => p,
        Err(_) => {
            eprintln!("Could not build or find veil-snapshotter (see the message above).");
            return ExitCode::FAILURE;
        }
    };
    println!("Using {}\n", veil_bin.display());

    let tmp = match tempfile::Builder::new().prefix("veil-demo-").tempdir() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("Could not create a temporary directory: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("Working in {}\n", tmp.path().display());

    let mut n = 0;
    let result = scenario::run(tmp.path(), &veil_bin, &mut |step| {
        n += 1;
        println!("{n:>2}. {step}\n");
    });

    let ok = match result {
        Ok(report) => {
            let expected = report.image.expected_output();
            let verdict = |out: &str| {
                if out == expected {
                    "as expected"
                } else {
                    "NOT what was expected"
                }
            };
            println!("== Summary ==");
            println!(
                "Image {} ({} layers) imported into the \"{SNAPSHOTTER}\" snapshotter.",
                report.image.reference,
                report.image.layer_count()
            );
            println!(
                "Container before the restart printed ({}):\n{}",
                verdict(&report.first_run),
                indent(&report.first_run)
            );
            println!(
                "Container after the restart printed ({}):\n{}",
                verdict(&report.second_run),
                indent(&report.second_run)
            );
            if !report.reconnect_errors.is_empty() {
                println!(
                    "While the snapshotter restarted, containerd reported:\n{}",
                    indent(&report.reconnect_errors.join("\n"))
                );
            }
            println!(
                "Last lines Veil logged:\n{}",
                indent(&report.veil_log_tail.join("\n"))
            );
            let s = &report.shutdown;
            println!(
                "Clean-up: containerd stopped ({}), veil-snapshotter stopped ({}); leftover \
                 tasks {}, containers {}, shims {}, mounts {}; processes still alive: {}.",
                s.exit.map(|e| e.to_string()).unwrap_or_else(|| "?".into()),
                report
                    .veil_final_exit
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "?".into()),
                s.tasks_killed.len(),
                s.containers_deleted.len(),
                s.shims_left.len(),
                s.mounts_left.len() + report.mounts_left.len(),
                report.still_alive.len()
            );
            report.first_run == expected
                && report.second_run == expected
                && report.still_alive.is_empty()
                && report.mounts_left.is_empty()
        }
        Err(e) => {
            eprintln!("The demo failed:\n{e:?}");
            false
        }
    };

    if keep {
        let path = tmp.keep();
        println!("\nKept {} (logs, containerd config).", path.display());
    }
    if ok {
        println!("\nDone: everything the demo started has been stopped and removed.");
        ExitCode::SUCCESS
    } else {
        println!("\nDone, with problems (see above). Everything started has been stopped.");
        ExitCode::FAILURE
    }
}
