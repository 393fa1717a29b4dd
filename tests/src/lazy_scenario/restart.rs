//! Step 9: veil-snapshotter restarted on the same root, its remote layers mounted again,
//! the first container run once more.

use super::*;

/// Restarts veil-snapshotter and runs the first container again. Failures are recorded
/// in the result (with the logs' relevant lines), not returned, so that the caller still
/// cleans up and shows everything else.
pub(super) fn restart(
    stack: &mut Stack,
    bins: &Binaries,
    report: &LazyReport,
    steps: &mut Vec<StepCost>,
    say: &mut dyn FnMut(&str),
) -> Restart {
    let mut r = Restart {
        old_pid: *stack.veil.pids.last().unwrap_or(&0),
        exit: None,
        mounts_after_stop: Vec::new(),
        new_pid: 0,
        remount_log: Vec::new(),
        reconnect_time: Duration::ZERO,
        reconnect_errors: Vec::new(),
        status_text: Err("not run".into()),
        run: None,
        failure: None,
    };
    let before = stack.served_total();
    let t = Instant::now();
    r.exit = stack.veil.stop();
    r.mounts_after_stop = crate::mounts::mounts_below(stack.veil.root());
    let started = stack
        .veil
        .start()
        .context("starting veil-snapshotter again on the same root");
    let reconnected = started.and_then(|pid| {
        r.new_pid = pid;
        let cd = stack.containerd.as_ref().expect("containerd started");
        wait_for_reconnect(cd, &mut stack.veil)
    });
    let log = stack.veil.log_text();
    r.remount_log = log
        .lines()
        .filter(|l| {
            l.contains("mounted remote layers again")
                || l.contains("could not mount remote layer")
                || l.contains("disk cache ready")
        })
        .map(str::to_string)
        .collect();
    steps.push(StepCost {
        step: "restart veil-snapshotter".into(),
        time: t.elapsed(),
        layer_bytes: stack.served_total().saturating_sub(before),
    });
    let exit = r
        .exit
        .map(|s| s.to_string())
        .unwrap_or_else(|| "no exit status".into());
    let stopped = format!(
        "Stopped veil-snapshotter (PID {}) with SIGTERM: {exit}; {} mount(s) left below its root \
         {}.",
        r.old_pid,
        r.mounts_after_stop.len(),
        stack.veil.root().display()
    );
    match reconnected {
        Ok(rc) => {
            r.reconnect_time = rc.time;
            r.reconnect_errors = rc.errors;
        }
        Err(e) => {
            let msg = format!(
                "{e:#}\n--- last lines of the restarted veil-snapshotter's log ---\n{}",
                tail(&log, 30).join("\n")
            );
            say(&format!(
                "{stopped} Starting it again on the same root FAILED:\n{}",
                indent(&msg)
            ));
            r.failure = Some(msg);
            return r;
        }
    }
    let status_arg = report.status_socket.to_string_lossy().into_owned();
    r.status_text = stack
        .veil_tool(
            &bins.veil,
            &["status", "--address", &status_arg],
            "veil-status-after-restart",
        )
        .map_err(|e| format!("{e:#}"))
        .and_then(|out| {
            if out.status.success() {
                Ok(text(&out.stdout))
            } else {
                Err(format!(
                    "veil status failed ({}): {}",
                    out.status,
                    text(&out.stderr)
                ))
            }
        });
    say(&format!(
        "{stopped} Started it again (PID {}) on the same root. It logged about its remote \
         layers:\n{}\ncontainerd reached it after {}{}. `veil status` now says:\n{}",
        r.new_pid,
        indent(&r.remount_log.join("\n")),
        secs(r.reconnect_time),
        if r.reconnect_errors.is_empty() {
            String::new()
        } else {
            format!(
                " (with {} distinct error(s) on the way: {})",
                r.reconnect_errors.len(),
                r.reconnect_errors.join(" | ")
            )
        },
        indent(match &r.status_text {
            Ok(t) => t.trim_end(),
            Err(e) => e.as_str(),
        })
    ));

    // The container again.
    let small_cmd: Vec<&str> = report.small.command.iter().map(String::as_str).collect();
    let before = stack.served_total();
    let run = run_container(stack, &report.reference, "veil-demo-again", &small_cmd);
    steps.push(StepCost {
        step: "container again after restart".into(),
        time: run.time,
        layer_bytes: stack.served_total().saturating_sub(before),
    });
    match &run.output {
        Ok(out) => say(&format!(
            "Ran the first container again after the restart: `{}`. It took {} and printed \
             ({}):\n{}\n{}",
            small_cmd.join(" "),
            secs(run.time),
            if *out == report.small_expected {
                "as expected"
            } else {
                "NOT what was expected"
            },
            indent(out),
            if run.fetched_total() == 0 {
                format!(
                    "The registry served nothing for it: Veil's disk cache ({}), which outlives \
                     the process, already held every byte it read.",
                    stack.veil.root().join("cache").display()
                )
            } else {
                format!(
                    "It made the registry serve {}: the new process started with an empty \
                     memory cache.",
                    human(run.fetched_total())
                )
            }
        )),
        Err(e) => {
            let log = stack.veil.log_text();
            say(&format!(
                "Running the first container again after the restart FAILED ({}):\n{}\n\
                 The restarted veil-snapshotter's last log lines:\n{}",
                secs(run.time),
                indent(e),
                indent(&tail(&log, 20).join("\n"))
            ));
        }
    }
    r.run = Some(run);
    r
}
