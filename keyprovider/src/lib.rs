//! `veil-keyprovider`: the ocicrypt key model, key unwrapping per recipient scheme (JWE,
//! CoCo attestation-agent), the KBS attestation client and the TEE attesters.
//!
//! Nothing is implemented here yet: encrypted layers and attested key release are tracked
//! as their own issues. The crate exists so that the workspace has its final shape and the
//! seams stay where DESIGN.md puts them.
