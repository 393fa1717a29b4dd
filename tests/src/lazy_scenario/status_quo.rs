//! Step 10, the status quo side by side: the same image pulled and unpacked by containerd
//! itself into overlayfs, the same container run from it, then all of it removed.

use super::*;

/// containerd's content store below its root: where a layer blob lives.
fn content_blob_path(root: &Path, digest: &str) -> PathBuf {
    let (algorithm, hex) = digest.split_once(':').unwrap_or(("sha256", digest));
    root.join("io.containerd.content.v1.content")
        .join("blobs")
        .join(algorithm)
        .join(hex)
}

/// Where containerd's overlayfs snapshotter keeps its snapshots, below containerd's root.
fn overlay_snapshots_dir(root: &Path) -> PathBuf {
    root.join("io.containerd.snapshotter.v1.overlayfs")
        .join("snapshots")
}

/// Bytes in the regular files below `dir` (each inode once); 0 if it does not exist.
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(m) = entry.path().symlink_metadata() else {
                continue;
            };
            if m.is_dir() {
                dirs.push(entry.path());
            } else if m.is_file() && seen.insert((m.dev(), m.ino())) {
                total += m.len();
            }
        }
    }
    total
}

/// The final lines of `ctr images pull`'s output: it redraws a progress table with
/// terminal escape sequences (its last frame may predate the download's end, so the
/// registry's access log is what counts bytes); what is kept is the `unpacking` / `done`
/// lines.
fn pull_summary(stdout: &str) -> String {
    let mut plain = String::with_capacity(stdout.len());
    let mut chars = stdout.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // A CSI sequence: ESC [ parameters, then a final byte in @..~.
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        plain.push(if c == '\r' { '\n' } else { c });
    }
    // Table cells are padded with runs of spaces; one is enough here.
    let lines: Vec<String> = plain
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    lines
        .iter()
        .filter(|l| l.starts_with("unpacking") || l.starts_with("done"))
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The status quo: the same image pulled and run by containerd alone, then removed.
/// Failures are recorded in the result, not returned, so that the caller still cleans up
/// and shows everything else.
pub(super) fn status_quo(
    stack: &Stack,
    report: &LazyReport,
    say: &mut dyn FnMut(&str),
) -> StatusQuo {
    let mut sq = StatusQuo::new();
    if let Err(e) = status_quo_steps(stack, report, &mut sq, say) {
        let msg = format!("{e:#}");
        say(&format!(
            "The status-quo path (containerd's own pull) FAILED:\n{}",
            indent(&msg)
        ));
        sq.failure = Some(msg);
    }
    status_quo_cleanup(stack, report, &mut sq, say);
    sq
}

