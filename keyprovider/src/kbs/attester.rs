//! Attesters: the TEE evidence that binds a KBS session's `report_data` (PROTOCOLS.md §4.4).
//!
//! - [`SampleAttester`] (`sample`): the evidence Trustee's sample verifier accepts,
//!   `{"svn":"1","report_data":"<base64 of report_data>"}`, no signature: for tests only,
//!   never chosen by auto-detection.
//! - [`TsmAttester`] (`tdx`, `snp`): a hardware report through Linux configfs-tsm
//!   (`/sys/kernel/config/tsm/report`): make a report directory, check its `provider`
//!   (`tdx_guest`, `sev_guest`), write the report data (zero-padded to 64 bytes) to
//!   `inblob`, read `outblob` (and `auxblob` for SNP certificates), check that
//!   `generation` is 1 (nobody else wrote `inblob` meanwhile), remove the directory. The
//!   base path is configurable, so the flow is tested against a fake tree.
//!
//! Evidence shapes: TDX as guest-components sends it, `{"cc_eventlog": <base64 CCEL ACPI
//! table or null>, "quote": <base64 quote>}`. SNP: `{"report": <base64 raw 1184-byte
//! report>, "cert_table": <base64 auxblob or null>}` — NOT yet the form Trustee's SNP
//! verifier reads (the `sev` crate's serde JSON of `AttestationReport` plus a
//! `cert_chain`); see the module's tests and the issue notes.
//!
//! [`detect`] picks the attester for `auto`: the configfs-tsm provider if the kernel has
//! one; otherwise an error that says what was looked for.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use kbs_types::Tee;
use serde_json::{json, Value};
use thiserror::Error;

/// The kernel's configfs-tsm report directory.
pub const DEFAULT_TSM_REPORT_PATH: &str = "/sys/kernel/config/tsm/report";
/// The TDX CC event log ACPI table.
pub const DEFAULT_CCEL_PATH: &str = "/sys/firmware/acpi/tables/data/CCEL";
/// Size of the report data field of TDX and SNP reports.
pub const REPORT_DATA_LEN: usize = 64;
/// configfs-tsm `provider` of TDX guests.
pub const PROVIDER_TDX: &str = "tdx_guest";
/// configfs-tsm `provider` of SEV-SNP guests.
pub const PROVIDER_SNP: &str = "sev_guest";

/// Evidence that could not be produced. Names paths and reasons; holds no secrets.
#[derive(Debug, Error)]
pub enum AttesterError {
    /// No TEE interface where one was looked for.
    #[error("no TEE found: {0}")]
    NoTee(String),
    /// The report data does not fit the TEE's field.
    #[error("report data of {0} bytes does not fit the {REPORT_DATA_LEN}-byte report data field")]
    ReportDataTooLong(usize),
    /// A configfs-tsm attribute could not be used.
    #[error("configfs-tsm {path}: {source}")]
    Io {
        /// The attribute or directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The report directory belongs to another TEE.
    #[error("configfs-tsm provider is {found:?}, the {tee} attester needs {wanted:?}")]
    WrongProvider {
        /// The attester's TEE.
        tee: String,
        /// The provider needed.
        wanted: &'static str,
        /// The provider found.
        found: String,
    },
    /// `generation` shows that someone else wrote `inblob` meanwhile.
    #[error("configfs-tsm report {path}: generation is {generation}, expected 1 (another writer raced this report)")]
    Race {
        /// The report directory.
        path: PathBuf,
        /// The generation read.
        generation: String,
    },
    /// The TEE returned an empty report.
    #[error("configfs-tsm report {0}: outblob is empty")]
    EmptyReport(PathBuf),
    /// An attester name that is not known.
    #[error("unknown attester {0:?} (auto, sample, tdx, snp)")]
    UnknownKind(String),
}

/// Produces evidence for one TEE.
pub trait Attester: Send + Sync + fmt::Debug {
    /// The TEE named in the KBS `Request`.
    fn tee(&self) -> Tee;

