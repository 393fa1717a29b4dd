//! `test-kbs`: a small KBS speaking the Trustee KBS protocol (RCAR 0.4.0) with the sample
//! TEE, serving resources from a directory, for Veil's tests and demo. See
//! `veil_tests::kbs_server` for what it implements.
//!
//! ```text
//! test-kbs --resources DIR [--listen 127.0.0.1:8080] [--addr-file FILE]
//!          [--tls-cert CERT.pem --tls-key KEY.pem] [--policy allow-all|deny-sample]
//!          [--session-timeout-secs 300] [--token-lifetime-secs 300]
//! ```
//!
//! Once listening it prints its URL and, with `--addr-file`, writes it to FILE (written
//! to a temporary name and renamed, so a reader never sees half of it).

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use veil_tests::kbs_server::{self, KbsServerConfig, Policy};

#[derive(Parser)]
#[command(about = "A test KBS (Trustee KBS protocol 0.4.0, sample TEE)")]
struct Args {
    /// Address to listen on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// Resources directory: <dir>/<repo>/<type>/<tag>.
    #[arg(long)]
    resources: PathBuf,
    /// Write the URL (http(s)://host:port) to this file once listening.
    #[arg(long)]
    addr_file: Option<PathBuf>,
    /// Serve HTTPS with this PEM certificate chain (with --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Resource policy: allow-all (trustee's allow_all.rego) or deny-sample (its default).
    #[arg(long, default_value = "allow-all")]
    policy: Policy,
    /// Session (cookie) lifetime in seconds.
    #[arg(long, default_value_t = 300)]
    session_timeout_secs: u64,
    /// Attestation token lifetime in seconds.
    #[arg(long, default_value_t = 300)]
    token_lifetime_secs: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut config = KbsServerConfig::new(&args.resources);
    config.policy = args.policy;
    config.session_timeout = Duration::from_secs(args.session_timeout_secs);
    config.token_lifetime = Duration::from_secs(args.token_lifetime_secs);
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(kbs_server::tls_acceptor(cert, key)?),
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    let addr = listener.local_addr()?;
    let url = format!("{}://{addr}", if tls.is_some() { "https" } else { "http" });
    println!("test-kbs listening on {url}");
    if let Some(file) = &args.addr_file {
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, &url)?;
        std::fs::rename(&tmp, file)?;
    }
    kbs_server::serve(listener, kbs_server::router(config)?, tls).await
}
