//! Private keys from a keys directory (like containerd's `/etc/containerd/ocicrypt/keys`),
//! and public keys to wrap to.
//!
//! Formats read, detected by content (not by file name):
//! - PEM: PKCS#8 (`PRIVATE KEY`), PKCS#1 (`RSA PRIVATE KEY`), SEC1 (`EC PRIVATE KEY`, with
//!   or without an `EC PARAMETERS` block first);
//! - DER: PKCS#8, PKCS#1 or SEC1;
//! - JWK: one private JWK, or a JWK Set (`{"keys":[...]}`), RSA or EC.
//!
//! Key types: RSA of 2048 bits or more, EC on P-256, P-384 or P-521 (what ocicrypt's JWE
//! wrapper produces). Parsing is done by OpenSSL, which also holds the keys and clears
//! them when freed. Password-protected keys are refused with a clear error (no prompt).
//! Public keys and X.509 certificates found in the directory are ignored and listed (they
//! legitimately sit beside private keys for PKCS7); anything else is an error naming the
//! file. The file bytes are read into buffers that are wiped after parsing.

use std::fmt;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use josekit::jwk::alg::ec::EcKeyPair;
use josekit::jwk::alg::rsa::RsaKeyPair;
use josekit::jwk::{Jwk, KeyPair as _};
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey, Private, Public};
use openssl::x509::X509;
use thiserror::Error;
use zeroize::Zeroizing;

/// Key files larger than this are refused (a key is a few KiB at most).
const MAX_KEY_FILE: u64 = 1 << 20;
/// Smallest RSA modulus accepted.
const MIN_RSA_BITS: u32 = 2048;

/// A key file that cannot be used, or a directory that cannot be read. Names the file and
/// the reason; never contains key bytes.
#[derive(Debug, Error)]
pub enum KeyError {
    /// The directory or file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file that holds no usable private key.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

impl KeyError {
    fn invalid(path: &Path, reason: impl Into<String>) -> Self {
        KeyError::Invalid {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}

/// The algorithm family of a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA with a modulus of this many bits.
    Rsa {
        /// Modulus size.
        bits: u32,
    },
    /// EC on a NIST curve, by JOSE name (`P-256`, `P-384`, `P-521`).
    Ec {
        /// The curve's JOSE name.
        curve: &'static str,
    },
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyKind::Rsa { bits } => write!(f, "RSA-{bits}"),
            KeyKind::Ec { curve } => write!(f, "EC {curve}"),
        }
    }
}

/// Checks the key type and size; the same rules for private and public keys.
fn kind_of<T: openssl::pkey::HasPublic>(pkey: &PKey<T>) -> Result<KeyKind, String> {
    match pkey.id() {
        Id::RSA => {
            let bits = pkey.bits();
            if bits < MIN_RSA_BITS {
                return Err(format!(
                    "RSA key of {bits} bits is too small (at least {MIN_RSA_BITS})"
                ));
            }
            Ok(KeyKind::Rsa { bits })
        }
        Id::EC => {
            let ec = pkey.ec_key().map_err(|e| format!("bad EC key: {e}"))?;
            let curve = match ec.group().curve_name() {
                Some(Nid::X9_62_PRIME256V1) => "P-256",
                Some(Nid::SECP384R1) => "P-384",
                Some(Nid::SECP521R1) => "P-521",
                _ => return Err("EC key on an unsupported curve (P-256, P-384, P-521)".into()),
            };
            Ok(KeyKind::Ec { curve })
        }
        other => Err(format!(
            "unsupported key type (OpenSSL id {}); RSA and EC are",
            other.as_raw()
        )),
    }
}

/// One private key and where it came from. `Debug` shows the source and type only.
pub struct PrivateKey {
    source: PathBuf,
    kind: KeyKind,
    pkey: PKey<Private>,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("source", &self.source)
            .field("kind", &self.kind)
            .finish()
    }
}

