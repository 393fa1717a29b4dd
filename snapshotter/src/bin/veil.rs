//! `veil`: the command-line tool: `pull` into containerd, `mount`/`umount` an image
//! without containerd, `status` of the daemon, `convert` an image into a lazily
//! pullable (encrypted) one and `inspect` one, `keys gen` key material for it,
//! `keyprovider serve` ocicrypt's keyprovider gRPC API (the server itself is
//! `veil_snapshotter::keyprovider_service`) and `bench` (runs `veil-bench`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use std::sync::Arc;
use veil_fusefs::cache::ChunkCache;
use veil_snapshotter::encrypted::Decryption;
use veil_snapshotter::image_mount;
use veil_snapshotter::lazy::{LazyLayers, LazyOptions};
use veil_snapshotter::pull::{self, PullOptions, DEFAULT_CONTAINERD_ADDRESS};
use veil_snapshotter::registry::{ClientOptions, RegistryClient};
use veil_snapshotter::status;

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
    Convert(veil_snapshotter::convert::cli::ConvertArgs),
    /// Show an image's layers: media type, format, sizes, chunk count, encryption
    /// (recipients, kids), and whether Veil can mount each lazily (and if not, why).
    Inspect(veil_snapshotter::convert::cli::InspectArgs),
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
    Keys(veil_snapshotter::keys_cli::KeysCommand),
    /// Show what the running veil-snapshotter serves: layers, bytes fetched, cache use.
    Status {
        /// The daemon's status socket (beside its snapshots socket).
        #[arg(long, value_name = "SOCKET", default_value = "/run/veil/status.sock")]
        address: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum KeyproviderCommand {
    /// Serve ocicrypt's keyprovider gRPC API (keyprovider.KeyProviderService: WrapKey,
    /// UnWrapKey) for provider `attestation-agent` until SIGTERM or SIGINT.
    ///
    /// UnWrapKey opens CoCo attestation-agent annotation packets with the KEK their kid
    /// names, from the KEK sources of the config's [decryption] section (kek_sources:
    /// kbs after attestation, cdh, file); WrapKey wraps with the KEK file the wrap
    /// parameters name (keyid=kbs:///repo/type/tag::keypath=FILE, as coco_keyprovider
    /// takes them) or else the KEK sources. Name it in OCICRYPT_KEYPROVIDER_CONFIG as
    /// {"key-providers": {"attestation-agent": {"grpc": "ADDRESS"}}}.
    Serve {
        /// A unix socket path (or unix://PATH) or IP:PORT to listen on.
        #[arg(long, value_name = "ADDR")]
        address: veil_snapshotter::keyprovider_service::ListenAddress,
        /// veil-snapshotter's config file, for [decryption] (default: /etc/veil/config.toml
        /// if it exists).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

fn run_keyprovider(command: KeyproviderCommand) -> ExitCode {
    let KeyproviderCommand::Serve { address, config } = command;
    let config = match veil_snapshotter::config::Config::load(config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("veil keyprovider serve: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log_level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("veil keyprovider serve: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        use veil_snapshotter::keyprovider_service::{serve, KeyProvider};
        let provider = KeyProvider::from_config(&config.decryption)?;
        serve(provider, &address).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("veil keyprovider serve: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Debug, Args)]
struct MountArgs {
    /// Reach the registry over plain HTTP instead of HTTPS.
    #[arg(long)]
    plain_http: bool,
    /// Where the layers' own mount points and the serving process's log live.
    #[arg(long, value_name = "DIR", default_value = "/run/veil/mounts")]
    state_dir: PathBuf,
    /// Byte budget of the in-memory cache of verified chunks.
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20)]
    cache_bytes: u64,
    /// Serve in this process until DIR is unmounted (do not return at once).
    #[arg(long)]
    foreground: bool,
    /// Directory of private keys (PEM, DER, JWK) for encrypted layers.
    #[arg(long, value_name = "DIR", default_value = veil_snapshotter::config::DEFAULT_KEYS_DIR)]
    keys_dir: PathBuf,
    /// The image reference, e.g. registry.example:5000/app:v1.
    #[arg(value_name = "REF")]
    reference: String,
    /// The (empty) directory to mount it at.
    #[arg(value_name = "DIR")]
    dir: PathBuf,
}

/// The state directory of one mount: named after the mount point.
fn mount_state_dir(base: &std::path::Path, dir: &std::path::Path) -> PathBuf {
    let name: String = dir
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    base.join(name)
}

fn run_mount(args: MountArgs) -> ExitCode {
    let dir = match std::fs::canonicalize(&args.dir) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("veil mount: mount point {}: {e}", args.dir.display());
            return ExitCode::FAILURE;
        }
    };
    if image_mount::is_mount_point(&dir) {
        eprintln!("veil mount: {} is already a mount point", dir.display());
        return ExitCode::FAILURE;
    }
    let state = mount_state_dir(&args.state_dir, &dir);
    if args.foreground {
        return serve_mount(&args, &dir, &state);
    }
    // Start the serving process detached, and return once the mount is up.
    if let Err(e) = std::fs::create_dir_all(&args.state_dir) {
        eprintln!("veil mount: creating {}: {e}", args.state_dir.display());
        return ExitCode::FAILURE;
    }
    let log_path = args.state_dir.join(format!(
        "{}.log",
        state.file_name().unwrap_or_default().to_string_lossy()
    ));
    let log = match std::fs::File::create(&log_path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("veil mount: creating {}: {e}", log_path.display());
            return ExitCode::FAILURE;
        }
    };
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("veil"));
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("mount").arg("--foreground");
    if args.plain_http {
        cmd.arg("--plain-http");
    }
    cmd.arg("--state-dir")
        .arg(&args.state_dir)
        .arg("--keys-dir")
        .arg(&args.keys_dir)
        .arg("--cache-bytes")
        .arg(args.cache_bytes.to_string())
        .arg(&args.reference)
        .arg(&dir)
        .stdin(std::process::Stdio::null())
        .stdout(
            log.try_clone()
                .map(std::process::Stdio::from)
                .unwrap_or(std::process::Stdio::null()),
        )
        .stderr(std::process::Stdio::from(log));
    // SAFETY: setsid() in the child before exec only detaches it from our session.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("veil mount: starting the serving process: {e}");
            return ExitCode::FAILURE;
        }
    };
    let start = std::time::Instant::now();
    loop {
        if image_mount::is_mount_point(&dir) {
            println!(
                "mounted {} at {} (served by pid {}, log {}); `veil umount {}` to unmount",
                args.reference,
                dir.display(),
                child.id(),
                log_path.display(),
                dir.display()
            );
            return ExitCode::SUCCESS;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            eprintln!("veil mount: failed ({status}):\n{}", log.trim_end());
            return ExitCode::FAILURE;
        }
        if start.elapsed() > std::time::Duration::from_secs(300) {
            let _ = child.kill();
            let _ = child.wait();
            eprintln!(
                "veil mount: {} was not mounted within 5 minutes; see {}",
                dir.display(),
                log_path.display()
            );
            return ExitCode::FAILURE;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn serve_mount(args: &MountArgs, dir: &std::path::Path, state: &std::path::Path) -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("veil mount: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: anyhow::Result<()> = runtime.block_on(async {
        let registry = RegistryClient::new(ClientOptions {
            plain_http: args.plain_http,
            ..ClientOptions::default()
        })?;
        let cache = Arc::new(ChunkCache::new(args.cache_bytes));
        let lazy = LazyLayers::new(registry, cache, tokio::runtime::Handle::current())
            .with_options(LazyOptions {
                decryption: Some(Arc::new(Decryption::load(&args.keys_dir, false))),
                ..LazyOptions::default()
            });
        let mounted = image_mount::mount_image(&lazy, &args.reference, dir, state).await?;
        println!(
            "mounted {} at {} ({} layers, served lazily)",
            args.reference,
            dir.display(),
            mounted.layer_count()
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = mounted.wait_until_unmounted() => println!("{} was unmounted", dir.display()),
            _ = tokio::signal::ctrl_c() => println!("interrupted: unmounting {}", dir.display()),
            _ = term.recv() => println!("terminated: unmounting {}", dir.display()),
        }
        println!(
            "fetched {} from the registry",
            status::human(lazy.registry().metrics().bytes_fetched())
        );
        drop(mounted);
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("veil mount: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_status(address: &std::path::Path, json: bool) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("veil status: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(status::fetch(address)) {
        Ok(report) if json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Ok(report) => {
            print!("{}", status::render(&report));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("veil status: {e:#}");
            ExitCode::FAILURE
        }
    }
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
        Command::Keys(command) => veil_snapshotter::keys_cli::run_keys(command),
        Command::Status { address, json } => run_status(&address, json),
        Command::Convert(args) => veil_snapshotter::convert::cli::run_convert(args),
        Command::Inspect(args) => veil_snapshotter::convert::cli::run_inspect(args),
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
