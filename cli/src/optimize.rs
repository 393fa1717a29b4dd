//! `veil optimize SRC DST`: `veil convert` with a prefetch list recorded from the
//! workload itself (what `ctr-remote image optimize` does).
//!
//! SRC (a registry image, plain or lazily pullable, encrypted or not) is mounted lazily
//! in this process with Veil's own FUSE, so every open and read of a file is seen
//! ([`veil_fusefs::access_log`]); a writable overlay goes on top and the image's
//! Entrypoint + Cmd (or `--cmd`) runs once in it with `runc` ([`crate::workload`]). The
//! files it touched, first touch first, become the prefetch list: DST is converted with
//! them first in their layers and the prefetch landmark after them, with all of
//! `veil convert`'s options (format, chunk size, encryption). With `--access-list FILE`
//! nothing is run: the list comes from a file, e.g. one `veil status --access-order`
//! dumped from a running daemon.
//!
//! The recorded list names files (plaintext of an encrypted image): it is written only
//! to `--record-to` (mode 0600), never printed or logged; the report gives counts.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use oci_spec::image::ImageConfiguration;
use veil_blob::display::human_bytes as human;
use veil_convert::convert;
use veil_convert::store::ImageLocation;
use veil_daemon::config::Config;
use veil_daemon::no_core_dumps::forbid_core_dumps;
use veil_daemon::wiring;
use veil_fusefs::mount::MountOptions;
use veil_fusefs::promote::PromoteOptions;
use veil_image::image_mount;
use veil_image::layers::LazyOptions;
use veil_image::status::{merged_access_list, AccessOrder};
use veil_registry::{ClientOptions, Platform, Reference};

use crate::convert_cli::{convert_options, read_prefetch_list, ConvertArgs};
use crate::progress::Bars;
use crate::run::{print_report, runtime};
use crate::workload::{Bundle, Workload};

/// How long the workload may run by default.
const DEFAULT_TIMEOUT_SECS: u64 = 300;

/// `veil optimize SRC DST`.
#[derive(Debug, Args)]
pub struct OptimizeArgs {
    /// What `veil convert` takes: SRC, DST, the format and the encryption options.
    #[command(flatten)]
    pub convert: ConvertArgs,
    /// Run this shell command (`/bin/sh -c CMD` in the image) instead of the image's
    /// Entrypoint + Cmd.
    #[arg(long, value_name = "CMD", conflicts_with = "access_list")]
    pub cmd: Option<String>,
    /// Do not run anything: take the list from FILE (one path a line, first touch
    /// first, # comments), e.g. what `veil status --access-order` printed.
    #[arg(long, value_name = "FILE")]
    pub access_list: Option<PathBuf>,
    /// Also write the recorded list to FILE (mode 0600; it names the image's files).
    #[arg(long, value_name = "FILE")]
    pub record_to: Option<PathBuf>,
    /// Kill the workload after this many seconds (and fail).
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_TIMEOUT_SECS)]
    pub timeout: u64,
    /// Convert even when the workload exits with an error (what it read so far is used).
    #[arg(long)]
    pub allow_failure: bool,
    /// veil-snapshotter's config file, for mounting SRC: registry access, cache budget,
    /// keys of an encrypted SRC ([decryption]) [default: /etc/veil/config.toml if it
    /// exists].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory of private keys (PEM, DER, JWK) for an encrypted SRC [default: the
    /// config's [decryption] keys_dir].
    #[arg(long, value_name = "DIR")]
    pub keys_dir: Option<PathBuf>,
}

/// What the recording run found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Recorded {
    /// Files touched, over all layers (each path once).
    pub files: usize,
    /// Their bytes, uncompressed.
    pub bytes: u64,
    /// Seconds the workload ran.
    pub workload_seconds: f64,
    /// Its exit status.
    pub exit: String,
    /// Bytes fetched from the registry to run it.
    pub fetched: u64,
}

/// What `veil optimize` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OptimizeReport {
    /// The recording run (`None`: the list came from `--access-list`).
    pub recorded: Option<Recorded>,
    /// Paths in the prefetch list.
    pub listed: usize,
    /// The conversion.
    pub convert: veil_convert::ConvertReport,
}

impl OptimizeReport {
    fn render(&self) -> String {
        let mut out = String::new();
        if let Some(r) = &self.recorded {
            out.push_str(&format!(
                "recorded {} files ({}) the workload opened or read in {:.2} s ({}), {} \
                 fetched\n",
                r.files,
                human(r.bytes),
                r.workload_seconds,
                r.exit,
                human(r.fetched)
            ));
        }
        out.push_str(&format!(
            "prefetch list: {} paths, placed first in their layers\n",
            self.listed
        ));
        out.push_str(&self.convert.render());
        out
    }
}

/// The lazy mount's configuration: the config file, then the flags; no disk cache, no
/// background fetch, plain layers streamed (SRC is usually an ordinary image).
fn mount_config(args: &OptimizeArgs) -> anyhow::Result<Config> {
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(dir) = &args.keys_dir {
        config.decryption.keys_dir = dir.clone();
    }
    config.cache.disk_bytes = 0;
    config.lazy.background_fetch = false;
    Ok(config)
}

