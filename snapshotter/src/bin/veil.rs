//! `veil`: the command-line tool. Later commands (convert, inspect, mount, bench, keys)
//! arrive with the issues that build them.

use clap::{Parser, Subcommand};

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
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("veil {}", env!("CARGO_PKG_VERSION"));
            println!(
                "snapshots API: containerd.services.snapshots.v1 (served by veil-snapshotter)"
            );
        }
    }
}
