//! The KBS's answers as `veil_keyprovider::kbs` reads them: the `auth` challenge (and the
//! runtime-data digest it selects), the `attest` token (and its JWT `exp`), a refusal
//! body, and a resource answer (a flattened JWE) decrypted with an EC and an RSA TEE key
//! (made once).
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use veil_keyprovider::kbs::client::{parse_challenge, parse_token_answer, runtime_data_digest};
use veil_keyprovider::kbs::tee_key::{TeeKey, TeeKeyType};
use veil_keyprovider::kbs::KbsRefusal;

fn keys() -> &'static [TeeKey] {
    static KEYS: OnceLock<Vec<TeeKey>> = OnceLock::new();
    KEYS.get_or_init(|| {
        [TeeKeyType::EcP256, TeeKeyType::Rsa]
            .into_iter()
            .map(|kind| TeeKey::generate(kind).unwrap())
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(challenge) = parse_challenge(data) {
        let _ = runtime_data_digest(
            &challenge.nonce,
            keys()[0].public(),
            &challenge.extra_params,
        );
    }
    let _ = parse_token_answer(data);
    let _ = KbsRefusal::from_answer(401, data);
    for key in keys() {
        let _ = key.decrypt_response(data);
    }
});