/// Runs the workload against SRC mounted lazily; the access orders of its layers and
/// what the run did.
async fn record(args: &OptimizeArgs, work: &Path) -> anyhow::Result<(Vec<AccessOrder>, Recorded)> {
    let reference = match ImageLocation::parse(&args.convert.source).map_err(anyhow::Error::msg)? {
        ImageLocation::Registry(r) => r.to_string(),
        ImageLocation::Layout { .. } => bail!(
            "SRC {} is an OCI layout: the workload runs against a lazily mounted registry \
             image; push it to a registry, or give the list with --access-list",
            args.convert.source
        ),
    };
    let config = mount_config(args)?;
    let mut registry = ClientOptions {
        plain_http: args.convert.plain_http,
        ..wiring::registry_options(&config)
    };
    if let Some(p) = &args.convert.platform {
        registry.platform = Platform::parse(p)?;
    }
    let lazy = wiring::image_service(&config, registry, tokio::runtime::Handle::current())?
        .with_options(LazyOptions {
            stream_plain: true,
            ..wiring::lazy_options(&config)
        })
        .with_mount_options(MountOptions {
            allow_other: true,
            // No passthrough: the container's overlay goes over the image's overlay, and
            // a passthrough-capable layer mount takes one of the kernel's two levels of
            // filesystem stacking (mounting that overlay fails with EINVAL); the
            // recording also wants every read to reach Veil.
            promote: PromoteOptions {
                enabled: false,
                ..PromoteOptions::default()
            },
            ..wiring::mount_options(&config, false)
        });
    let image_root = work.join("image");
    std::fs::create_dir_all(&image_root)?;
    let mounted = image_mount::mount_image(&lazy, &reference, &image_root, &work.join("layers"))
        .await
        .with_context(|| format!("mounting {reference} lazily"))?;
    let image_config = image_config(&lazy, &reference).await?;
    let workload = match &args.cmd {
        Some(cmd) => Workload::Shell(cmd.clone()),
        None => Workload::Image,
    };
    let bundle = Bundle::new(&work.join("bundle"), &image_root, &image_config, &workload)?;
    let id = format!("veil-optimize-{}", std::process::id());
    let limit = Duration::from_secs(args.timeout);
    let (finished, bundle) = tokio::task::spawn_blocking(move || (bundle.run(&id, limit), bundle))
        .await
        .context("the workload runner failed")?;
    drop(bundle);
    let finished = finished?;
    let orders = lazy.all_access_orders();
    let fetched = lazy.registry().metrics().bytes_fetched();
    drop(mounted);
    if !finished.status.success() && !args.allow_failure {
        bail!(
            "the workload ({}) exited with {} (--allow-failure converts anyway). Its output:\n{}",
            match &args.cmd {
                Some(cmd) => format!("--cmd {cmd:?}"),
                None => "the image's Entrypoint + Cmd".into(),
            },
            finished.status,
            finished.output
        );
    }
    let list = merged_access_list(&orders);
    let bytes = orders
        .iter()
        .flat_map(|o| o.files.iter().map(|f| f.size))
        .sum();
    Ok((
        orders,
        Recorded {
            files: list.len(),
            bytes,
            workload_seconds: finished.took.as_secs_f64(),
            exit: finished.status.to_string(),
            fetched,
        },
    ))
}

/// The image config of `reference`.
async fn image_config(
    lazy: &veil_image::layers::LazyLayers,
    reference: &str,
) -> anyhow::Result<ImageConfiguration> {
    let parsed = Reference::parse(reference)?;
    let image = lazy
        .registry()
        .resolve(&parsed)
        .await
        .with_context(|| format!("resolving {reference}"))?;
    let bytes = lazy
        .registry()
        .fetch_blob(&parsed, &image.manifest.config.digest)
        .await
        .with_context(|| format!("fetching the config of {reference}"))?;
    serde_json::from_slice(&bytes)
        .with_context(|| format!("the config of {reference} does not parse"))
}

/// Writes `list` to `path` with mode 0600.
fn write_list(path: &Path, orders: &[AccessOrder]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(crate::status::render_access_list(orders).as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// Records (or reads) the list, then converts.
async fn optimize(args: &OptimizeArgs) -> anyhow::Result<OptimizeReport> {
    if args.convert.prefetch_list.is_some() {
        bail!("veil optimize records the prefetch list: give a list with --access-list instead of --prefetch-list");
    }
    let mut opts = convert_options(&args.convert)?;
    let (list, recorded) = match &args.access_list {
        Some(path) => (read_prefetch_list(path)?, None),
        None => {
            let mut tmp = tempfile::Builder::new();
            tmp.prefix("veil-optimize-");
            let work = match &args.convert.tmp_dir {
                Some(dir) => tmp.tempdir_in(dir),
                None => tmp.tempdir(),
            }
            .context("creating the temporary directory")?;
            let (orders, recorded) = record(args, work.path()).await?;
            if let Some(path) = &args.record_to {
                write_list(path, &orders)?;
            }
            (merged_access_list(&orders), Some(recorded))
        }
    };
    if list.is_empty() {
        bail!("the workload touched no file of the image: nothing to prioritize");
    }
    opts.prefetch = list;
    let listed = opts.prefetch.len();
    let convert = convert(&opts, &Bars::auto()).await?;
    Ok(OptimizeReport {
        recorded,
        listed,
        convert,
    })
}

/// Runs `veil optimize`.
pub fn run_optimize(args: OptimizeArgs) -> ExitCode {
    // This process holds keys and plaintext: no core dumps.
    if let Err(e) = forbid_core_dumps() {
        eprintln!("veil optimize: {e}");
        return ExitCode::FAILURE;
    }
    veil_daemon::malloc::map_large_allocations();
    let Some(rt) = runtime("optimize") else {
        return ExitCode::FAILURE;
    };
    let result = rt.block_on(async {
        tokio::select! {
            r = optimize(&args) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!(
                "interrupted; the destination tag was not changed"
            )),
        }
    });
    print_report("optimize", result, args.convert.json, |r| r.render())
}
