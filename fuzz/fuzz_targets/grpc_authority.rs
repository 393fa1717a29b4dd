//! A gRPC client's HTTP/2 bytes through the `:authority` front of Veil's unix-socket
//! servers (`veil_daemon::authority_rewrite`): the input (after a valid preface) is fed in
//! pieces whose sizes its first byte sets; it must never panic, and what h2 gets starts
//! with the preface.
#![no_main]
use libfuzzer_sys::fuzz_target;
use veil_daemon::authority_rewrite::AuthorityRewriter;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fuzz_target!(|data: &[u8]| {
    let Some((&step, frames)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);
    let mut rewriter = AuthorityRewriter::new();
    let mut out = Vec::new();
    if rewriter.push(PREFACE, &mut out).is_err() {
        panic!("the preface was refused");
    }
    for piece in frames.chunks(step) {
        if rewriter.push(piece, &mut out).is_err() {
            return;
        }
    }
    assert!(out.starts_with(PREFACE));
});