    /// The evidence (`primary_evidence`) binding `report_data` (the runtime-data digest).
    /// Blocking: hardware quotes can take a while; call it off the async runtime.
    fn evidence(&self, report_data: &[u8]) -> Result<Value, AttesterError>;
}

/// Trustee's `sample` TEE: no hardware, no signature. For tests only.
#[derive(Debug, Default, Clone, Copy)]
pub struct SampleAttester;

impl Attester for SampleAttester {
    fn tee(&self) -> Tee {
        Tee::Sample
    }

    fn evidence(&self, report_data: &[u8]) -> Result<Value, AttesterError> {
        Ok(json!({"svn": "1", "report_data": STANDARD.encode(report_data)}))
    }
}

/// The TEEs served through configfs-tsm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TsmTee {
    /// Intel TDX (`tdx_guest`).
    Tdx,
    /// AMD SEV-SNP (`sev_guest`).
    Snp,
}

impl TsmTee {
    fn provider(self) -> &'static str {
        match self {
            TsmTee::Tdx => PROVIDER_TDX,
            TsmTee::Snp => PROVIDER_SNP,
        }
    }

    fn name(self) -> &'static str {
        match self {
            TsmTee::Tdx => "tdx",
            TsmTee::Snp => "snp",
        }
    }
}

/// How a report directory is created: `mkdir` on configfs, where the kernel fills it with
/// its attributes. A fake tree replaces it with a function that also writes them.
pub type MakeReportDir = Arc<dyn Fn(&Path) -> io::Result<()> + Send + Sync>;

/// A hardware attester through configfs-tsm.
pub struct TsmAttester {
    tee: TsmTee,
    base: PathBuf,
    ccel: Option<PathBuf>,
    make_dir: MakeReportDir,
}

impl fmt::Debug for TsmAttester {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TsmAttester")
            .field("tee", &self.tee)
            .field("base", &self.base)
            .field("ccel", &self.ccel)
            .finish()
    }
}

/// Removes the report directory when the report is done (configfs `rmdir`).
struct ReportDir(PathBuf);

impl Drop for ReportDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir(&self.0) {
            tracing::debug!(path = %self.0.display(), error = %e, "cannot remove the configfs-tsm report directory");
        }
    }
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> AttesterError + '_ {
    move |source| AttesterError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl TsmAttester {
    /// A `tee` attester on the configfs-tsm tree at `base` (normally
    /// [`DEFAULT_TSM_REPORT_PATH`]); TDX evidence includes the CC event log at `ccel` when
    /// given and readable.
    pub fn new(tee: TsmTee, base: impl Into<PathBuf>, ccel: Option<PathBuf>) -> Self {
        Self {
            tee,
            base: base.into(),
            ccel,
            make_dir: Arc::new(|p: &Path| std::fs::create_dir(p)),
        }
    }

    /// Replaces `mkdir` (for a fake configfs tree in tests).
    pub fn with_make_dir(mut self, make_dir: MakeReportDir) -> Self {
        self.make_dir = make_dir;
        self
    }

    /// Which TEE.
    pub fn tsm_tee(&self) -> TsmTee {
        self.tee
    }

    /// Creates a report directory and checks its provider.
    fn open_report(&self) -> Result<ReportDir, AttesterError> {
        if !self.base.is_dir() {
            return Err(AttesterError::NoTee(format!(
                "{} does not exist (kernel without configfs-tsm, or not a {} guest)",
                self.base.display(),
                self.tee.name()
            )));
        }
        let mut name = [0u8; 8];
        openssl::rand::rand_bytes(&mut name).map_err(|e| AttesterError::Io {
            path: self.base.clone(),
            source: io::Error::other(e.to_string()),
        })?;
        let path = self.base.join(format!(
            "veil-{}",
            name.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ));
        (self.make_dir)(&path).map_err(io_at(&path))?;
        let dir = ReportDir(path);
        let provider_path = dir.0.join("provider");
        let provider = std::fs::read_to_string(&provider_path).map_err(io_at(&provider_path))?;
        let provider = provider.trim_end_matches('\n');
        if provider != self.tee.provider() {
            return Err(AttesterError::WrongProvider {
                tee: self.tee.name().into(),
                wanted: self.tee.provider(),
                found: provider.to_string(),
            });
        }
        Ok(dir)
    }

    /// One report: write `inblob`, read `outblob` (and `auxblob` if asked), check
    /// `generation`.
    fn report(
        &self,
        inblob: &[u8],
        aux: bool,
    ) -> Result<(Vec<u8>, Option<Vec<u8>>), AttesterError> {
        let dir = self.open_report()?;
        let inblob_path = dir.0.join("inblob");
        std::fs::write(&inblob_path, inblob).map_err(io_at(&inblob_path))?;
        let outblob_path = dir.0.join("outblob");
        let outblob = std::fs::read(&outblob_path).map_err(io_at(&outblob_path))?;
        if outblob.is_empty() {
            return Err(AttesterError::EmptyReport(dir.0.clone()));
        }
        let auxblob = if aux {
            let path = dir.0.join("auxblob");
            match std::fs::read(&path) {
                Ok(bytes) if !bytes.is_empty() => Some(bytes),
                Ok(_) => None,
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(io_at(&path)(e)),
            }
        } else {
            None
        };
        let generation_path = dir.0.join("generation");
        let generation =
            std::fs::read_to_string(&generation_path).map_err(io_at(&generation_path))?;
        let generation = generation.trim().to_string();
        if generation != "1" {
            return Err(AttesterError::Race {
                path: dir.0.clone(),
                generation,
            });
        }
        Ok((outblob, auxblob))
    }
}

