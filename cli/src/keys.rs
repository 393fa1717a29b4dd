//! `veil keys gen`: new key material written to files, for `veil convert --encrypt`:
//! a 32-byte KEK (`--kbs-kid … --kek-file`) or an RSA / EC key pair (`--recipient
//! jwe:PUB.pem`, the private key into the guest's `[decryption] keys_dir`).
//!
//! The keys themselves come from [`veil_keyprovider::keygen`]. Private files are created
//! with mode 0600 and public ones 0644; nothing existing is replaced without `--force`
//! (then through a temporary file and a rename), and a pair is written whole or not at all.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use veil_keyprovider::keygen::{generate_kek, generate_pair, PairKind, KEK_LEN};

/// `veil keys …`.
#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Make new key material: a KEK for `veil convert --kbs-kid … --kek-file`, or an RSA or
    /// EC key pair for `--recipient jwe:PUBLIC.pem` (the private key goes into the
    /// guest's [decryption] keys_dir).
    Gen(GenArgs),
}

/// What `veil keys gen` makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GenKind {
    /// 32 random bytes: the key-encryption key a KBS releases for a kid.
    Kek,
    /// An RSA key pair (RSA-OAEP JWE recipients).
    Rsa,
    /// An EC key pair (ECDH-ES+A256KW JWE recipients).
    Ec,
}

/// An EC curve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Curve {
    /// NIST P-256 (prime256v1).
    P256,
    /// NIST P-384.
    P384,
    /// NIST P-521.
    P521,
}

/// `veil keys gen` arguments.
#[derive(Debug, clap::Args)]
pub struct GenArgs {
    /// What to make.
    #[arg(value_enum)]
    pub kind: GenKind,
    /// The file for the KEK or the private key (PKCS#8 PEM), created with mode 0600.
    #[arg(long, short, value_name = "FILE")]
    pub out: PathBuf,
    /// The file for a pair's public key (PEM). Default: OUT with `.pem` replaced by
    /// `.pub.pem` (or `.pub.pem` appended).
    #[arg(long, value_name = "FILE")]
    pub public_out: Option<PathBuf>,
    /// RSA modulus size in bits.
    #[arg(long, default_value_t = 3072)]
    pub bits: u32,
    /// EC curve.
    #[arg(long, value_enum, default_value = "p256")]
    pub curve: Curve,
    /// Replace files that exist.
    #[arg(long)]
    pub force: bool,
}

