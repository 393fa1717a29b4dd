//! The sample image's way into the registry and through `veil convert`: the plain tar.gz
//! image pushed from its layer files, a JWE recipient for the encrypted images, and one
//! `veil convert` per Veil image (a child process, killed by its PID after a deadline).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use veil_tests::process::run_with_timeout;

use crate::run::{Format, REPO};
use crate::sample::SampleImage;

/// How long one `veil convert` may take.
const CONVERT_TIMEOUT: Duration = Duration::from_secs(3600);

/// Pushes the sample's layer files as `REPO:plain` (tar.gz) to the registry at `host`,
/// with a progress bar; returns the seconds it took.
pub fn push_plain(image: &SampleImage, host: &str) -> anyhow::Result<f64> {
    let t = Instant::now();
    let total = image.layers.iter().map(|l| l.size).sum();
    let bar = crate::sample::progress_bar(total, "pushing the plain image");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the push's async runtime")?;
    let pushed = rt.block_on(crate::push::push_layer_files(
        &format!("{host}/{REPO}:plain"),
        &image.layers,
        &|n| bar.set_position(n),
    ));
    bar.finish_and_clear();
    pushed?;
    Ok(t.elapsed().as_secs_f64())
}

/// The private key's file name in [`Recipient::keys_dir`].
pub const PRIVATE_KEY_FILE: &str = "bench.pem";

/// A JWE recipient of the encrypted images: the private key in `keys_dir` (Veil's
/// `[decryption] keys_dir`), the public key for `veil convert --recipient jwe:`.
#[derive(Debug, Clone)]
pub struct Recipient {
    pub keys_dir: PathBuf,
    pub public: PathBuf,
}

impl Recipient {
    /// A fresh RSA key pair below `dir`.
    pub fn generate(dir: &Path) -> anyhow::Result<Self> {
        let keys_dir = dir.join("keys");
        std::fs::create_dir_all(&keys_dir)
            .with_context(|| format!("creating {}", keys_dir.display()))?;
        let rsa = openssl::rsa::Rsa::generate(2048).context("generating an RSA key")?;
        let pkey = openssl::pkey::PKey::from_rsa(rsa)?;
        std::fs::write(
            keys_dir.join(PRIVATE_KEY_FILE),
            pkey.private_key_to_pem_pkcs8()?,
        )
        .context("writing the private key")?;
        let public = dir.join("bench.pub.pem");
        std::fs::write(&public, pkey.public_key_to_pem()?).context("writing the public key")?;
        Ok(Self { keys_dir, public })
    }
}

/// One `veil convert` (or `veil optimize`) of `REPO:plain` on the registry at `host`.
#[derive(Debug, Clone)]
pub struct Conversion<'a> {
    pub veil: &'a Path,
    pub host: &'a str,
    pub tag: &'a str,
    pub format: Format,
    /// Encrypt for this recipient.
    pub encrypt_for: Option<&'a Recipient>,
    pub prefetch_list: Option<&'a Path>,
    pub chunk_size: Option<&'a str>,
    /// `veil optimize --cmd CMD` instead of `veil convert`: the files CMD reads first.
    pub optimize_cmd: Option<&'a str>,
    /// Its temporary files and output go below this directory.
    pub dir: &'a Path,
}

impl Conversion<'_> {
    /// Runs it; returns the seconds it took.
    pub fn run(&self) -> anyhow::Result<f64> {
        let tag = self.tag;
        let verb = if self.optimize_cmd.is_some() {
            "optimize"
        } else {
            "convert"
        };
        let mut cmd = Command::new(self.veil);
        cmd.arg(verb)
            .arg("--plain-http")
            .arg(format!("{}/{REPO}:plain", self.host))
            .arg(format!("{}/{REPO}:{tag}", self.host))
            .arg("--format")
            .arg(self.format.flag())
            .arg("--tmp-dir")
            .arg(self.dir);
        if let Some(c) = self.chunk_size {
            cmd.arg("--chunk-size").arg(c);
        }
        if let Some(r) = self.encrypt_for {
            cmd.arg("--encrypt")
                .arg("--recipient")
                .arg(format!("jwe:{}", r.public.display()));
        }
        if let Some(p) = self.prefetch_list {
            cmd.arg("--prefetch-list").arg(p);
        }
        if let Some(c) = self.optimize_cmd {
            cmd.arg("--cmd").arg(c);
        }
        let t = Instant::now();
        let out = run_with_timeout(
            cmd,
            CONVERT_TIMEOUT,
            &self.dir.join(format!("convert-{tag}")),
        )?;
        if !out.status.success() {
            bail!(
                "veil {verb} to :{tag} failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(t.elapsed().as_secs_f64())
    }
}
