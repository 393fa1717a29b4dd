//! ocicrypt's layer annotations and options: the input's lines are `KEY=VALUE`
//! annotations (a first byte below 4 on a line picks one of ocicrypt's names, else the
//! line is taken as is) for `EncryptedLayer::from_annotations`; the whole input is also
//! parsed as public and private options JSON and, when both parse, turned into the
//! layer's cipher parameters and sealed TOC digest.
#![no_main]
use libfuzzer_sys::fuzz_target;
use veil_keyprovider::ocicrypt::{
    layer_cipher_params, sealed_toc_digest, EncryptedLayer, PrivateLayerBlockCipherOptions,
    PublicLayerBlockCipherOptions, ANNOTATION_PUBOPTS,
};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let annotations: Vec<(String, String)> = text
        .lines()
        .map(|line| {
            let (key, value) = line.split_once('=').unwrap_or((line, ""));
            let key = match key.as_bytes().first() {
                Some(0) => ANNOTATION_PUBOPTS.to_string(),
                Some(1) => "org.opencontainers.image.enc.keys.jwe".to_string(),
                Some(2) => "org.opencontainers.image.enc.keys.provider.attestation-agent".into(),
                Some(3) => "org.opencontainers.image.enc.keys.pkcs7".to_string(),
                _ => key.to_string(),
            };
            (key, value.to_string())
        })
        .collect();
    if let Ok(layer) = EncryptedLayer::from_annotations(annotations) {
        let _ = layer.schemes();
        let _ = layer.to_annotations();
    }
    let public = PublicLayerBlockCipherOptions::from_json(data);
    let private = PrivateLayerBlockCipherOptions::from_json(data);
    if let (Ok(public), Ok(private)) = (public, private) {
        let _ = layer_cipher_params(&public, &private);
        let _ = sealed_toc_digest(&private);
    }
});