impl Attester for TsmAttester {
    fn tee(&self) -> Tee {
        match self.tee {
            TsmTee::Tdx => Tee::Tdx,
            TsmTee::Snp => Tee::Snp,
        }
    }

    fn evidence(&self, report_data: &[u8]) -> Result<Value, AttesterError> {
        if report_data.len() > REPORT_DATA_LEN {
            return Err(AttesterError::ReportDataTooLong(report_data.len()));
        }
        let mut inblob = report_data.to_vec();
        inblob.resize(REPORT_DATA_LEN, 0);
        match self.tee {
            TsmTee::Tdx => {
                let (quote, _) = self.report(&inblob, false)?;
                let cc_eventlog = self.ccel.as_ref().and_then(|p| match std::fs::read(p) {
                    Ok(bytes) => Some(STANDARD.encode(bytes)),
                    Err(e) => {
                        tracing::warn!(path = %p.display(), error = %e, "no CC event log");
                        None
                    }
                });
                Ok(json!({"cc_eventlog": cc_eventlog, "quote": STANDARD.encode(quote)}))
            }
            TsmTee::Snp => {
                let (report, certs) = self.report(&inblob, true)?;
                Ok(json!({
                    "report": STANDARD.encode(report),
                    "cert_table": certs.map(|c| STANDARD.encode(c)),
                }))
            }
        }
    }
}

/// The attester to use, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttesterKind {
    /// Detect the TEE (configfs-tsm provider); never picks `sample`.
    #[default]
    Auto,
    /// Trustee's sample TEE (tests only).
    Sample,
    /// Intel TDX through configfs-tsm.
    Tdx,
    /// AMD SEV-SNP through configfs-tsm.
    Snp,
}

impl std::str::FromStr for AttesterKind {
    type Err = AttesterError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "sample" => Ok(Self::Sample),
            "tdx" => Ok(Self::Tdx),
            "snp" => Ok(Self::Snp),
            other => Err(AttesterError::UnknownKind(other.to_string())),
        }
    }
}

