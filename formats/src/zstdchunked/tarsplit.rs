//! tar-split data for zstd:chunked: how to rebuild the exact tar stream from file
//! contents, as containers/storage expects it next to the TOC.
//!
//! The format is vbatts/tar-split's JSON packer: one JSON object per line, either a
//! segment (`"type":2`, raw bytes in `payload`, base64) or a file (`"type":1`, `name`,
//! `size`, and in `payload` the big-endian CRC-64/ISO of its contents, or null when
//! empty), each with an increasing `position`. The lines are zstd-compressed.

use std::io::Write;

use base64::Engine as _;
use serde::Serialize;

use crate::estargz::layout::StreamObserver;

/// The CRC-64 ISO polynomial, reversed (as Go's `hash/crc64` uses it).
const ISO_POLY: u64 = 0xD800_0000_0000_0000;

/// CRC-64/ISO, as Go's `crc64.New(crc64.MakeTable(crc64.ISO))`.
pub(crate) struct Crc64 {
    table: [u64; 256],
    crc: u64,
}

impl Crc64 {
    pub fn new() -> Self {
        let mut table = [0u64; 256];
        for (i, slot) in table.iter_mut().enumerate() {
            let mut crc = i as u64;
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ ISO_POLY
                } else {
                    crc >> 1
                };
            }
            *slot = crc;
        }
        Self { table, crc: 0 }
    }

    pub fn update(&mut self, data: &[u8]) {
        let mut crc = !self.crc;
        for &b in data {
            crc = self.table[((crc as u8) ^ b) as usize] ^ (crc >> 8);
        }
        self.crc = !crc;
    }

    pub fn reset(&mut self) {
        self.crc = 0;
    }

    pub fn value(&self) -> u64 {
        self.crc
    }
}

#[derive(Serialize)]
struct Line<'a> {
    #[serde(rename = "type")]
    kind: u8,
    #[serde(skip_serializing_if = "str::is_empty")]
    name: &'a str,
    #[serde(skip_serializing_if = "is_zero")]
    size: u64,
    payload: Option<String>,
    position: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// Collects tar-split lines while the writer lays out the tar stream.
pub(crate) struct TarSplit {
    lines: Vec<u8>,
    pending: Vec<u8>,
    crc: Crc64,
    position: u64,
}

impl TarSplit {
    pub fn new() -> Self {
        Self {
            lines: Vec::new(),
            pending: Vec::new(),
            crc: Crc64::new(),
            position: 0,
        }
    }

    fn push(&mut self, line: &Line<'_>) {
        // Serializing a struct of strings and integers into a Vec cannot fail.
        if serde_json::to_writer(&mut self.lines, line).is_ok() {
            self.lines.push(b'\n');
        }
        self.position += 1;
    }

    fn flush_segment(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let payload = base64::engine::general_purpose::STANDARD.encode(&self.pending);
        self.pending.clear();
        let line = Line {
            kind: 2,
            name: "",
            size: 0,
            payload: Some(payload),
            position: self.position,
        };
        self.push(&line);
    }

    /// The uncompressed JSON lines, with any trailing segment flushed.
    pub fn finish(mut self) -> Vec<u8> {
        self.flush_segment();
        self.lines
    }

    /// The lines, zstd-compressed at `level`, and their uncompressed length.
    pub fn finish_compressed(self, level: i32) -> std::io::Result<(Vec<u8>, u64)> {
        let lines = self.finish();
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), level)?;
        enc.write_all(&lines)?;
        Ok((enc.finish()?, lines.len() as u64))
    }
}

impl StreamObserver for TarSplit {
    fn segment(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    fn file_data(&mut self, bytes: &[u8]) {
        self.crc.update(bytes);
    }

    fn file_end(&mut self, raw_name: &str, size: u64) {
        self.flush_segment();
        let payload = (size > 0).then(|| {
            base64::engine::general_purpose::STANDARD.encode(self.crc.value().to_be_bytes())
        });
        self.crc.reset();
        let line = Line {
            kind: 1,
            name: raw_name,
            size,
            payload,
            position: self.position,
        };
        self.push(&line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc64_iso_check_value() {
        let mut c = Crc64::new();
        c.update(b"123456789");
        assert_eq!(c.value(), 0xb909_56c7_75a4_1001);
    }

    #[test]
    fn lines() {
        let mut t = TarSplit::new();
        t.segment(b"hdr");
        t.file_data(b"123456789");
        t.file_end("a", 9);
        t.segment(b"pad");
        t.file_end("empty", 0);
        t.segment(b"end");
        let text = String::from_utf8(t.finish()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                r#"{"type":2,"payload":"aGRy","position":0}"#,
                r#"{"type":1,"name":"a","size":9,"payload":"uQlWx3WkEAE=","position":1}"#,
                r#"{"type":2,"payload":"cGFk","position":2}"#,
                r#"{"type":1,"name":"empty","payload":null,"position":3}"#,
                r#"{"type":2,"payload":"ZW5k","position":4}"#,
            ]
        );
    }
}
