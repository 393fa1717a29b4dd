//! `veil-keyprovider`: the ocicrypt key model and key unwrapping.
//!
//! - [`ocicrypt`]: media types, descriptor annotations, public/private layer block cipher
//!   options (and Veil's sealed TOC digest);
//! - [`keys`]: private keys from a keys directory (PEM, DER, JWK; RSA and EC), public keys;
//! - [`jwe`]: JWE recipients: unwrap with a private key, wrap to public keys;
//! - [`unwrap`]: a layer's private options from its recipients and a key ring;
//! - [`secret`]: zeroizing byte strings and ocicrypt's base64 JSON encoding.
//!
//! Key material lives in zeroizing buffers (or in OpenSSL, which clears keys when freed)
//! and no `Debug` or error output of this crate contains any of it. The attestation-agent
//! recipient, the KBS client and the TEE attesters are tracked as their own issues.

#![warn(missing_docs)]

pub mod jwe;
pub mod keys;
pub mod ocicrypt;
pub mod secret;
pub mod unwrap;
