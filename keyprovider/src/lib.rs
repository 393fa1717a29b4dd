//! `veil-keyprovider`: the ocicrypt key model and key unwrapping.
//!
//! - [`ocicrypt`]: media types, descriptor annotations, public/private layer block cipher
//!   options (and Veil's sealed TOC digest);
//! - [`keys`]: private keys from a keys directory (PEM, DER, JWK; RSA and EC), public keys;
//! - [`jwe`]: JWE recipients: unwrap with a private key, wrap to public keys;
//! - [`aa_packet`]: CoCo attestation-agent recipients (annotation packets v1/v2,
//!   AES-256-GCM key wrapping with a KEK named by `kid`);
//! - [`keygen`]: new KEKs and RSA / EC key pairs (`veil keys gen`);
//! - [`kek`]: KEK sources (`file`, `cdh`, `kbs`) chained in order, with an in-memory cache;
//! - [`kbs`]: the KBS attestation client (RCAR 0.4.0 on `kbs-types`), TEE keys, attesters
//!   (`sample`, TDX / SEV-SNP through configfs-tsm);
//! - [`provider_protocol`]: the ocicrypt keyprovider protocol's JSON (WrapKey /
//!   UnWrapKey) for the `attestation-agent` provider, Go and Rust byte encodings;
//! - [`unwrap`]: a layer's private options from its recipients, a key ring and KEK sources;
//! - [`secret`]: zeroizing byte strings and ocicrypt's base64 JSON encoding;
//! - [`cipher`]: the ocicrypt layer cipher, AES-256-CTR at any offset (a decrypting
//!   [`veil_blob::BlobSource`]) and the HMAC-SHA256 check;
//! - [`stream_cipher`]: one front-to-back pass over a whole blob, decrypting while the
//!   HMAC is fed, and the HMAC check of a ciphertext at hand;
//! - [`layer`]: opening an encrypted layer: its key unwrapped with a key ring and a KEK
//!   chain, a decrypting source, the sealed TOC digest.
//!
//! Key material lives in zeroizing buffers (or in OpenSSL, which clears keys when freed)
//! and no `Debug` or error output of this crate contains any of it.

pub mod aa_packet;
pub mod cipher;
pub mod jwe;
pub mod kbs;
pub mod kek;
pub mod keygen;
pub mod keys;
pub mod layer;
pub mod ocicrypt;
pub mod provider_protocol;
pub mod secret;
pub mod stream_cipher;
pub mod unwrap;
