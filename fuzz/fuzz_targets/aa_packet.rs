//! The attestation-agent annotation packet (`veil_keyprovider::aa_packet`): parsed from
//! the input JSON and, when it parses, opened with a fixed 32-byte KEK.
#![no_main]
use libfuzzer_sys::fuzz_target;
use veil_keyprovider::aa_packet::AnnotationPacket;
use veil_keyprovider::secret::SecretBytes;

fuzz_target!(|data: &[u8]| {
    if let Ok(packet) = AnnotationPacket::from_json(data) {
        let _ = packet.unwrap(&SecretBytes::new(vec![7u8; 32]));
        let _ = packet.to_json();
    }
});