/// Runs `veil keys …`; errors are printed with what was wrong.
pub fn run_keys(command: KeysCommand) -> ExitCode {
    let KeysCommand::Gen(args) = command;
    match generate(&args) {
        Ok(lines) => {
            for line in lines {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("veil keys gen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The public key's file for a private key written to `out`.
pub fn default_public_path(out: &Path) -> PathBuf {
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned());
    let name = name.unwrap_or_default();
    let stem = name.strip_suffix(".pem").unwrap_or(&name);
    out.with_file_name(format!("{stem}.pub.pem"))
}

/// Makes the key material `args` asks for and writes it; returns what to tell the user.
pub fn generate(args: &GenArgs) -> anyhow::Result<Vec<String>> {
    let out = &args.out;
    if args.kind == GenKind::Kek {
        refuse_existing(out, args.force)?;
        let kek = generate_kek()?;
        write_file(out, kek.expose(), 0o600, args.force)?;
        return Ok(vec![
            format!("wrote {} ({KEK_LEN}-byte KEK, mode 0600)", out.display()),
            "next: store it in the KBS as the resource your kid names (kbs:///REPO/TYPE/TAG → \
             REPO/TYPE/TAG), then `veil convert SRC DST --encrypt --kbs-kid kbs:///REPO/TYPE/TAG \
             --kek-file FILE`"
                .into(),
        ]);
    }
    let kind = match (args.kind, args.curve) {
        (GenKind::Rsa, _) => PairKind::Rsa(args.bits),
        (_, Curve::P256) => PairKind::P256,
        (_, Curve::P384) => PairKind::P384,
        (_, Curve::P521) => PairKind::P521,
    };
    let public = args
        .public_out
        .clone()
        .unwrap_or_else(|| default_public_path(out));
    if public == *out {
        bail!("--public-out must differ from --out ({})", out.display());
    }
    refuse_existing(out, args.force)?;
    refuse_existing(&public, args.force)?;
    let pair = generate_pair(kind)?;
    write_file(&public, &pair.public_pem, 0o644, args.force)?;
    if let Err(e) = write_file(out, &pair.private_pem, 0o600, args.force) {
        // A pair is written whole or not at all.
        let _ = std::fs::remove_file(&public);
        return Err(e);
    }
    Ok(vec![
        format!(
            "wrote {} ({kind} private key, PKCS#8 PEM, mode 0600)",
            out.display()
        ),
        format!("wrote {} (public key, PEM)", public.display()),
        format!(
            "next: `veil convert SRC DST --encrypt --recipient jwe:{}`; put {} into the \
             guest's [decryption] keys_dir",
            public.display(),
            out.display()
        ),
    ])
}

fn refuse_existing(path: &Path, force: bool) -> anyhow::Result<()> {
    if !force && path.symlink_metadata().is_ok() {
        bail!(
            "{} exists; not replacing key material (--force replaces it)",
            path.display()
        );
    }
    Ok(())
}

/// Writes `bytes` to `path` with `mode`: a new file, or with `force` a temporary file
/// beside it renamed over it.
fn write_file(path: &Path, bytes: &[u8], mode: u32, force: bool) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        bail!(
            "{}: directory {} does not exist",
            path.display(),
            dir.display()
        );
    }
    let target = if force {
        let name = path.file_name().context("no file name")?.to_string_lossy();
        dir.join(format!(".{name}.veil-tmp-{}", std::process::id()))
    } else {
        path.to_path_buf()
    };
    let written = (|| -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&target)?;
        // The mode given to open is masked by the umask; the key file's mode is not.
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    if let Err(e) = written {
        if force {
            let _ = std::fs::remove_file(&target);
        }
        return Err(e).with_context(|| format!("writing {}", target.display()));
    }
    if force {
        std::fs::rename(&target, path).with_context(|| {
            let _ = std::fs::remove_file(&target);
            format!("replacing {}", path.display())
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(kind: GenKind, out: PathBuf) -> GenArgs {
        GenArgs {
            kind,
            out,
            public_out: None,
            bits: 2048,
            curve: Curve::P256,
            force: false,
        }
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn public_path_beside_the_private_key() {
        assert_eq!(
            default_public_path(Path::new("/k/ops.pem")),
            Path::new("/k/ops.pub.pem")
        );
        assert_eq!(
            default_public_path(Path::new("ops.key")),
            Path::new("ops.key.pub.pem")
        );
    }

    #[test]
    fn writes_keys_with_private_modes_and_never_replaces_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let kek = dir.path().join("kek.bin");
        generate(&args(GenKind::Kek, kek.clone())).unwrap();
        let first = std::fs::read(&kek).unwrap();
        assert_eq!((first.len(), mode(&kek)), (KEK_LEN, 0o600));

        let err = generate(&args(GenKind::Kek, kek.clone())).unwrap_err();
        assert!(err.to_string().contains("exists"), "{err}");
        assert_eq!(std::fs::read(&kek).unwrap(), first, "kept as it was");
        let mut forced = args(GenKind::Kek, kek.clone());
        forced.force = true;
        generate(&forced).unwrap();
        assert_ne!(std::fs::read(&kek).unwrap(), first);
        assert_eq!(mode(&kek), 0o600);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp left"
        );

        let ec = dir.path().join("ec.pem");
        let lines = generate(&args(GenKind::Ec, ec.clone())).unwrap();
        let public = dir.path().join("ec.pub.pem");
        assert!(lines.join("\n").contains("jwe:"), "{lines:?}");
        assert_eq!((mode(&ec), mode(&public)), (0o600, 0o644));
        let private = veil_keyprovider::keys::PrivateKey::from_file(&ec).unwrap();
        let derived = private[0].public_key().unwrap();
        let read = veil_keyprovider::keys::PublicKey::from_file(&public).unwrap();
        assert_eq!(derived.kind(), read.kind());

        // An existing public key stops the pair before anything is written.
        let rsa = dir.path().join("rsa.pem");
        std::fs::write(dir.path().join("rsa.pub.pem"), b"keep").unwrap();
        let err = generate(&args(GenKind::Rsa, rsa.clone())).unwrap_err();
        assert!(err.to_string().contains("rsa.pub.pem exists"), "{err}");
        assert!(!rsa.exists());

        let missing = dir.path().join("no/such/dir/kek.bin");
        let err = generate(&args(GenKind::Kek, missing)).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }
}