fn status_quo_steps(
    stack: &Stack,
    report: &LazyReport,
    sq: &mut StatusQuo,
    say: &mut dyn FnMut(&str),
) -> anyhow::Result<()> {
    let cd = stack.cd();
    let ns = sq.namespace.clone();
    let reference = report.reference.as_str();
    let total = report.layer_bytes_total();

    // The pull: every layer downloaded and unpacked.
    sq.pull_command = format!(
        "ctr -a {} -n {ns} images pull --plain-http {reference}",
        cd.address().display()
    );
    let before = stack.served();
    let t = Instant::now();
    let pulled = cd.ctr_like(
        Path::new("ctr"),
        &ns,
        &["images", "pull", "--plain-http", reference],
        CTR_PULL_TIMEOUT,
    );
    sq.pull_time = t.elapsed();
    sq.pull_fetched = stack
        .served()
        .iter()
        .zip(&before)
        .map(|(a, b)| a.saturating_sub(*b))
        .collect();
    sq.steps.push(StepCost {
        step: format!("ctr images pull ({DEFAULT_SNAPSHOTTER})"),
        time: sq.pull_time,
        layer_bytes: sq.pull_fetched_total(),
    });
    sq.pull_output = pulled
        .map(|o| pull_summary(&o.stdout))
        .map_err(|e| format!("{e:#}"));
    if let Err(e) = &sq.pull_output {
        bail!("{e}");
    }
    let images = cd.ctr_in(&ns, &["images", "ls", "-q"])?.stdout;
    if !images.lines().any(|l| l.trim() == reference) {
        bail!("after the pull containerd does not list {reference} in {ns}:\n{images}");
    }
    let root = cd.root();
    sq.snapshots = parse_snapshots(
        &cd.ctr_in(
            &ns,
            &["snapshots", "--snapshotter", DEFAULT_SNAPSHOTTER, "ls"],
        )?
        .stdout,
    )
    .len();
    sq.content_disk = report
        .layers
        .iter()
        .filter_map(|l| std::fs::metadata(content_blob_path(&root, &l.digest)).ok())
        .map(|m| m.len())
        .sum();
    sq.overlay_disk = disk_usage(&overlay_snapshots_dir(&root));
    let fetched = sq.pull_fetched_total();
    say(&format!(
        "Now the status quo, side by side: the same image pulled by containerd itself, as \
         without Veil, in a namespace of its own ({ns}) so that the two do not mix. Ran \
         `{}` (containerd's default snapshotter, {DEFAULT_SNAPSHOTTER}); it took {}, {} as long \
         as `veil pull` ({}). It printed (last lines):\n{}\nFor this pull the registry served \
         {} of the layers ({fetched} of {total} layer bytes, {:.2} %): containerd downloaded \
         every layer whole into its content store ({} of layer blobs in {}) and unpacked them \
         into {} {DEFAULT_SNAPSHOTTER} snapshots ({} of files in {}) before the pull returned.",
        sq.pull_command,
        secs(sq.pull_time),
        times(ratio(
            sq.pull_time.as_secs_f64(),
            report.pull_time.as_secs_f64()
        )),
        secs(report.pull_time),
        indent(sq.pull_output.as_deref().unwrap_or("")),
        human(fetched),
        percent(fetched, total),
        human(sq.content_disk),
        content_blob_path(&root, "sha256:")
            .parent()
            .unwrap_or(&root)
            .display(),
        sq.snapshots,
        human(sq.overlay_disk),
        overlay_snapshots_dir(&root).display()
    ));

    // The same small-file container, on overlayfs.
    let small_cmd: Vec<&str> = report.small.command.iter().map(String::as_str).collect();
    let small = run_container_in(
        stack,
        &ns,
        DEFAULT_SNAPSHOTTER,
        reference,
        "veil-demo-ctr-cat",
        &small_cmd,
    );
    sq.steps.push(StepCost {
        step: "container: cat two small files".into(),
        time: small.time,
        layer_bytes: small.fetched_total(),
    });
    let (pull_time, pull_fetched) = (sq.pull_time, sq.pull_fetched_total());
    let small = sq.small.insert(small);
    if let Err(e) = &small.output {
        bail!("running the container on {DEFAULT_SNAPSHOTTER} failed:\n{e}");
    }
    let cold = pull_time + small.time;
    let veil_cold = report.veil_cold_start();
    let served = pull_fetched + small.fetched_total();
    let veil_served = report.served_through_small();
    say(&format!(
        "Ran the same small-file container on it: `ctr -n {ns} run --rm --snapshotter \
         {DEFAULT_SNAPSHOTTER} {reference} veil-demo-ctr-cat {}`. It took {} and printed \
         ({}):\n{}\nThe registry served {} for it: every byte was on local disk already. From \
         the pull's start to this container's end (pull + container), containerd alone took {}, \
         {} as long as Veil's {} (`veil pull` {} + container {}); by then the registry had \
         served {} ({:.2} % of the layers) against Veil's {} ({:.2} %).",
        small_cmd.join(" "),
        secs(small.time),
        if small.stdout() == report.small_expected {
            "as expected"
        } else {
            "NOT what was expected"
        },
        indent(small.stdout()),
        human(small.fetched_total()),
        secs(cold),
        times(ratio(cold.as_secs_f64(), veil_cold.as_secs_f64())),
        secs(veil_cold),
        secs(report.pull_time),
        secs(report.small.time),
        human(served),
        percent(served, total),
        human(veil_served),
        percent(veil_served, total)
    ));
    Ok(())
}

