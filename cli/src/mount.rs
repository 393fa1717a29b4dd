//! `veil mount` / `veil umount`: an image's root filesystem at a directory, lazily,
//! without containerd, served by a detached `veil mount --foreground` process built from
//! the same config file as the daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use veil_blob::display::human_bytes as human;
use veil_daemon::config::Config;
use veil_daemon::no_core_dumps::forbid_core_dumps;
use veil_daemon::wiring;
use veil_fusefs::mount::MountOptions;
use veil_image::image_mount;
use veil_registry::ClientOptions;

use crate::init_logging;

/// `veil mount REF DIR`.
#[derive(Debug, Args)]
pub struct MountArgs {
    /// Reach the registry over plain HTTP instead of HTTPS.
    #[arg(long)]
    plain_http: bool,
    /// veil-snapshotter's config file: registry access ([registry]), the plaintext cache
    /// budget ([cache] memory_bytes), keys ([decryption]) and the hostile-input limits
    /// ([limits]) come from it; the flags below override it [default:
    /// /etc/veil/config.toml if it exists].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where the layers' own mount points and the serving process's log live.
    #[arg(long, value_name = "DIR", default_value = "/run/veil/mounts")]
    state_dir: PathBuf,
    /// Byte budget of the in-memory cache of verified chunks [default: the config's
    /// [cache] memory_bytes, 64 MiB].
    #[arg(long, value_name = "BYTES")]
    cache_bytes: Option<u64>,
    /// Serve in this process until DIR is unmounted (do not return at once).
    #[arg(long)]
    foreground: bool,
    /// Let every user read the mounted image (FUSE `allow_other`, and DIR's root keeps the
    /// image's own mode). Without it only root, the mounting user, can enter DIR.
    #[arg(long)]
    allow_other: bool,
    /// Directory of private keys (PEM, DER, JWK) for encrypted layers [default: the
    /// config's [decryption] keys_dir, /etc/containerd/ocicrypt/keys].
    #[arg(long, value_name = "DIR")]
    keys_dir: Option<PathBuf>,
    /// The image reference, e.g. registry.example:5000/app:v1.
    #[arg(value_name = "REF")]
    reference: String,
    /// The (empty) directory to mount it at.
    #[arg(value_name = "DIR")]
    dir: PathBuf,
}

/// Creates `dir` (and missing parents) with mode 0700: the state directory holds the
/// layers' mount points and the serving process's log. A directory that already exists
/// is left as it is (it may be shared, e.g. `/run/veil/mounts`); what Veil puts in it is
/// private itself.
fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Creates (or truncates) `path` with mode 0600: the serving process's log.
fn create_private_file(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // An older log keeps its mode on open: make it private too.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(file)
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

pub fn run_mount(args: MountArgs) -> ExitCode {
    // The serving process holds keys and plaintext: no core dumps (set before anything).
    if let Err(e) = forbid_core_dumps() {
        eprintln!("veil mount: {e}");
        return ExitCode::FAILURE;
    }
    veil_daemon::malloc::map_large_allocations();
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
    if let Err(e) = create_private_dir(&args.state_dir) {
        eprintln!("veil mount: creating {}: {e}", args.state_dir.display());
        return ExitCode::FAILURE;
    }
    let log_path = args.state_dir.join(format!(
        "{}.log",
        state.file_name().unwrap_or_default().to_string_lossy()
    ));
    let log = match create_private_file(&log_path) {
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
    if let Some(config) = &args.config {
        cmd.arg("--config").arg(config);
    }
    if let Some(keys_dir) = &args.keys_dir {
        cmd.arg("--keys-dir").arg(keys_dir);
    }
    if let Some(bytes) = args.cache_bytes {
        cmd.arg("--cache-bytes").arg(bytes.to_string());
    }
    if args.allow_other {
        cmd.arg("--allow-other");
    }
    cmd.arg("--state-dir")
        .arg(&args.state_dir)
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

/// The configuration `veil mount` serves with: the config file, then the flags.
fn mount_config(args: &MountArgs) -> anyhow::Result<Config> {
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(bytes) = args.cache_bytes {
        config.cache.memory_bytes = bytes;
    }
    if let Some(dir) = &args.keys_dir {
        config.decryption.keys_dir = dir.clone();
    }
    // `veil mount` serves one image for one process: no disk cache, no background fetch.
    config.cache.disk_bytes = 0;
    config.lazy.background_fetch = false;
    Ok(config)
}

fn serve_mount(args: &MountArgs, dir: &std::path::Path, state: &std::path::Path) -> ExitCode {
    let config = match mount_config(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("veil mount: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    init_logging(&config.log_level);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("veil mount: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: anyhow::Result<()> = runtime.block_on(async {
        let registry = ClientOptions {
            plain_http: args.plain_http,
            ..wiring::registry_options(&config)
        };
        let lazy = wiring::image_service(&config, registry, tokio::runtime::Handle::current())?
            .with_mount_options(MountOptions {
                allow_other: args.allow_other,
                ..wiring::mount_options(&config, false)
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
            human(lazy.registry().metrics().bytes_fetched())
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        mount: MountArgs,
    }

    fn config_from(text: &str) -> anyhow::Result<Config> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("config.toml");
        std::fs::write(&path, text)?;
        let cli = Cli::try_parse_from([
            "veil-mount",
            "--config",
            path.to_str().unwrap_or_default(),
            "registry.invalid/app:v1",
            "/mnt/app",
        ])?;
        mount_config(&cli.mount)
    }

    #[test]
    fn the_config_files_limits_are_the_mounts_limits() {
        let config =
            config_from("[limits]\nmax_path_depth = 64\nmax_chunk_size = 4194304\n").unwrap();
        let limits = wiring::lazy_options(&config).limits;
        assert_eq!(
            (limits.max_path_depth, limits.max_chunk_size),
            (64, 4 << 20)
        );
        let err = config_from("[limits]\nmax_compressed_chunk_size = 0\n").unwrap_err();
        let shown = format!("{err:#}");
        assert!(shown.contains("max_compressed_chunk_size = 0"), "{shown}");
    }
}
