//! `veil-demo`: shows Veil's main job, step by step: a container started from an image
//! whose layers are never downloaded.
//!
//! First the attested, encrypted flow (`veil_tests::attested_scenario`): the demo image is
//! converted with `veil convert --encrypt --kbs-kid ...`, the test KBS (sample TEE) holds
//! its KEK, veil-snapshotter gets the KEK after attestation, and `veil pull` + `ctr run`
//! start containers from the encrypted layers lazily; the bytes fetched per layer and the
//! KBS's authentication, attestation and resource counts are printed. Then the same image
//! unencrypted, against the status quo (`--flow` picks one of the two).
//!
//! In the unencrypted flow, in a temporary directory it starts Debian's docker-registry on loopback, builds a small
//! image (busybox, small files, a large random file), converts it to eStargz with Veil's
//! writer and pushes it, starts veil-snapshotter and a private containerd (its own root,
//! state and socket; a system containerd, if any, is not touched), pulls the image with
//! `veil pull`, runs containers from it with `ctr run --snapshotter veil` while counting the
//! bytes the registry serves, restarts the snapshotter and runs a container again. Then,
//! side by side, the status quo: the same image pulled by containerd itself (`ctr images
//! pull`, every layer downloaded and unpacked into overlayfs) and the same container run
//! from it, with both paths' pull and cold-start times and registry bytes compared. Then it
//! cleans everything up. The flow itself is `veil_tests::lazy_scenario`, which the `demo`
//! test runs too.
//!
//! `--import` runs the older registry-free demo instead (`veil_tests::scenario`): an image
//! imported with `ctr images import`, unpacked by containerd into Veil.
//!
//! Run as root: `./scripts/demo` or `cargo run -p veil-tests --bin veil-demo -- --help`.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use veil_tests::attested_scenario;
use veil_tests::containerd::SNAPSHOTTER;
use veil_tests::lazy_image::LayerFormat;
use veil_tests::lazy_scenario::{
    self, human, percent, ratio, secs, times, Binaries, LazyReport, Options, StepCost,
    DEFAULT_SNAPSHOTTER,
};
use veil_tests::scenario::{self, indent};

/// Veil's demo: start a container from a registry image without downloading its layers.
///
/// First with an encrypted image whose key a KBS releases after attestation (the default
/// `--flow all` runs it first): the image is converted with `veil convert --encrypt
/// --kbs-kid kbs:///default/image_key/veil-demo --kek-file KEK`, a test KBS (Trustee's
/// protocol, sample TEE) on 127.0.0.1 holds the KEK, veil-snapshotter is configured with the
/// `kbs` KEK source and the sample attester, and `veil pull` + `ctr run --snapshotter veil`
/// read two small files and then the large file; the demo prints each layer's fetched
/// bytes against its size and how many authentications, attestations and resource requests
/// the KBS saw for the whole image.
///
/// Then the unencrypted image against the status quo. Everything happens in a temporary directory and is stopped and removed at the end:
/// Debian's docker-registry on 127.0.0.1, veil-snapshotter, and a private containerd with
/// Veil as its snapshotter "veil" (a system containerd, if any, is not touched; nothing is
/// fetched from the internet). The demo builds a two-layer image (busybox-static and small
/// files; a large random file), converts the layers to eStargz with Veil's own writer,
/// pushes it, runs `veil pull` (manifest and config only), then `ctr run --snapshotter veil`
/// a container that reads two small files and one that computes the large file's SHA-256,
/// showing after each how many layer bytes the registry served. It shows `veil status`,
/// restarts veil-snapshotter (which mounts its lazy layers again) and runs the first
/// container once more. For comparison it then pulls the same image the usual way, with
/// containerd's own `ctr images pull` into its overlayfs snapshotter (in a namespace of its
/// own, removed afterwards), and runs the same container from it. It prints a table of each
/// step's time and fetched bytes, and Veil's pull and cold-start times and registry bytes
/// against the status quo's.
///
/// Needs root, containerd, runc, docker-registry, busybox-static and FUSE (`scripts/setup`
/// installs them). Exits with 0 when every check passed.
#[derive(Debug, Parser)]
#[command(name = "veil-demo", version)]
struct Cli {
    /// Keep the working directory afterwards (logs, configs, registry data).
    #[arg(long)]
    keep: bool,
    /// How the image's layers are packed.
    #[arg(long, value_enum, default_value_t = Format::Estargz)]
    format: Format,
    /// Size of the random file in the image's second layer, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..=1024))]
    big_mib: u64,
    /// Let Veil fetch whole layers into its disk cache in the background once they are
    /// mounted ([lazy] background_fetch). Off by default, so that the byte counts show what
    /// the containers' reads alone cost.
    #[arg(long)]
    background_fetch: bool,
    /// Run the older registry-free demo instead: a locally built image imported with `ctr
    /// images import` (containerd unpacks the layers into Veil), a container run, the
    /// snapshotter restarted, the container run again.
    #[arg(long, conflicts_with_all = ["format", "big_mib", "background_fetch", "flow"])]
    import: bool,
    /// Which flows to run: the encrypted image with its key released after attestation,
    /// the unencrypted image against the status quo, or both (in that order).
    #[arg(long, value_enum, default_value_t = Flow::All)]
    flow: Flow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Flow {
    /// Both: attested (encrypted) first, then unencrypted against the status quo.
    All,
    /// The encrypted image, its KEK released by the test KBS after attestation.
    Attested,
    /// The unencrypted image, then containerd's own pull of it side by side.
    Lazy,
    /// Inside a CoCo guest: veil-guest on the CDH socket, kata-agent's PullImage of an
    /// encrypted image whose KEK the test KBS releases after attestation, runc.
    Guest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// eStargz (gzip members with a table of contents).
    Estargz,
    /// zstd:chunked (zstd frames with a table of contents).
    ZstdChunked,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("veil-demo mounts filesystems and runs containerd: run it as root.");
        return ExitCode::FAILURE;
    }