/// What a file turned out to hold.
enum Parsed {
    Private(Vec<PKey<Private>>),
    /// A public key or certificate: not usable to unwrap; the text says which.
    Public(&'static str),
}

impl PrivateKey {
    /// The private keys in one file's bytes (a JWK Set can hold several). `source` names
    /// the file in errors and in [`PrivateKey::source`].
    pub fn from_bytes(bytes: &[u8], source: impl Into<PathBuf>) -> Result<Vec<Self>, KeyError> {
        let source = source.into();
        match parse_private(bytes).map_err(|reason| KeyError::invalid(&source, reason))? {
            Parsed::Private(pkeys) => pkeys
                .into_iter()
                .map(|pkey| Self::new(pkey, source.clone()))
                .collect(),
            Parsed::Public(what) => Err(KeyError::invalid(
                &source,
                format!("holds {what}, not a private key"),
            )),
        }
    }

    /// The private keys in the file at `path`.
    pub fn from_file(path: &Path) -> Result<Vec<Self>, KeyError> {
        let bytes = read_key_file(path)?;
        Self::from_bytes(&bytes, path)
    }

    fn new(pkey: PKey<Private>, source: PathBuf) -> Result<Self, KeyError> {
        let kind = kind_of(&pkey).map_err(|reason| KeyError::invalid(&source, reason))?;
        Ok(Self { source, kind, pkey })
    }

    /// The file the key was read from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// RSA or EC, and its size or curve.
    pub fn kind(&self) -> &KeyKind {
        &self.kind
    }

    /// The key as unencrypted PKCS#8 DER, in a buffer wiped on drop (for the JOSE layer).
    pub(crate) fn pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>, openssl::error::ErrorStack> {
        self.pkey.private_key_to_pkcs8().map(Zeroizing::new)
    }

    /// The matching public key.
    pub fn public_key(&self) -> Result<PublicKey, KeyError> {
        let der = self
            .pkey
            .public_key_to_der()
            .map_err(|e| KeyError::invalid(&self.source, e.to_string()))?;
        let pkey = PKey::public_key_from_der(&der)
            .map_err(|e| KeyError::invalid(&self.source, e.to_string()))?;
        Ok(PublicKey {
            source: self.source.clone(),
            kind: self.kind.clone(),
            pkey,
        })
    }
}

/// A public key to wrap layer keys to (RSA or EC).
pub struct PublicKey {
    source: PathBuf,
    kind: KeyKind,
    pkey: PKey<Public>,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("source", &self.source)
            .field("kind", &self.kind)
            .finish()
    }
}

impl PublicKey {
    /// A public key from PEM (`PUBLIC KEY`, `RSA PUBLIC KEY`, `CERTIFICATE`), DER
    /// (SubjectPublicKeyInfo or certificate) or a JWK.
    pub fn from_bytes(bytes: &[u8], source: impl Into<PathBuf>) -> Result<Self, KeyError> {
        let source = source.into();
        let pkey = parse_public(bytes).map_err(|reason| KeyError::invalid(&source, reason))?;
        let kind = kind_of(&pkey).map_err(|reason| KeyError::invalid(&source, reason))?;
        Ok(Self { source, kind, pkey })
    }

    /// A public key from the file at `path`.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let bytes = read_key_file(path)?;
        Self::from_bytes(&bytes, path)
    }

    /// Where the key came from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// RSA or EC, and its size or curve.
    pub fn kind(&self) -> &KeyKind {
        &self.kind
    }

    /// SubjectPublicKeyInfo DER (for the JOSE layer).
    pub(crate) fn spki_der(&self) -> Result<Vec<u8>, openssl::error::ErrorStack> {
        self.pkey.public_key_to_der()
    }
}

