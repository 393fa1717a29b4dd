//! Debian's `docker-registry` as a child process owned by the caller: a free loopback
//! port, its config, storage and access log all in a directory the caller chooses (so the
//! demo can keep them with `--keep`), stopped by PID when dropped.
//!
//! [`crate::registry::Registry`] does the same for the async registry-client tests but
//! keeps its data in a temporary directory of its own.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::process::ChildGuard;
use crate::registry::{free_port, REGISTRY_BIN};

/// How long the registry may take to answer `GET /v2/`.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `docker-registry`.
pub struct LocalRegistry {
    guard: Option<ChildGuard>,
    pid: u32,
    port: u16,
    dir: PathBuf,
    log: PathBuf,
}

impl LocalRegistry {
    /// Starts `docker-registry serve DIR/config.yml` on a free port of 127.0.0.1 with its
    /// storage in `DIR/data` and its output (the access log) in `DIR/registry.log`, and
    /// waits until it answers `GET /v2/`.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(dir, "")
    }

    /// [`start`](Self::start) with `extra` appended to its config (top-level YAML keys,
    /// e.g. `proxy:\n  remoteurl: http://127.0.0.1:5000\n` for a pull-through cache).
    pub fn start_with(dir: &Path, extra: &str) -> anyhow::Result<Self> {
        if !Path::new(REGISTRY_BIN).exists() {
            bail!("{REGISTRY_BIN} is missing (Debian: apt-get install docker-registry)");
        }
        std::fs::create_dir_all(dir)?;
        let dir = dir.canonicalize()?;
        let port = free_port();
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
                 delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: veil-demo-secret\n{extra}",
                dir.join("data").display()
            ),
        )?;
        let log = dir.join("registry.log");
        let mut cmd = Command::new(REGISTRY_BIN);
        cmd.arg("serve").arg(&config);
        let mut guard = ChildGuard::spawn("docker-registry", cmd, &log)?;
        let pid = guard.pid();
        let start = Instant::now();
        while !answers(port) {
            guard.check_running()?;
            if start.elapsed() > START_TIMEOUT {
                bail!(
                    "docker-registry did not answer on 127.0.0.1:{port} within {START_TIMEOUT:?}; \
                     its output:\n{}",
                    guard.output()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self {
            guard: Some(guard),
            pid,
            port,
            dir,
            log,
        })
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        format!("http://{}", self.host())
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The directory holding the config, storage and log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Everything the registry wrote so far (its access log and messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Stops it (SIGTERM, SIGKILL after five seconds). Idempotent.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        self.guard.take().and_then(|mut g| g.stop())
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether a registry answers `GET /v2/` with 200 on `127.0.0.1:port`.
fn answers(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 16];
    let mut got = 0;
    while got < head.len() {
        match stream.read(&mut head[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    head[..got].starts_with(b"HTTP/1.") && head[..got].windows(5).any(|w| w == b" 200 ")
}
