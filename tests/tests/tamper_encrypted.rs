//! Tampered encrypted layers are never served (DESIGN.md, "Trust rules"; issue 4's tamper
//! test): bytes of an ocicrypt-encrypted eStargz layer are flipped where the registry
//! stores them — in file chunks, in the TOC, in the footer — and the image is mounted
//! with `veil mount` (fresh caches each time) and every file read.
//!
//! AES-CTR is malleable: a flipped ciphertext bit is the same bit flipped in the plaintext,
//! so nothing but Veil's checks (chunk digests from the TOC, the TOC digest sealed in the
//! wrapped key, the whole-blob HMAC) stands between a flip and a wrong byte. The rule
//! checked for every flip: each read returns exactly the right bytes or fails with EIO;
//! a flip in a chunk of a file always fails that file's read; a mount that fails says
//! why. The flips are at positions drawn from a fixed seed, so a failure repeats.
//!
//! Needs root, docker-registry, busybox-static, openssl, FUSE.
//! Run with `cargo test -p veil-tests --test tamper_encrypted -- --nocapture`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{anyhow, bail, Context};
use veil_blob::MemoryBlob;
use veil_formats::estargz::{self, FOOTER_SIZE, TOC_DIGEST_ANNOTATION};
use veil_keyprovider::keys::PublicKey;
use veil_tests::encrypted_support::{ocicrypt_encrypt, stored_blob_path, Keys};
use veil_tests::lazy_image::{
    base_entries, pack, random_bytes, tar_of, top_entries, Entry, Layer, LayerFormat, BIG_PATH,
};
use veil_tests::lazy_stack::{text, with_stack, LazyStack};
use veil_tests::mount_cli::{read_until_error, VeilMount, READ_TIMEOUT};

/// The large file: three chunks of 4 MiB (the writer's default) or less.
const BIG_SIZE: usize = 9 << 20;

/// Where in the encrypted layer a flip lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Region {
    /// Inside the compressed bytes of a chunk of [`BIG_PATH`].
    Chunk,
    /// Inside the TOC's gzip member.
    Toc,
    /// Inside the footer.
    Footer,
}

/// A small deterministic generator (xorshift), so the flipped positions repeat.
struct Positions(u64);

impl Positions {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn within(&mut self, range: &std::ops::Range<u64>) -> u64 {
        range.start + self.next() % (range.end - range.start)
    }
}

/// The files of the merged image (absolute path → contents).
fn expected_files(layers: &[Vec<Entry>]) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for entries in layers {
        for e in entries {
            if let Entry::File(path, body, _) = e {
                files.insert(format!("/{path}"), body.clone());
            }
        }
    }
    files
}

/// Reads every file below `root`: each must be exact or fail with EIO. Returns the paths
/// whose read failed.
fn read_all(root: &Path, files: &BTreeMap<String, Vec<u8>>) -> anyhow::Result<Vec<String>> {
    let mut failed = Vec::new();
    for (path, want) in files {
        let (got, err) = read_until_error(&root.join(path.trim_start_matches('/')), READ_TIMEOUT)?;
        if got.len() > want.len() || got[..] != want[..got.len()] {
            bail!(
                "{path}: WRONG BYTES served ({} bytes read, first difference at {:?})",
                got.len(),
                got.iter().zip(want).position(|(a, b)| a != b)
            );
        }
        match err {
            None if got.len() == want.len() => {}
            None => bail!(
                "{path}: {} of {} bytes, then end of file",
                got.len(),
                want.len()
            ),
            Some(e) if e.raw_os_error() == Some(libc::EIO) => failed.push(path.clone()),
            Some(e) => bail!("{path}: failed with {e}, expected exact bytes or EIO"),
        }
    }
    Ok(failed)
}

/// Flips the byte at `at` of the file `path` with `mask`.
fn flip(path: &Path, at: u64, mask: u8) -> anyhow::Result<()> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, at)?;
    byte[0] ^= mask;
    file.write_all_at(&byte, at)?;
    Ok(())
}

/// The chunk, TOC and footer ranges of the (plaintext) eStargz `layer`; encrypted with
/// CTR, the ciphertext has the same layout.
fn regions(
    stack: &LazyStack,
    layer: &Layer,
) -> anyhow::Result<Vec<(Region, std::ops::Range<u64>)>> {
    let len = layer.blob.len() as u64;
    let (toc_offset, _) = estargz::parse_footer(&layer.blob[(len - FOOTER_SIZE) as usize..])?;
    let digest = layer
        .annotations
        .get(TOC_DIGEST_ANNOTATION)
        .context("no TOC digest annotation")?;
    let toc = stack.runtime.block_on(estargz::read_toc(
        &MemoryBlob(layer.blob.clone()),
        Some(digest),
    ))?;
    let big = toc
        .entries
        .iter()
        .find(|e| e.name == BIG_PATH.trim_start_matches('/'))
        .context("the big file is not in the TOC")?;
    // Chunks after the first: a gzip member of the file's bytes alone (the first also holds
    // the tar header, which no chunk digest covers). The member's header and trailer are
    // left out: a flipped mtime byte changes nothing served.
    let mut out: Vec<(Region, std::ops::Range<u64>)> = big
        .chunks
        .iter()
        .skip(1)
        .filter(|c| c.inner_offset == 0)
        .map(|c| (Region::Chunk, c.blob_offset + 32..c.blob_end - 8))
        .collect();
    if out.is_empty() {
        bail!("the big file has no chunk of its own bytes alone");
    }
    out.push((Region::Toc, toc_offset..len - FOOTER_SIZE));
    out.push((Region::Footer, len - FOOTER_SIZE..len));
    Ok(out)
}