/// Every private key of a keys directory.
#[derive(Debug, Default)]
pub struct KeyRing {
    keys: Vec<PrivateKey>,
    ignored: Vec<(PathBuf, &'static str)>,
}

impl KeyRing {
    /// Loads every regular file (symlinks followed) directly in `dir`, in name order.
    /// Entries whose names start with `.` are skipped (Kubernetes secret volumes keep their
    /// `..data` links there); public keys and certificates are listed in
    /// [`KeyRing::ignored`]. Any other file that is not a usable private key is an error
    /// naming it.
    pub fn load_dir(dir: &Path) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io {
            path: dir.to_path_buf(),
            source,
        };
        let mut paths = Vec::new();
        for entry in fs::read_dir(dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let path = entry.path();
            let meta = fs::metadata(&path).map_err(|source| KeyError::Io {
                path: path.clone(),
                source,
            })?;
            if meta.is_file() {
                paths.push(path);
            }
        }
        paths.sort();
        let mut ring = Self::default();
        for path in paths {
            let bytes = read_key_file(&path)?;
            match parse_private(&bytes).map_err(|reason| KeyError::invalid(&path, reason))? {
                Parsed::Private(pkeys) => {
                    for pkey in pkeys {
                        ring.keys.push(PrivateKey::new(pkey, path.clone())?);
                    }
                }
                Parsed::Public(what) => ring.ignored.push((path, what)),
            }
        }
        Ok(ring)
    }

    /// A ring of the given keys.
    pub fn from_keys(keys: Vec<PrivateKey>) -> Self {
        Self {
            keys,
            ignored: Vec::new(),
        }
    }

    /// The private keys, in load order.
    pub fn keys(&self) -> &[PrivateKey] {
        &self.keys
    }

    /// Files that were skipped because they hold only public material, and what they hold.
    pub fn ignored(&self) -> &[(PathBuf, &'static str)] {
        &self.ignored
    }

    /// The distinct files the private keys came from, in load order.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = Vec::new();
        for key in &self.keys {
            if files.last().map(PathBuf::as_path) != Some(key.source()) {
                files.push(key.source().to_path_buf());
            }
        }
        files
    }

