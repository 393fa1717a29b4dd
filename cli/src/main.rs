//! `veil`: the command-line tool: `pull` into containerd, `mount`/`umount` an image
//! without containerd, `status` of the daemon, `convert` an image into a lazily
//! pullable (encrypted) one and `inspect` one, `keys gen` key material for it,
//! `keyprovider serve` ocicrypt's keyprovider gRPC API and `bench` (runs `veil-bench`).
//! One file per command; [`run`] holds what they share.

mod convert_cli;
mod keyprovider_serve;
mod keys;
mod mount;
mod optimize;
mod progress;
mod pull;
mod run;
mod status;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use veil_image::image_mount;
use veil_registry::ClientOptions;

use crate::keyprovider_serve::{run_keyprovider, KeyproviderCommand};
use crate::mount::{run_mount, MountArgs};
use crate::pull::{PullOptions, DEFAULT_CONTAINERD_ADDRESS};
use crate::status::run_status;

/// Logs to stderr (no colours: these logs usually go to a file): `RUST_LOG`, else
/// `default_filter`.
pub(crate) fn init_logging(default_filter: &str) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

/// Veil: start containers from encrypted OCI images without downloading them first.
#[derive(Debug, Parser)]
#[command(name = "veil", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print Veil's version and the snapshots API it serves.
    Version,
    /// Pull an image into containerd with its layers served lazily by Veil.
    ///
    /// Writes the manifest and config into containerd's content store and prepares each
    /// layer's snapshot in the Veil snapshotter with the remote-snapshot labels: eStargz
    /// and zstd:chunked layers are then served lazily and never downloaded. Layers Veil
    /// cannot serve lazily are downloaded and unpacked by containerd (unless
    /// --lazy-only). Finally the image record REF is created or updated.
    Pull(PullArgs),
    /// Mount an image's root filesystem at DIR, lazily, without containerd.
    ///
    /// Each layer is mounted through FUSE (fetched on demand, verified chunk by chunk) and
    /// the layers are stacked read-only at DIR. By default the command returns once DIR
    /// is mounted and a background process serves it until `veil umount DIR`; with
    /// --foreground it serves until DIR is unmounted or it gets SIGINT/SIGTERM.
    Mount(MountArgs),
    /// Unmount an image mounted with `veil mount`; its serving process then exits.
    Umount {
        /// The mount point.
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// Convert an image into a lazily pullable one (eStargz or zstd:chunked), optionally
    /// encrypted (ocicrypt, JWE and/or CoCo KBS recipients), and store it.
    ///
    /// SRC and DST are registry references or OCI layouts (oci:DIR[:TAG]). Each layer is
    /// rewritten (and encrypted with a fresh key when asked); blobs DST already has are
    /// not stored again; the manifest is stored last, so DST's tag never names a
    /// half-written image. Without --encrypt the output is deterministic.
    Convert(convert_cli::ConvertArgs),
    /// Convert an image like `veil convert`, with the files its workload reads first:
    /// runs the image's Entrypoint + Cmd (or --cmd) once with runc against SRC mounted
    /// lazily, records which files it opens and reads in what order, and writes DST with
    /// those files first and the prefetch landmark after them (Veil fetches them before
    /// the container starts). --access-list FILE takes a list `veil status
    /// --access-order` dumped instead of running anything.
    Optimize(optimize::OptimizeArgs),
    /// Show an image's layers: media type, format, sizes, chunk count, encryption
    /// (recipients, kids), and whether Veil can mount each lazily (and if not, why).
    Inspect(convert_cli::InspectArgs),
    /// Benchmark cold starts: the status quo and Veil's modes side by side through a
    /// shaped local registry; a table, JSON and a plot (`veil bench --help`: its options).
    #[command(disable_help_flag = true)]
    Bench {
        /// veil-bench's options (run as `veil-bench` from beside this program).
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<std::ffi::OsString>,
    },
    /// Serve key wrapping and unwrapping to tools that speak ocicrypt's keyprovider
    /// protocol (skopeo, imgcrypt, ocicrypt-rs).
    #[command(subcommand)]
    Keyprovider(KeyproviderCommand),
    /// Make key material for `veil convert --encrypt`: `veil keys gen kek|rsa|ec --out FILE`.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Hold veil-snapshotter's FUSE connections across its restarts and upgrades (the
    /// fd store its `fd_store_socket` names; a small process that never needs upgrading).
    FdStore {
        /// The unix socket to serve on.
        #[arg(long, value_name = "SOCKET", default_value = "/run/veil/fdstore.sock")]
        socket: PathBuf,
    },
    /// Show what the running veil-snapshotter serves: layers, bytes fetched, cache use.
    Status {
        /// The daemon's status socket (beside its snapshots socket).
        #[arg(long, value_name = "SOCKET", default_value = "/run/veil/status.sock")]
        address: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Instead of the report, print the files of layer DIGEST (`all`: every layer)
        /// that were opened or read, first touch first, one path a line: the list
        /// `veil optimize --access-list` takes. File names are plaintext of an encrypted
        /// image: the daemon tells them only to root.
        #[arg(long, value_name = "DIGEST|all")]
        access_order: Option<String>,
    },
}