/// Removes what the status quo put into containerd (its container if it is still there,
/// the image, and through containerd's garbage collector the layer blobs and overlayfs
/// snapshots, then the namespace) and checks that nothing of it is left.
fn status_quo_cleanup(
    stack: &Stack,
    report: &LazyReport,
    sq: &mut StatusQuo,
    say: &mut dyn FnMut(&str),
) {
    let cd = stack.cd();
    let ns = sq.namespace.clone();
    let root = cd.root();
    let t = Instant::now();
    let mut left = Vec::new();
    let (tasks, containers) = cd.clear_namespace(&ns);
    left.extend(tasks.iter().map(|id| format!("task {id} (killed)")));
    left.extend(
        containers
            .iter()
            .map(|id| format!("container {id} (deleted)")),
    );
    // Fails when the pull did not get as far as the image; the checks below tell.
    let _ = cd.ctr_in(&ns, &["images", "rm", "--sync", &report.reference]);
    let list = |args: &[&str]| -> Vec<String> {
        match cd.ctr_in(&ns, args) {
            Ok(out) => out.stdout.lines().map(str::to_string).collect(),
            Err(e) => vec![format!("(`ctr {}` failed: {e:#})", args.join(" "))],
        }
    };
    left.extend(
        list(&["images", "ls", "-q"])
            .into_iter()
            .filter(|l| !l.trim().is_empty())
            .map(|l| format!("image {l}")),
    );
    left.extend(
        list(&["content", "ls", "-q"])
            .into_iter()
            .filter(|l| !l.trim().is_empty())
            .map(|l| format!("content {l}")),
    );
    left.extend(
        parse_snapshots(
            &list(&["snapshots", "--snapshotter", DEFAULT_SNAPSHOTTER, "ls"]).join("\n"),
        )
        .into_iter()
        .map(|r| format!("{DEFAULT_SNAPSHOTTER} snapshot {}", r.key)),
    );
    // containerd refuses to remove a namespace that still holds anything.
    let exists = cd
        .ctr_stdout(&["namespaces", "ls", "-q"])
        .map_or(true, |out| out.split_whitespace().any(|n| n == ns));
    if exists {
        if let Err(e) = cd.ctr(&["namespaces", "rm", &ns]) {
            left.push(format!(
                "namespace {ns} (`ctr namespaces rm` failed: {e:#})"
            ));
        }
    }
    // On disk: the layer blobs (unless Veil's namespace holds them too) and the snapshot
    // directories, which the garbage collector removes.
    let overlay_dir = overlay_snapshots_dir(&root);
    let start = Instant::now();
    let on_disk = loop {
        let mut found: Vec<String> = report
            .layers
            .iter()
            .filter(|l| !report.layers_in_content_store.contains(&l.digest))
            .map(|l| content_blob_path(&root, &l.digest))
            .filter(|p| p.exists())
            .map(|p| format!("file {}", p.display()))
            .collect();
        found.extend(
            std::fs::read_dir(&overlay_dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| format!("directory {}", e.path().display())),
        );
        if found.is_empty() || start.elapsed() > Duration::from_secs(5) {
            break found;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    left.extend(on_disk);
    sq.left_after_cleanup = left;
    let time = t.elapsed();
    sq.steps.push(StepCost {
        step: "remove image, blobs, snapshots".into(),
        time,
        layer_bytes: 0,
    });
    say(&format!(
        "Removed the status quo again, in {}: `ctr -n {ns} images rm --sync {}` (containerd's \
         garbage collector deleted the layer blobs and the {DEFAULT_SNAPSHOTTER} snapshots with \
         it) and `ctr namespaces rm {ns}`. {}",
        secs(time),
        report.reference,
        if sq.left_after_cleanup.is_empty() {
            format!(
                "Nothing of it is left: no layer blob in {}, no snapshot in {}, no namespace \
                 {ns}; Veil's namespace {NAMESPACE} is untouched.",
                content_blob_path(&root, "sha256:")
                    .parent()
                    .unwrap_or(&root)
                    .display(),
                overlay_dir.display()
            )
        } else {
            format!(
                "LEFT BEHIND:\n{}",
                indent(&sq.left_after_cleanup.join("\n"))
            )
        }
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_summary_keeps_the_final_lines() {
        let out = "\u{1b}[2Kmanifest-sha256:ab: downloading |---| 0.0 B/935 B\n\
                   elapsed: 0.1 s    total:   0.0 B (0.0 B/s)\n\u{1b}[2A\u{1b}[J\
                   manifest-sha256:ab: done |+++| 935 B/935 B\r\n\
                   elapsed: 0.6 s      total:  65.2 M (107.9 MiB/s)\n\
                   unpacking linux/amd64 sha256:ab...\n\
                   done: 874.7ms\n";
        assert_eq!(
            pull_summary(out),
            "unpacking linux/amd64 sha256:ab...\n\
             done: 874.7ms"
        );
    }

    #[test]
    fn ratios() {
        assert_eq!(times(ratio(3.0, 2.0)), "1.5×");
        assert_eq!(times(ratio(250.0, 2.0)), "125×");
        assert_eq!(times(ratio(1.0, 0.0)), "n/a");
    }
}