    /// True when there is no private key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

fn read_key_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = fs::File::open(path).map_err(io)?;
    let mut bytes = Zeroizing::new(Vec::new());
    file.take(MAX_KEY_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_KEY_FILE {
        return Err(KeyError::invalid(
            path,
            format!("larger than {MAX_KEY_FILE} bytes: not a key file"),
        ));
    }
    Ok(bytes)
}

/// The labels of the PEM blocks in `text`, in order.
fn pem_labels(text: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(text);
    text.lines()
        .filter_map(|line| {
            line.trim()
                .strip_prefix("-----BEGIN ")
                .and_then(|rest| rest.strip_suffix("-----"))
                .map(str::to_string)
        })
        .collect()
}

fn trimmed(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    &bytes[start..]
}

fn parse_private(bytes: &[u8]) -> Result<Parsed, String> {
    let body = trimmed(bytes);
    if body.is_empty() {
        return Err("empty file".into());
    }
    if body.starts_with(b"{") {
        return parse_jwk_private(body);
    }
    let labels = pem_labels(body);
    if !labels.is_empty() {
        return parse_pem_private(body, &labels);
    }
    // DER: PKCS#8, PKCS#1 or SEC1 (d2i_AutoPrivateKey).
    if let Ok(pkey) = PKey::private_key_from_der(bytes) {
        return Ok(Parsed::Private(vec![pkey]));
    }
    if PKey::public_key_from_der(bytes).is_ok() {
        return Ok(Parsed::Public("a DER public key"));
    }
    if X509::from_der(bytes).is_ok() {
        return Ok(Parsed::Public("a DER X.509 certificate"));
    }
    if bytes.starts_with(&[0x30]) {
        // Encrypted PKCS#8 DER is a SEQUENCE too; say so rather than "unknown".
        return Err(
            "DER that is not an unencrypted PKCS#8, PKCS#1 or SEC1 private key \
                    (password-protected keys are not supported)"
                .into(),
        );
    }
    Err("not a PEM, DER or JWK private key (GPG and PKCS#11 keys are not supported)".into())
}

fn parse_pem_private(pem: &[u8], labels: &[String]) -> Result<Parsed, String> {
    let encrypted = labels.iter().any(|l| l == "ENCRYPTED PRIVATE KEY")
        || String::from_utf8_lossy(pem).contains("Proc-Type: 4,ENCRYPTED");
    if encrypted {
        return Err("password-protected private key: not supported, store it unencrypted".into());
    }
    if labels.iter().any(|l| l.ends_with("PRIVATE KEY")) {
        // A callback that supplies no passphrase: OpenSSL never prompts on a terminal.
        return PKey::private_key_from_pem_callback(pem, |_| Ok(0))
            .map(|pkey| Parsed::Private(vec![pkey]))
            .map_err(|e| format!("unreadable PEM private key ({})", first_reason(&e)));
    }
    if labels.iter().any(|l| l == "CERTIFICATE") {
        return Ok(Parsed::Public("an X.509 certificate"));
    }
    if labels.iter().any(|l| l.ends_with("PUBLIC KEY")) {
        return Ok(Parsed::Public("a public key"));
    }
    if labels.iter().any(|l| l.starts_with("PGP")) {
        return Err("a PGP key: not supported (JWE recipients only)".into());
    }
    Err(format!(
        "PEM without a private key (blocks: {})",
        labels.join(", ")
    ))
}

fn parse_jwk_private(json: &[u8]) -> Result<Parsed, String> {
    let value: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| format!("invalid JSON: {e}"))?;
    let jwks: Vec<serde_json::Map<String, serde_json::Value>> = match value {
        serde_json::Value::Object(mut map) => match map.remove("keys") {
            Some(serde_json::Value::Array(keys)) => keys
                .into_iter()
                .map(|k| match k {
                    serde_json::Value::Object(m) => Ok(m),
                    _ => Err("a JWK Set entry is not an object".to_string()),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err("\"keys\" of a JWK Set is not an array".into()),
            None => vec![map],
        },
        _ => return Err("JSON that is not a JWK or JWK Set".into()),
    };
    let mut keys = Vec::new();
    let mut public_only = 0;
    for (index, map) in jwks.into_iter().enumerate() {
        if !map.contains_key("d") {
            public_only += 1;
            continue;
        }
        let jwk = Jwk::from_map(map).map_err(|e| format!("JWK {index}: {}", first_line(&e)))?;
        let der = Zeroizing::new(
            match jwk.key_type() {
                "RSA" => RsaKeyPair::from_jwk(&jwk).map(|k| k.to_der_private_key()),
                "EC" => EcKeyPair::from_jwk(&jwk).map(|k| k.to_der_private_key()),
                other => return Err(format!("JWK {index}: unsupported kty {other:?} (RSA, EC)")),
            }
            .map_err(|e| format!("JWK {index}: {}", first_line(&e)))?,
        );
        let pkey = PKey::private_key_from_der(&der)
            .map_err(|e| format!("JWK {index}: {}", first_reason(&e)))?;
        keys.push(pkey);
    }
    if keys.is_empty() {
        if public_only > 0 {
            return Ok(Parsed::Public("a public JWK"));
        }
        return Err("an empty JWK Set".into());
    }
    Ok(Parsed::Private(keys))
}

fn parse_public(bytes: &[u8]) -> Result<PKey<Public>, String> {
    let body = trimmed(bytes);
    if body.starts_with(b"{") {
        let map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(body).map_err(|e| format!("invalid JWK: {e}"))?;
        let der = jwk_public_spki(&map)?;
        return PKey::public_key_from_der(&der).map_err(|e| first_reason(&e));
    }
    let labels = pem_labels(body);
    if labels.iter().any(|l| l == "CERTIFICATE") {
        let cert = X509::from_pem(body).map_err(|e| first_reason(&e))?;
        return cert.public_key().map_err(|e| first_reason(&e));
    }
    if labels.iter().any(|l| l == "RSA PUBLIC KEY") {
        let rsa =
            openssl::rsa::Rsa::public_key_from_pem_pkcs1(body).map_err(|e| first_reason(&e))?;
        return PKey::from_rsa(rsa).map_err(|e| first_reason(&e));
    }
    if labels.iter().any(|l| l == "PUBLIC KEY") {
        return PKey::public_key_from_pem(body).map_err(|e| first_reason(&e));
    }
    if !labels.is_empty() {
        return Err(format!(
            "PEM without a public key (blocks: {})",
            labels.join(", ")
        ));
    }
    if let Ok(pkey) = PKey::public_key_from_der(bytes) {
        return Ok(pkey);
    }
    X509::from_der(bytes)
        .and_then(|cert| cert.public_key())
        .map_err(|_| "not a PEM, DER or JWK public key or certificate".to_string())
}

/// The SubjectPublicKeyInfo DER of a JWK's public part (RSA `n`,`e`; EC `crv`,`x`,`y`).
fn jwk_public_spki(jwk: &serde_json::Map<String, serde_json::Value>) -> Result<Vec<u8>, String> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use openssl::bn::BigNum;
    let text = |name: &str| -> Result<&str, String> {
        jwk.get(name)
            .and_then(|v| v.as_str())
            .ok_or_else(|| format!("JWK without a string {name:?}"))
    };
    let number = |name: &str| -> Result<BigNum, String> {
        let bytes = URL_SAFE_NO_PAD
            .decode(text(name)?)
            .map_err(|e| format!("JWK {name:?}: {e}"))?;
        BigNum::from_slice(&bytes).map_err(|e| first_reason(&e))
    };
    match text("kty")? {
        "RSA" => {
            let rsa = openssl::rsa::Rsa::from_public_components(number("n")?, number("e")?)
                .map_err(|e| first_reason(&e))?;
            rsa.public_key_to_der().map_err(|e| first_reason(&e))
        }
        "EC" => {
            let nid = match text("crv")? {
                "P-256" => Nid::X9_62_PRIME256V1,
                "P-384" => Nid::SECP384R1,
                "P-521" => Nid::SECP521R1,
                other => return Err(format!("unsupported JWK curve {other:?}")),
            };
            let group = openssl::ec::EcGroup::from_curve_name(nid).map_err(|e| first_reason(&e))?;
            let (x, y) = (number("x")?, number("y")?);
            let ec = openssl::ec::EcKey::from_public_key_affine_coordinates(&group, &x, &y)
                .map_err(|e| format!("JWK point not on the curve ({})", first_reason(&e)))?;
            PKey::from_ec_key(ec)
                .and_then(|k| k.public_key_to_der())
                .map_err(|e| first_reason(&e))
        }
        other => Err(format!("unsupported JWK kty {other:?} (RSA, EC)")),
    }
}

/// OpenSSL's first reason string (error stacks can be long).
fn first_reason(e: &openssl::error::ErrorStack) -> String {
    e.errors()
        .first()
        .and_then(|e| e.reason().map(str::to_string))
        .unwrap_or_else(|| "OpenSSL could not parse it".into())
}

fn first_line(e: &impl fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::rsa::Rsa;

    fn rsa() -> PKey<Private> {
        PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap()
    }

    fn ec() -> PKey<Private> {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
    }

    #[test]
    fn reads_every_private_format() {
        let dir = tempfile::tempdir().unwrap();
        let r = rsa();
        let e = ec();
        let files: Vec<(&str, Vec<u8>)> = vec![
            ("a-pkcs8.pem", r.private_key_to_pem_pkcs8().unwrap()),
            (
                "b-pkcs1.pem",
                r.rsa().unwrap().private_key_to_pem().unwrap(),
            ),
            (
                "c-sec1.pem",
                e.ec_key().unwrap().private_key_to_pem().unwrap(),
            ),
            ("d-pkcs8.der", e.private_key_to_pkcs8().unwrap()),
            (
                "e-pkcs1.der",
                r.rsa().unwrap().private_key_to_der().unwrap(),
            ),
            (
                "f-sec1.der",
                e.ec_key().unwrap().private_key_to_der().unwrap(),
            ),
            (
                "g-rsa.jwk",
                RsaKeyPair::from_der(r.private_key_to_pkcs8().unwrap())
                    .unwrap()
                    .to_jwk_private_key()
                    .to_string()
                    .into_bytes(),
            ),
            (
                "h-ec.jwk",
                EcKeyPair::from_der(e.private_key_to_pkcs8().unwrap(), None)
                    .unwrap()
                    .to_jwk_private_key()
                    .to_string()
                    .into_bytes(),
            ),
            ("i-pub.pem", r.public_key_to_pem().unwrap()),
        ];
        for (name, bytes) in &files {
            fs::write(dir.path().join(name), bytes).unwrap();
        }
        fs::write(dir.path().join(".hidden"), b"junk").unwrap();
        fs::create_dir(dir.path().join("..data")).unwrap();
        let ring = KeyRing::load_dir(dir.path()).unwrap();
        let kinds: Vec<String> = ring.keys().iter().map(|k| k.kind().to_string()).collect();
        assert_eq!(
            kinds,
            [
                "RSA-2048", "RSA-2048", "EC P-256", "EC P-256", "RSA-2048", "EC P-256", "RSA-2048",
                "EC P-256"
            ]
        );
        assert_eq!(ring.files().len(), 8);
        assert_eq!(ring.ignored().len(), 1);
        assert!(ring.ignored()[0].0.ends_with("i-pub.pem"));
        // Debug names files and types only.
        let shown = format!("{ring:?}");
        assert!(shown.contains("a-pkcs8.pem") && !shown.contains("BEGIN"));
        // Public keys from the same material.
        for key in ring.keys() {
            let public = key.public_key().unwrap();
            assert_eq!(public.kind(), key.kind());
        }
        let jwk_pub = RsaKeyPair::from_der(r.private_key_to_pkcs8().unwrap())
            .unwrap()
            .to_jwk_public_key();
        let p = PublicKey::from_bytes(jwk_pub.to_string().as_bytes(), "jwk").unwrap();
        assert_eq!(p.spki_der().unwrap(), r.public_key_to_der().unwrap());
        let p = PublicKey::from_bytes(
            &r.rsa().unwrap().public_key_to_pem_pkcs1().unwrap(),
            "pkcs1",
        )
        .unwrap();
        assert_eq!(p.kind(), &KeyKind::Rsa { bits: 2048 });
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("ok.pem"),
            ec().private_key_to_pem_pkcs8().unwrap(),
        )
        .unwrap();
        fs::write(dir.path().join("garbage.key"), b"hello world").unwrap();
        let err = KeyRing::load_dir(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("garbage.key") && err.contains("not a PEM, DER or JWK"),
            "{err}"
        );

        let small = PKey::from_rsa(Rsa::generate(1024).unwrap()).unwrap();
        let err = PrivateKey::from_bytes(&small.private_key_to_pem_pkcs8().unwrap(), "small.pem")
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("small.pem: RSA key of 1024 bits is too small"),
            "{err}"
        );

        let enc = rsa()
            .private_key_to_pem_pkcs8_passphrase(openssl::symm::Cipher::aes_256_cbc(), b"pw")
            .unwrap();
        let err = PrivateKey::from_bytes(&enc, "locked.pem").unwrap_err();
        assert!(
            err.to_string().contains("locked.pem: password-protected"),
            "{err}"
        );

        let err = KeyRing::load_dir(&dir.path().join("missing")).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        let err = PrivateKey::from_bytes(b"", "empty").unwrap_err();
        assert!(err.to_string().contains("empty: empty file"), "{err}");
    }
}