    if cli.flow == Flow::Guest && !cli.import {
        println!(
            "== Veil demo: a pod's image pulled inside a CoCo guest (veil-guest on the CDH \
             socket), its key released after attestation ==\n"
        );
        println!("Building veil-guest (cargo build -p veil-cli) if needed...\n");
        let ok = guest_demo((cli.big_mib as usize) << 20);
        return if ok {
            println!("\nDone: everything the demo started has been stopped and removed.");
            ExitCode::SUCCESS
        } else {
            println!("\nDone, with problems (see above). Everything started has been stopped.");
            ExitCode::FAILURE
        };
    }
    if cli.import {
        println!("== Veil demo (--import): containerd with Veil as its snapshotter ==\n");
    } else if cli.flow == Flow::Lazy {
        println!("== Veil demo: a container started lazily ==\n");
    } else {
        println!(
            "== Veil demo: containers started lazily from an encrypted image, its key released \
             after attestation ==\n"
        );
    }
    println!("Building veil-snapshotter and veil (cargo build -p veil-cli) if needed...");
    let bins = match std::panic::catch_unwind(Binaries::build) {
        Ok(b) => b,
        Err(_) => {
            eprintln!("Could not build or find Veil's binaries (see the message above).");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "Using {} and {}\n",
        bins.snapshotter.display(),
        bins.veil.display()
    );

    let tmp = match tempfile::Builder::new().prefix("veil-demo-").tempdir() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("Could not create a temporary directory: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("Working in {}\n", tmp.path().display());

    let ok = if cli.import {
        import_demo(tmp.path(), &bins)
    } else {
        let opts = Options {
            format: match cli.format {
                Format::Estargz => LayerFormat::Estargz,
                Format::ZstdChunked => LayerFormat::ZstdChunked,
            },
            big_size: (cli.big_mib as usize) << 20,
            background_fetch: cli.background_fetch,
        };
        let mut ok = true;
        if cli.flow != Flow::Lazy {
            ok &= attested_demo(&opts);
        }
        if cli.flow != Flow::Attested {
            if cli.flow == Flow::All {
                println!(
                    "\n== Part 2: the same image unencrypted, lazily, and the status quo side by \
                     side ==\n"
                );
            }
            ok &= lazy_demo(tmp.path(), &bins, &opts);
        }
        ok
    };

    if cli.keep {
        let path = tmp.keep();
        println!("\nKept {} (logs, configs, registry data).", path.display());
    }
    if ok {
        println!("\nDone: everything the demo started has been stopped and removed.");
        ExitCode::SUCCESS
    } else {
        println!("\nDone, with problems (see above). Everything started has been stopped.");
        ExitCode::FAILURE
    }
}

/// The guest flow (`veil_tests::guest_scenario`): prints each step and the summary;
/// whether every check passed.
fn guest_demo(big_size: usize) -> bool {
    let report = match veil_tests::guest_scenario::run(big_size, &mut |s| println!("{s}\n")) {
        Ok(r) => r,
        Err(e) => {
            println!("The guest flow failed: {e:#}");
            return false;
        }
    };
    println!("== Summary ==\n{}", report.summary());
    let mut ok = true;
    let mut check = |good: bool, what: &str| {
        if !good {
            println!("PROBLEM: {what}");
            ok = false;
        }
    };
    check(
        report.answered_digest == report.pushed_digest,
        "PullImage answered another digest than the one pushed",
    );
    check(
        report.output == report.expected_output,
        "the container printed something else than the image's files",
    );
    check(
        report.kbs_attest == 1 && report.kbs_kek_reads == 1,
        "the KBS did not see exactly one attestation and one KEK read",
    );
    check(
        report.measurements == [(report.image.clone(), report.answered_digest.clone())],
        "the pull was not recorded once in the runtime measurements",
    );
    check(report.left_mounted.is_empty(), "mounts were left behind");
    match &report.status_quo {
        Ok(sq) => {
            check(
                sq.output == report.output,
                "the status quo's container printed something else than Veil's",
            );
            check(
                report.served() < report.image_bytes(),
                "Veil fetched the whole image",
            );
            check(
                sq.served() >= report.image_bytes(),
                "the status quo fetched less than the whole image",
            );
            check(
                sq.left_mounted.is_empty(),
                "the status quo left mounts behind",
            );
        }
        Err(_) => check(false, "the status quo's whole pull failed"),
    }
    ok
}

/// The encrypted image, its KEK released by the test KBS after attestation.
fn attested_demo(opts: &Options) -> bool {
    println!("== Part 1: an encrypted image, its key released by a KBS after attestation ==\n");
    let mut n = 0;
    let result = attested_scenario::run(opts, &mut |step| {
        n += 1;
        println!("{n:>2}. {step}\n");
    });
    match result {
        Ok(report) => {
            println!("== Summary (encrypted, attested) ==");
            print!("{}", report.summary());
            let problems = report.problems();
            if problems.is_empty() {
                println!("Every check passed.");
                true
            } else {
                println!("Problems:");
                for p in &problems {
                    println!("  - {p}");
                }
                false
            }
        }
        Err(e) => {
            eprintln!("The attested demo failed:\n{e:?}");
            false
        }
    }
}

fn lazy_demo(dir: &Path, bins: &Binaries, opts: &Options) -> bool {
    let mut n = 0;
    let result = lazy_scenario::run(dir, bins, opts, &mut |step| {
        n += 1;
        println!("{n:>2}. {step}\n");
    });
    match result {
        Ok(report) => show_lazy_summary(&report),
        Err(e) => {
            eprintln!("The demo failed:\n{e:?}");
            false
        }
    }
}

/// Prints the summary; returns whether every check passed.
fn show_lazy_summary(r: &LazyReport) -> bool {
    let total = r.layer_bytes_total();
    println!("== Summary ==");
    println!(
        "Image {} ({} {} layers, {} in all) pulled with `veil pull`: {} of {} layers lazy, {} \
         downloaded.",
        r.reference,
        r.layers.len(),
        lazy_scenario::format_name(r.options.format),
        human(total),
        r.lazy_layers,
        r.layers.len(),
        r.layers_in_content_store.len()
    );
    println!();
    print_steps(&r.steps, total);
    println!(
        "    (FETCHED: layer-blob bytes the registry served during the step, from its access \
         log.)"
    );
    println!();
    show_status_quo(r);
    let served = r.served_through_small();
    let (big_served, big_size) = r.big_layer_served_through_small();
    println!(
        "Reading two small files in a container: registry served {} of {} layer bytes ({:.2} \
         %); of the large file's layer, {} of {} ({:.3} %).",
        human(served),
        human(total),
        percent(served, total),
        human(big_served),
        human(big_size),
        percent(big_served, big_size)
    );
    println!(
        "sha256sum of the {} file in a container: {}.",
        human(r.options.big_size as u64),
        if r.sha_matches {
            "matched"
        } else {
            "DID NOT match"
        }
    );
    match r.restart.run.as_ref().map(|run| &run.output) {
        Some(Ok(out)) if *out == r.small_expected => {
            println!("After restarting veil-snapshotter the container printed the same files.")
        }
        Some(Ok(out)) => println!(
            "After restarting veil-snapshotter the container printed something else:\n{}",
            indent(out)
        ),
        Some(Err(e)) => println!(
            "After restarting veil-snapshotter the container FAILED:\n{}",
            indent(e)
        ),
        None => println!(
            "veil-snapshotter could not be restarted:\n{}",
            indent(r.restart.failure.as_deref().unwrap_or("(no details)"))
        ),
    }
    let status_layers = r.status_json["layers"].as_array().map_or(0, Vec::len);
    let remote = r.status_json["remote_snapshots"].as_u64().unwrap_or(0);
    if remote > 0 && status_layers == 0 {
        println!(
            "Note: `veil status` counted {remote} lazily served snapshot(s) but listed no layers \
             and {} fetched, while the registry served {}: this build's lazy layer resolver \
             does not report its figures to `veil status` yet.",
            human(
                r.status_json["registry_bytes_fetched"]
                    .as_u64()
                    .unwrap_or(0)
            ),
            human(r.steps.iter().map(|s| s.layer_bytes).sum())
        );
    }
    if !r.veil_warnings.is_empty() {
        println!(
            "veil-snapshotter logged {} warning(s)/error(s):\n{}",
            r.veil_warnings.len(),
            indent(&r.veil_warnings.join("\n"))
        );
    }
    println!("Clean-up: {}", r.cleanup.summary());
    let problems = r.problems();
    if problems.is_empty() {
        println!("Every check passed.");
        true
    } else {
        println!("Problems:");
        for p in &problems {
            println!("  - {p}");
        }
        false
    }
}

/// A table of steps: time, layer bytes fetched, and fetched so far against `total`.
fn print_steps(steps: &[StepCost], total: u64) {
    println!(
        "    {:<34} {:>9} {:>10}   FETCHED SO FAR (OF THE LAYERS)",
        "STEP", "TIME", "FETCHED"
    );
    let mut so_far = 0u64;
    let mut time = Duration::ZERO;
    for s in steps {
        so_far += s.layer_bytes;
        time += s.time;
        println!(
            "    {:<34} {:>9} {:>10}   {:>9} ({:.2} %)",
            s.step,
            secs(s.time),
            human(s.layer_bytes),
            human(so_far),
            percent(so_far, total)
        );
    }
    println!(
        "    {:<34} {:>9} {:>10}   of {} in the layers",
        "total",
        secs(time),
        human(so_far),
        human(total)
    );
}

/// The status quo's steps, and Veil against it.
fn show_status_quo(r: &LazyReport) {
    let sq = &r.status_quo;
    let total = r.layer_bytes_total();
    println!(
        "The status quo, side by side: the same image pulled by containerd itself (`ctr images \
         pull --plain-http`, snapshotter {DEFAULT_SNAPSHOTTER}, namespace {}), after Veil's \
         path:",
        sq.namespace
    );
    println!();
    print_steps(&sq.steps, total);
    println!();
    let cell = |d: Option<Duration>| d.map_or_else(|| "failed".to_string(), secs);
    let t_ratio = |a: Option<Duration>, b: Duration| {
        times(a.and_then(|a| ratio(a.as_secs_f64(), b.as_secs_f64())))
    };
    let ctr_pull = sq.pull_output.is_ok().then_some(sq.pull_time);
    let veil_cold = r.veil_cold_start();
    let ctr_cold = sq.cold_start();
    let veil_bytes = r.served_through_small();
    let ctr_bytes = sq.served_through_small();
    println!(
        "    {:<40} {:>18} {:>20}   CTR / VEIL",
        "VEIL AGAINST THE STATUS QUO", "VEIL", "CTR PULL+OVERLAYFS"
    );
    println!(
        "    {:<40} {:>18} {:>20}   {}",
        "pull",
        secs(r.pull_time),
        cell(ctr_pull),
        t_ratio(ctr_pull, r.pull_time)
    );
    println!(
        "    {:<40} {:>18} {:>20}   {}",
        "cold start: pull + small-file container",
        secs(veil_cold),
        cell(ctr_cold),
        t_ratio(ctr_cold, veil_cold)
    );
    println!(
        "    {:<40} {:>18} {:>20}   {}",
        "layer bytes served by then",
        format!(
            "{} ({:.2} %)",
            human(veil_bytes),
            percent(veil_bytes, total)
        ),
        format!("{} ({:.2} %)", human(ctr_bytes), percent(ctr_bytes, total)),
        times(ratio(ctr_bytes as f64, veil_bytes as f64))
    );
    println!(
        "    (Times are one run's wall-clock times on this machine, registry on loopback; \
         bytes from the registry's access log.)"
    );
    println!(
        "The status quo also kept {} of layer blobs and {} of unpacked files on disk until it \
         was removed; {}.",
        human(sq.content_disk),
        human(sq.overlay_disk),
        if sq.left_after_cleanup.is_empty() {
            "nothing of it is left".to_string()
        } else {
            format!("LEFT BEHIND: {}", sq.left_after_cleanup.join("; "))
        }
    );
    println!();
}

/// The older registry-free flow (`--import`).
fn import_demo(dir: &Path, bins: &Binaries) -> bool {
    let mut n = 0;
    let result = scenario::run(dir, &bins.snapshotter, &mut |step| {
        n += 1;
        println!("{n:>2}. {step}\n");
    });
    match result {
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
            println!("Clean-up: {}", report.cleanup.summary());
            report.first_run == expected
                && report.second_run == expected
                && report.cleanup.problems().is_empty()
        }
        Err(e) => {
            eprintln!("The demo failed:\n{e:?}");
            false
        }
    }
}
