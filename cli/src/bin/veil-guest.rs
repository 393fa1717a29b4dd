//! `veil-guest`: Veil inside a CoCo guest, on the Confidential Data Hub's socket. A thin
//! main: the flags, logging, the runtime; the daemon itself is
//! `veil_daemon::guest_server`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use veil_daemon::config::Config;

/// Where veil-guest looks for its config when `--config` is not given.
const DEFAULT_GUEST_CONFIG: &str = "/etc/veil/guest.toml";

/// Veil's guest puller for confidential containers.
///
/// Binds kata-agent's CDH socket ([guest] socket), serves
/// `api.ImagePullService/PullImage` lazily (layers through FUSE, one overlay root per
/// container) and forwards every other call to the real Confidential Data Hub on
/// [guest] upstream_socket.
#[derive(Debug, Parser)]
#[command(name = "veil-guest", version, about, long_about)]
struct Args {
    /// TOML config file (the [guest] section and the shared ones) [default:
    /// /etc/veil/guest.toml if it exists]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Write the config the real CDH is to run with — [guest] cdh_config (or CDH's
    /// defaults) with its `socket` moved to [guest] upstream_socket — to FILE, and exit
    /// (the CDH drop-in's ExecStartPre)
    #[arg(long, value_name = "FILE")]
    write_upstream_cdh_config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let explicit = args
        .config
        .or_else(|| Some(PathBuf::from(DEFAULT_GUEST_CONFIG)).filter(|p| p.exists()));
    let config = match explicit {
        Some(path) => Config::load(Some(&path)),
        None => Ok(Config::default()),
    };
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("veil-guest: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(out) = args.write_upstream_cdh_config {
        return match veil_daemon::wiring::write_upstream_cdh_config(&config, &out) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("veil-guest: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log_level));
    let filter = match filter {
        Ok(f) => f,
        Err(e) => {
            eprintln!("veil-guest: bad log filter {:?}: {e}", config.log_level);
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
            eprintln!("veil-guest: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(veil_daemon::guest_server::serve(&config));
    // Blocking tasks (unmounts) may still run: give them a moment, never hang on them.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("veil-guest: {e:#}");
            ExitCode::FAILURE
        }
    }
}
