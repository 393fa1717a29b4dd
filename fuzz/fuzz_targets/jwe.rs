//! ocicrypt's JWE recipients (`org.opencontainers.image.enc.keys.jwe`): the input is a
//! JWE (JSON serialization), decrypted by `veil_keyprovider::jwe::decrypt` with an RSA
//! and an EC P-256 private key (made once).
#![no_main]
use libfuzzer_sys::fuzz_target;
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use std::sync::OnceLock;
use veil_keyprovider::keys::PrivateKey;

fn keys() -> &'static [PrivateKey] {
    static KEYS: OnceLock<Vec<PrivateKey>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let rsa = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let ec = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
        [rsa, ec]
            .iter()
            .flat_map(|k| {
                PrivateKey::from_bytes(&k.private_key_to_pem_pkcs8().unwrap(), "fuzz").unwrap()
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    for key in keys() {
        let _ = veil_keyprovider::jwe::decrypt(data, key);
    }
});
