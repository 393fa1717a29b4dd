//! The `veil convert` and `veil inspect` command lines.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use veil_convert::encrypt::{KbsRecipient, Recipients};
use veil_convert::inspect::{inspect, InspectOptions};
use veil_convert::layer::LayerFormat;
use veil_convert::store::ImageLocation;
use veil_convert::{convert, ConvertOptions};
use veil_formats::estargz::DEFAULT_CHUNK_SIZE;
use veil_registry::{ClientOptions, Platform};

use crate::progress::Bars;
use crate::run::{print_report, runtime};

/// `veil convert SRC DST`.
#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// The source image: a registry reference (HOST[:PORT]/REPO[:TAG|@DIGEST], optionally
    /// docker://...) or an OCI layout, oci:DIR[:TAG].
    #[arg(value_name = "SRC")]
    pub source: String,
    /// Where the converted image goes: a registry reference (a tag) or oci:DIR[:TAG]
    /// (created if missing). The tag is written last, once every blob is stored.
    #[arg(value_name = "DST")]
    pub destination: String,
    /// Reach registries over plain HTTP instead of HTTPS.
    #[arg(long)]
    pub plain_http: bool,
    /// The lazily readable layer format. eStargz is the default: CoCo's image-rs
    /// decrypts only tar and tar+gzip encrypted layers, so eStargz images also pull
    /// (whole) where Veil is not installed.
    #[arg(long, value_name = "estargz|zstd-chunked", default_value_t = LayerFormat::Estargz)]
    pub format: LayerFormat,
    /// Largest payload chunk in bytes (suffixes K, M: 4M = 4 MiB): the unit a lazy read
    /// fetches and verifies.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_CHUNK_SIZE, value_parser = parse_size)]
    pub chunk_size: u64,
    /// A file listing paths (one per line, absolute or relative to /; # comments) to
    /// place first in their layers, ended by the prefetch landmark: Veil fetches them
    /// before the container starts.
    #[arg(long, value_name = "FILE")]
    pub prefetch_list: Option<PathBuf>,
    /// Encrypt the layers (all, or those --layers picks) with ocicrypt's AES-256-CTR +
    /// HMAC-SHA256, a fresh key per layer; give recipients with --recipient / --kbs-kid.
    #[arg(long)]
    pub encrypt: bool,
    /// A recipient of the layer keys: jwe:PUBKEY.pem (RSA or EC public key, PEM or DER).
    /// Repeatable.
    #[arg(long, value_name = "jwe:PUBKEY.pem")]
    pub recipient: Vec<String>,
    /// The KBS resource holding the KEK (kbs:///REPO/TYPE/TAG): the layer keys are
    /// wrapped with that KEK into coco_keyprovider's attestation-agent annotation. Needs
    /// --kek-file.
    #[arg(long, value_name = "kbs:///REPO/TYPE/TAG", requires = "kek_file")]
    pub kbs_kid: Option<String>,
    /// The 32-byte KEK (raw, or base64) that the KBS holds under --kbs-kid.
    #[arg(long, value_name = "FILE", requires = "kbs_kid")]
    pub kek_file: Option<PathBuf>,
    /// Which layers to encrypt, by index from 0 (negative counts from the end: -1 is the
    /// top layer), comma-separated. Default: all.
    #[arg(
        long,
        value_name = "I,J,...",
        value_delimiter = ',',
        allow_negative_numbers = true
    )]
    pub layers: Option<Vec<i64>>,
    /// Layers converted at once (default: the number of CPUs, at most 4).
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
    /// Where the temporary directory (plaintext layer tars, blobs) is made.
    #[arg(long, value_name = "DIR", env = "TMPDIR")]
    pub tmp_dir: Option<PathBuf>,
    /// The platform to pick from a multi-platform source (os/arch[/variant]).
    #[arg(long, value_name = "OS/ARCH")]
    pub platform: Option<String>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `veil inspect REF`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The image: a registry reference or oci:DIR[:TAG].
    #[arg(value_name = "REF")]
    pub reference: String,
    /// Reach registries over plain HTTP instead of HTTPS.
    #[arg(long)]
    pub plain_http: bool,
    /// Private keys (PEM, DER, JWK) to unwrap encrypted layers' keys with, to read their
    /// TOC too.
    #[arg(long, value_name = "DIR")]
    pub keys_dir: Option<PathBuf>,
    /// Do not read the layers' TOCs (no chunk counts; annotations only).
    #[arg(long)]
    pub no_toc: bool,
    /// The platform to pick from a multi-platform image (os/arch[/variant]).
    #[arg(long, value_name = "OS/ARCH")]
    pub platform: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `4194304`, `4096K`, `4M`, `1G` (binary units).
fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, ""),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 4194304, 512K, 4M)"))?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" | "kb" => 10,
        "m" | "mib" | "mb" => 20,
        "g" | "gib" | "gb" => 30,
        other => return Err(format!("unknown size unit {other:?} (K, M, G)")),
    };
    n.checked_shl(shift)
        .filter(|v| v >> shift == n)
        .ok_or_else(|| format!("{text:?} is too large"))
}

fn registry_options(plain_http: bool, platform: Option<&str>) -> anyhow::Result<ClientOptions> {
    let mut options = ClientOptions {
        plain_http,
        ..ClientOptions::default()
    };
    if let Some(p) = platform {
        options.platform = Platform::parse(p)?;
    }
    Ok(options)
}

/// Reads a prefetch list: one path per line, blank lines and `#` comments skipped.
pub(crate) fn read_prefetch_list(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading the prefetch list {}: {e}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect())
}

pub(crate) fn convert_options(args: &ConvertArgs) -> anyhow::Result<ConvertOptions> {
    let mut jwe = Vec::new();
    for r in &args.recipient {
        match r.split_once(':') {
            Some(("jwe", path)) if !path.is_empty() => jwe.push(PathBuf::from(path)),
            Some(("provider", _)) => anyhow::bail!(
                "--recipient {r}: for the attestation-agent (KBS) recipient use --kbs-kid and \
                 --kek-file"
            ),
            Some((scheme @ ("pgp" | "pkcs7" | "pkcs11"), _)) => {
                anyhow::bail!("--recipient {r}: {scheme} recipients are not supported (jwe:)")
            }
            _ => anyhow::bail!("--recipient {r}: expected jwe:PUBKEY.pem"),
        }
    }
    let kbs = match (&args.kbs_kid, &args.kek_file) {
        (Some(kid), Some(file)) => Some(KbsRecipient::load(kid, file).map_err(anyhow::Error::msg)?),
        _ => None,
    };
    let any_recipient = !jwe.is_empty() || kbs.is_some();
    if args.encrypt && !any_recipient {
        anyhow::bail!(
            "--encrypt needs at least one recipient: --recipient jwe:PUBKEY.pem and/or \
             --kbs-kid kbs:///REPO/TYPE/TAG --kek-file FILE"
        );
    }
    if any_recipient && !args.encrypt {
        anyhow::bail!("recipients were given without --encrypt: add --encrypt");
    }
    let recipients = if args.encrypt {
        Some(Arc::new(
            Recipients::load(&jwe, kbs).map_err(anyhow::Error::msg)?,
        ))
    } else {
        None
    };
    Ok(ConvertOptions {
        source: ImageLocation::parse(&args.source).map_err(anyhow::Error::msg)?,
        destination: ImageLocation::parse(&args.destination).map_err(anyhow::Error::msg)?,
        registry: registry_options(args.plain_http, args.platform.as_deref())?,
        format: args.format,
        chunk_size: args.chunk_size,
        prefetch: match &args.prefetch_list {
            Some(p) => read_prefetch_list(p)?,
            None => Vec::new(),
        },
        recipients,
        layers: args.layers.clone(),
        jobs: args.jobs.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get().min(4))
                .unwrap_or(2)
        }),
        tmp_dir: args.tmp_dir.clone(),
    })
}

/// Runs `veil convert`.
pub fn run_convert(args: ConvertArgs) -> ExitCode {
    let opts = match convert_options(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("veil convert: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let Some(rt) = runtime("convert") else {
        return ExitCode::FAILURE;
    };
    let progress = Bars::auto();
    let result = rt.block_on(async {
        tokio::select! {
            r = convert(&opts, &progress) => r.map_err(anyhow::Error::from),
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!(
                "interrupted; the temporary files are removed and the destination tag was not changed"
            )),
        }
    });
    print_report("convert", result, args.json, |r| r.render())
}

/// Runs `veil inspect`.
pub fn run_inspect(args: InspectArgs) -> ExitCode {
    let opts = match (|| -> anyhow::Result<InspectOptions> {
        Ok(InspectOptions {
            location: ImageLocation::parse(&args.reference).map_err(anyhow::Error::msg)?,
            registry: registry_options(args.plain_http, args.platform.as_deref())?,
            keys_dir: args.keys_dir.clone(),
            read_toc: !args.no_toc,
        })
    })() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("veil inspect: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let Some(rt) = runtime("inspect") else {
        return ExitCode::FAILURE;
    };
    print_report("inspect", rt.block_on(inspect(&opts)), args.json, |r| {
        r.render()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4194304").unwrap(), 4 << 20);
        assert_eq!(parse_size("4M").unwrap(), 4 << 20);
        assert_eq!(parse_size("512k").unwrap(), 512 << 10);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert!(parse_size("4X").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
    }
}