#[test]
fn random_flips_in_an_encrypted_layer_never_serve_wrong_bytes() {
    let name = "tamper-encrypted";
    with_stack(name, |stack| {
        let keys = Keys::make(&stack.dir)?;
        let public = PublicKey::from_file(&keys.public).map_err(|e| anyhow!("{e}"))?;
        let (base_e, top_e) = (base_entries()?, top_entries(random_bytes(BIG_SIZE, 0xf11b)));
        let files = expected_files(&[base_e.clone(), top_e.clone()]);
        let base = pack(tar_of(&base_e)?, LayerFormat::Estargz)?;
        let top = pack(tar_of(&top_e)?, LayerFormat::Estargz)?;
        let toc = |l: &Layer| l.annotations.get(TOC_DIGEST_ANNOTATION).cloned();
        // As skopeo leaves it (annotation kept) and with Veil's sealed digest.
        let enc_base =
            ocicrypt_encrypt(&base, toc(&base).as_deref(), toc(&base).as_deref(), &public)?;
        let enc_top = ocicrypt_encrypt(&top, toc(&top).as_deref(), toc(&top).as_deref(), &public)?;
        stack.push("enc", "1", &[enc_base, enc_top.clone()])?;
        let reference = stack.image_ref("enc", "1");
        let stored = stored_blob_path(stack, &enc_top.digest)?;
        let keys_dir = keys.keys_dir.as_os_str().to_owned();

        let mut cases = Vec::new();
        let mut rng = Positions(0x5eed_f11b);
        let all = regions(stack, &top)?;
        for (region, count) in [(Region::Chunk, 6), (Region::Toc, 4), (Region::Footer, 3)] {
            let ranges: Vec<_> = all.iter().filter(|(r, _)| *r == region).collect();
            for i in 0..count {
                let range = &ranges[i % ranges.len()].1;
                let mask = (rng.next() % 255 + 1) as u8;
                cases.push((region, rng.within(range), mask));
            }
        }

        // An untampered mount first: every file exact (so the checks below can fail).
        let mut outcome: Vec<String> = Vec::new();
        for (i, (region, at, mask)) in std::iter::once((Region::Chunk, 0, 0))
            .chain(cases.iter().copied())
            .enumerate()
        {
            let t = Instant::now();
            if mask != 0 {
                flip(&stored, at, mask)?;
            }
            let case = stack.dir.join(format!("case{i}"));
            let mut m = VeilMount::new(&case.join("mnt"), &case.join("state"), &case.join("cli"))?;
            let out = m.mount_with(&reference, &["--keys-dir".as_ref(), keys_dir.as_os_str()])?;
            let result = if out.status.success() {
                read_all(&case.join("mnt"), &files).map(Some)
            } else {
                Ok(None)
            };
            if m.is_mounted() {
                let _ = m.umount();
                m.wait_serving_exit(std::time::Duration::from_secs(10));
            }
            let left = m.cleanup();
            if mask != 0 {
                flip(&stored, at, mask)?; // restored
            }
            let failed = result?;
            let seen = match &failed {
                None => format!(
                    "mount refused: {}",
                    text(&out.stderr).lines().last().unwrap_or_default()
                ),
                Some(f) if f.is_empty() => "all files exact".to_string(),
                Some(f) => format!("EIO on {}", f.join(", ")),
            };
            outcome.push(format!(
                "{region:?} byte {at} ^ {mask:#04x}: {seen} ({:.1?})",
                t.elapsed()
            ));
            if !left.is_empty() {
                bail!("case {i}: left behind after umount: {left:?}");
            }
            match (mask, region, &failed) {
                (0, _, Some(f)) if f.is_empty() => {}
                (0, _, _) => bail!("the untampered image did not read exactly: {seen}"),
                (_, Region::Chunk, Some(f)) if !f.iter().any(|p| p == BIG_PATH) => {
                    bail!("a flip in a chunk of {BIG_PATH} at {at} was not noticed: {seen}")
                }
                (_, _, None) if text(&out.stderr).trim().is_empty() => {
                    bail!("case {i}: veil mount failed without saying why")
                }
                _ => {}
            }
        }
        eprintln!(
            "[{name}] {} flips:\n  {}",
            cases.len(),
            outcome.join("\n  ")
        );
        let refused = outcome
            .iter()
            .filter(|o| o.starts_with("Toc") && o.contains("refused"))
            .count();
        if refused == 0 {
            bail!(
                "no flip in the TOC made Veil refuse the layer:\n{}",
                outcome.join("\n")
            );
        }
        Ok(())
    });
}