/// Builds the attester for `kind`, looking for configfs-tsm at `tsm_base`. `auto` creates
/// (and removes) one report directory to read the provider.
pub fn detect(kind: AttesterKind, tsm_base: &Path) -> Result<Arc<dyn Attester>, AttesterError> {
    let ccel = Some(PathBuf::from(DEFAULT_CCEL_PATH));
    match kind {
        AttesterKind::Sample => Ok(Arc::new(SampleAttester)),
        AttesterKind::Tdx => Ok(Arc::new(TsmAttester::new(TsmTee::Tdx, tsm_base, ccel))),
        AttesterKind::Snp => Ok(Arc::new(TsmAttester::new(TsmTee::Snp, tsm_base, None))),
        AttesterKind::Auto => detect_tsm(tsm_base, |p| std::fs::create_dir(p)).map(|tee| {
            let ccel = (tee == TsmTee::Tdx).then(|| PathBuf::from(DEFAULT_CCEL_PATH));
            Arc::new(TsmAttester::new(tee, tsm_base, ccel)) as Arc<dyn Attester>
        }),
    }
}

/// The configfs-tsm provider at `base`, as a TEE.
pub fn detect_tsm(
    base: &Path,
    make_dir: impl Fn(&Path) -> io::Result<()>,
) -> Result<TsmTee, AttesterError> {
    if !base.is_dir() {
        let mut hints = Vec::new();
        for device in ["/dev/tdx_guest", "/dev/sev-guest"] {
            if Path::new(device).exists() {
                hints.push(format!(
                    "{device} exists but only configfs-tsm reports are supported"
                ));
            }
        }
        return Err(AttesterError::NoTee(format!(
            "{} does not exist{}; set the attester to \"sample\" only for tests",
            base.display(),
            if hints.is_empty() {
                String::new()
            } else {
                format!(" ({})", hints.join("; "))
            }
        )));
    }
    let path = base.join(format!("veil-detect-{}", std::process::id()));
    make_dir(&path).map_err(io_at(&path))?;
    let dir = ReportDir(path);
    let provider_path = dir.0.join("provider");
    let provider = std::fs::read_to_string(&provider_path).map_err(io_at(&provider_path))?;
    match provider.trim_end_matches('\n') {
        PROVIDER_TDX => Ok(TsmTee::Tdx),
        PROVIDER_SNP => Ok(TsmTee::Snp),
        other => Err(AttesterError::NoTee(format!(
            "configfs-tsm provider {other:?} is not supported (tdx_guest, sev_guest)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake configfs-tsm "kernel": mkdir also creates the attributes, with `outblob`
    /// and `auxblob` given in advance.
    fn fake_kernel(provider: &'static str, generation: &'static str) -> MakeReportDir {
        Arc::new(move |path: &Path| {
            std::fs::create_dir(path)?;
            std::fs::write(path.join("provider"), format!("{provider}\n"))?;
            std::fs::write(path.join("generation"), format!("{generation}\n"))?;
            std::fs::write(path.join("outblob"), b"QUOTE-BYTES")?;
            std::fs::write(path.join("auxblob"), b"CERTS")?;
            std::fs::write(path.join("inblob"), b"")?;
            Ok(())
        })
    }

    fn only_report_dir(base: &Path) -> PathBuf {
        let dirs: Vec<PathBuf> = std::fs::read_dir(base)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(dirs.len(), 1, "{dirs:?}");
        dirs[0].clone()
    }

    #[test]
    fn sample_evidence() {
        let evidence = SampleAttester.evidence(&[1, 2, 3]).unwrap();
        assert_eq!(evidence, json!({"svn": "1", "report_data": "AQID"}));
        assert_eq!(SampleAttester.tee(), Tee::Sample);
    }

    #[test]
    fn tdx_through_a_fake_configfs_tree() {
        let tree = tempfile::tempdir().unwrap();
        let ccel = tree.path().join("CCEL");
        std::fs::write(&ccel, b"EVENTS").unwrap();
        let base = tree.path().join("report");
        std::fs::create_dir(&base).unwrap();
        let attester = TsmAttester::new(TsmTee::Tdx, &base, Some(ccel))
            .with_make_dir(fake_kernel("tdx_guest", "1"));
        let report_data = [7u8; 48];
        let evidence = attester.evidence(&report_data).unwrap();
        assert_eq!(
            evidence,
            json!({"cc_eventlog": STANDARD.encode(b"EVENTS"), "quote": STANDARD.encode(b"QUOTE-BYTES")})
        );
        assert_eq!(attester.tee(), Tee::Tdx);
        // The report data went to inblob, zero-padded to 64 bytes. (A real configfs
        // directory is removed afterwards; the fake one is not empty, so it stays.)
        let dir = only_report_dir(&base);
        assert!(dir
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("veil-"));
        let inblob = std::fs::read(dir.join("inblob")).unwrap();
        let mut expected = report_data.to_vec();
        expected.resize(64, 0);
        assert_eq!(inblob, expected);

        let err = attester.evidence(&[0u8; 65]).unwrap_err();
        assert!(matches!(err, AttesterError::ReportDataTooLong(65)), "{err}");
    }

    #[test]
    fn snp_reads_the_cert_table() {
        let tree = tempfile::tempdir().unwrap();
        let attester = TsmAttester::new(TsmTee::Snp, tree.path(), None)
            .with_make_dir(fake_kernel("sev_guest", "1"));
        let evidence = attester.evidence(&[1u8; 64]).unwrap();
        assert_eq!(evidence["report"], STANDARD.encode(b"QUOTE-BYTES"));
        assert_eq!(evidence["cert_table"], STANDARD.encode(b"CERTS"));
        assert_eq!(attester.tee(), Tee::Snp);
    }

    #[test]
    fn configfs_failures_are_named() {
        let tree = tempfile::tempdir().unwrap();
        let wrong = TsmAttester::new(TsmTee::Tdx, tree.path(), None)
            .with_make_dir(fake_kernel("sev_guest", "1"));
        let err = wrong.evidence(&[0; 48]).unwrap_err().to_string();
        assert!(
            err.contains("provider is \"sev_guest\", the tdx attester needs \"tdx_guest\""),
            "{err}"
        );

        let tree = tempfile::tempdir().unwrap();
        let raced = TsmAttester::new(TsmTee::Tdx, tree.path(), None)
            .with_make_dir(fake_kernel("tdx_guest", "2"));
        let err = raced.evidence(&[0; 48]).unwrap_err().to_string();
        assert!(err.contains("generation is 2, expected 1"), "{err}");

        let missing = TsmAttester::new(TsmTee::Tdx, tree.path().join("nope"), None);
        let err = missing.evidence(&[0; 48]).unwrap_err().to_string();
        assert!(err.contains("nope does not exist"), "{err}");

        // A plain directory (no kernel behind it): mkdir works but has no attributes.
        let tree = tempfile::tempdir().unwrap();
        let plain = TsmAttester::new(TsmTee::Tdx, tree.path(), None);
        let err = plain.evidence(&[0; 48]).unwrap_err().to_string();
        assert!(err.contains("provider"), "{err}");
        // The empty report directory it made was removed again.
        assert_eq!(std::fs::read_dir(tree.path()).unwrap().count(), 0);
    }

    #[test]
    fn detection() {
        let tree = tempfile::tempdir().unwrap();
        let tdx = fake_kernel("tdx_guest", "0");
        assert_eq!(detect_tsm(tree.path(), |p| tdx(p)).unwrap(), TsmTee::Tdx);
        let tree = tempfile::tempdir().unwrap();
        let snp = fake_kernel("sev_guest", "0");
        assert_eq!(detect_tsm(tree.path(), |p| snp(p)).unwrap(), TsmTee::Snp);
        let tree = tempfile::tempdir().unwrap();
        let cca = fake_kernel("arm_cca_guest", "0");
        let err = detect_tsm(tree.path(), |p| cca(p)).unwrap_err().to_string();
        assert!(err.contains("arm_cca_guest"), "{err}");
        let err = detect(AttesterKind::Auto, &tree.path().join("absent"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("absent does not exist") && err.contains("sample"),
            "{err}"
        );
        assert_eq!(
            detect(AttesterKind::Sample, tree.path()).unwrap().tee(),
            Tee::Sample
        );
        assert!(matches!(
            "sgx".parse::<AttesterKind>(),
            Err(AttesterError::UnknownKind(_))
        ));
    }
}