#[derive(Debug, Args)]
struct PullArgs {
    /// Reach the registry over plain HTTP instead of HTTPS.
    #[arg(long)]
    plain_http: bool,
    /// containerd's gRPC socket.
    #[arg(short = 'a', long, value_name = "SOCKET", env = "CONTAINERD_ADDRESS", default_value = DEFAULT_CONTAINERD_ADDRESS)]
    address: PathBuf,
    /// containerd namespace.
    #[arg(
        short = 'n',
        long,
        env = "CONTAINERD_NAMESPACE",
        default_value = "default"
    )]
    namespace: String,
    /// The name Veil's snapshotter has in containerd's config (`[proxy_plugins.NAME]`).
    #[arg(long, default_value = "veil")]
    snapshotter: String,
    /// Fail instead of downloading and unpacking layers that cannot be served lazily.
    #[arg(long)]
    lazy_only: bool,
    /// The image reference, e.g. registry.example:5000/app:v1.
    #[arg(value_name = "REF")]
    reference: String,
}

fn run_pull(args: PullArgs) -> ExitCode {
    let opts = PullOptions {
        reference: args.reference,
        address: args.address,
        namespace: args.namespace,
        snapshotter: args.snapshotter,
        registry: ClientOptions {
            plain_http: args.plain_http,
            ..ClientOptions::default()
        },
        lazy_only: args.lazy_only,
    };
    match run::block_on("pull", pull::pull(&opts, &mut |line| println!("{line}"))) {
        Some(report) => {
            println!("{}", report.summary());
            ExitCode::SUCCESS
        }
        None => ExitCode::FAILURE,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("veil {}", env!("CARGO_PKG_VERSION"));
            println!(
                "snapshots API: containerd.services.snapshots.v1 (served by veil-snapshotter)"
            );
            ExitCode::SUCCESS
        }
        Command::Pull(args) => run_pull(args),
        Command::Mount(args) => run_mount(args),
        Command::Umount { dir } => match image_mount::unmount_image(&dir) {
            Ok(()) => {
                println!("unmounted {}", dir.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("veil umount: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Keyprovider(command) => run_keyprovider(command),
        Command::Keys(command) => keys::run_keys(command),
        Command::Status {
            address,
            json,
            access_order,
        } => run_status(&address, json, access_order.as_deref()),
        Command::FdStore { socket } => {
            init_logging("info");
            match veil_snapshotter::fdstore::server::serve(&socket) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("veil fd-store: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Convert(args) => convert_cli::run_convert(args),
        Command::Optimize(args) => optimize::run_optimize(args),
        Command::Inspect(args) => convert_cli::run_inspect(args),
        Command::Bench { args } => {
            // git-style: `veil bench ARGS` execs `veil-bench ARGS` found beside `veil`.
            let exe = std::env::current_exe()
                .ok()
                .and_then(|e| e.parent().map(|d| d.join("veil-bench")))
                .filter(|p| p.exists());
            let Some(exe) = exe else {
                eprintln!(
                    "veil bench: veil-bench is not installed beside this program \
                     (cargo build --release -p veil-bench, then install it next to veil)"
                );
                return ExitCode::FAILURE;
            };
            let err = std::os::unix::process::CommandExt::exec(
                std::process::Command::new(&exe).args(args),
            );
            eprintln!("veil bench: running {}: {err}", exe.display());
            ExitCode::FAILURE
        }
    }
}
