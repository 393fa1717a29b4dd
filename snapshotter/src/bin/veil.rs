//! `veil`: the command-line tool. Later commands (convert, inspect, mount, bench, keys)
//! arrive with the issues that build them.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use veil_snapshotter::pull::{self, PullOptions, DEFAULT_CONTAINERD_ADDRESS};
use veil_snapshotter::registry::ClientOptions;

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
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("veil pull: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(pull::pull(&opts, &mut |line| println!("{line}")));
    match result {
        Ok(report) => {
            println!("{}", report.summary());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("veil pull: {e:#}");
            ExitCode::FAILURE
        }
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
    }
}
