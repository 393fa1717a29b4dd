//! `veil-snapshotter`: the daemon containerd talks to through `proxy_plugins`. A thin
//! main: the flags, logging, the runtime; the daemon itself is `veil_daemon::server`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use veil_daemon::config::Config;

/// Veil's containerd snapshotter daemon.
///
/// Serves containerd's snapshots API on a unix socket. Register it in containerd's
/// config as `[proxy_plugins.veil] type = "snapshot" address = "<socket>"`.
#[derive(Debug, Parser)]
#[command(name = "veil-snapshotter", version, about, long_about)]
struct Args {
    /// TOML config file [default: /etc/veil/config.toml if it exists]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Root directory for snapshots and metadata (overrides the config) [default: /var/lib/veil]
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Unix socket to serve on (overrides the config) [default: /run/veil/snapshotter.sock]
    #[arg(long, value_name = "SOCKET")]
    address: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut config = match Config::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("veil-snapshotter: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(root) = args.root {
        config.root = root;
    }
    if let Some(address) = args.address {
        config.address = address;
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log_level));
    let filter = match filter {
        Ok(f) => f,
        Err(e) => {
            eprintln!(
                "veil-snapshotter: bad log filter {:?}: {e}",
                config.log_level
            );
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("veil-snapshotter: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(veil_daemon::server::serve(&config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("veil-snapshotter: {e:#}");
            ExitCode::FAILURE
        }
    }
}
