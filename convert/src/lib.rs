//! `veil convert`: one command from an OCI image to a lazily pullable (and, with
//! `--encrypt`, encrypted) image.
//!
//! For each layer of the source image (a registry reference or `oci:DIR[:TAG]`):
//!
//! 1. the blob is fetched (from a layout, read in place) and decompressed (tar, tar.gz,
//!    tar.zst) into a temporary tar, checked against the layer digest and the config's
//!    diff ID ([`layer`]);
//! 2. the tar is written as eStargz or zstd:chunked (`--chunk-size`, `--prefetch-list`
//!    paths first, ended by the landmark), with the TOC annotations the format defines;
//! 3. with `--encrypt` (for the layers `--layers` picks, default all), the blob is
//!    encrypted as it is written, exactly as ocicrypt does (AES-256-CTR, HMAC-SHA256,
//!    fresh key and nonce per layer), and the private options, which carry Veil's sealed
//!    TOC digest, are wrapped for the recipients: JWE (RSA, EC public keys) and/or
//!    coco_keyprovider's attestation-agent packet (`--kbs-kid` + `--kek-file`)
//!    ([`encrypt`]);
//! 4. the blob is pushed unless the destination already has it.
//!
//! Then the config (new `rootfs.diff_ids`) and, last, the OCI manifest are stored, so a
//! failed run never leaves the destination tag naming a half-written image
//! ([`store`], [`manifest`]). Layers are converted `jobs` at a time; progress is shown
//! per layer ([`progress`]).
//!
//! **Plaintext on disk.** The layer writers need to read the uncompressed tar twice, so
//! each layer's tar is written to a temporary file in a private (0700) directory under
//! `--tmp-dir` (default `$TMPDIR`), deleted as soon as the layer is written and the
//! directory removed at the end, also on failure. This is acceptable because
//! `veil convert` runs on the image owner's build machine, which holds the plaintext
//! image anyway; it is never run inside the confidential guest, whose rule is that no
//! plaintext touches the disk. The encrypted blob is encrypted while it is written.
//!
//! **Determinism.** The output depends only on the source and the options: the writers
//! copy tar headers (mtimes included) from the source and add no timestamps, gzip and
//! zstd output is deterministic, the config and manifest are serialized the same way.
//! Converting the same image twice without `--encrypt` gives the same layer digests (so
//! registries deduplicate). Encrypted layers differ on every run: each gets a fresh
//! random key and nonce, as it must.

pub mod encrypt;
pub mod error;
pub mod inspect;
pub mod layer;
pub mod manifest;
pub mod progress;
pub mod store;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;

use self::encrypt::Recipients;
use self::layer::{convert_layer, ConvertedLayer, LayerFormat, LayerSpec, SourceLayer, Stage};
use self::manifest::{build_manifest, diff_ids, rewrite_config, Descriptor, OCI_CONFIG};
use self::progress::{LayerProgress, Progress};
use self::store::{Destination, ImageLocation, Source};
use veil_blob::display::{human_bytes as human, short_digest as short};
use veil_registry::push::BlobBody;
use veil_registry::{BlobDescriptor, ClientOptions, Digest, RegistryClient};

pub use crate::error::ConvertError;
use crate::error::{bail, Context, Result};

/// What to convert, and how.
#[derive(Debug)]
pub struct ConvertOptions {
    /// The source image.
    pub source: ImageLocation,
    /// Where the converted image goes.
    pub destination: ImageLocation,
    /// Registry client settings (plain HTTP, credentials, platform).
    pub registry: ClientOptions,
    /// The layer format.
    pub format: LayerFormat,
    /// Largest payload chunk.
    pub chunk_size: u64,
    /// Paths to place first in their layers.
    pub prefetch: Vec<String>,
    /// Recipients to encrypt for; `None`: no encryption.
    pub recipients: Option<Arc<Recipients>>,
    /// Which layers to encrypt (indexes, negative from the end); `None`: all.
    pub layers: Option<Vec<i64>>,
    /// Layers converted at once.
    pub jobs: usize,
    /// Where the temporary directory is made; `None`: `$TMPDIR`.
    pub tmp_dir: Option<PathBuf>,
}

/// What happened to one layer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LayerReport {
    /// Position in the manifest, from 0.
    pub index: usize,
    /// The source blob's digest.
    pub source_digest: String,
    /// Its media type.
    pub source_media_type: String,
    /// Its size.
    pub source_size: u64,
    /// The size of its uncompressed tar.
    pub source_tar_size: u64,
    /// The new blob's digest.
    pub digest: String,
    /// Its media type.
    pub media_type: String,
    /// Its size.
    pub size: u64,
    /// Its uncompressed size (TOC and landmark included).
    pub uncompressed_size: u64,
    /// The new diff ID.
    pub diff_id: String,
    /// Whether it is encrypted.
    pub encrypted: bool,
    /// Whether it was stored (false: the destination already had it, or a layer listed
    /// twice was stored once).
    pub stored: bool,
    /// Prefetch-list paths placed first.
    pub prioritized: usize,
    /// Time spent converting it (fetch, decompress, write; not pushing).
    pub convert_seconds: f64,
}

/// What a conversion did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConvertReport {
    /// Where the image went.
    pub destination: String,
    /// The new manifest's digest.
    pub manifest_digest: String,
    /// The new config's digest.
    pub config_digest: String,
    /// Layer by layer.
    pub layers: Vec<LayerReport>,
    /// Wall time of the whole run.
    pub seconds: f64,
}

impl ConvertReport {
    /// Bytes of source layer blobs.
    pub fn source_bytes(&self) -> u64 {
        self.layers.iter().map(|l| l.source_size).sum()
    }

    /// Bytes of new layer blobs.
    pub fn output_bytes(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }

    /// Bytes of uncompressed layer data processed.
    pub fn tar_bytes(&self) -> u64 {
        self.layers.iter().map(|l| l.source_tar_size).sum()
    }

    /// A human summary: one line per layer, then totals and throughput.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for l in &self.layers {
            out.push_str(&format!(
                "layer {}: {} ({}, {}) -> {} ({}, {}, {:+.1}%){}{}\n",
                l.index + 1,
                short(&l.source_digest),
                l.source_media_type,
                human(l.source_size),
                short(&l.digest),
                l.media_type,
                human(l.size),
                percent(l.size, l.source_size),
                if l.stored { "" } else { ", already there" },
                if l.prioritized > 0 {
                    format!(", {} prioritized files", l.prioritized)
                } else {
                    String::new()
                },
            ));
        }
        let secs = self.seconds.max(1e-6);
        out.push_str(&format!(
            "{}: manifest {}, config {}\n",
            self.destination,
            self.manifest_digest,
            short(&self.config_digest)
        ));
        out.push_str(&format!(
            "{} layers, {} -> {} ({:+.1}%), {} uncompressed, in {:.2} s: {:.1} MB/s of layer \
             blobs, {:.1} MB/s uncompressed\n",
            self.layers.len(),
            human(self.source_bytes()),
            human(self.output_bytes()),
            percent(self.output_bytes(), self.source_bytes()),
            human(self.tar_bytes()),
            self.seconds,
            self.source_bytes() as f64 / secs / 1e6,
            self.tar_bytes() as f64 / secs / 1e6,
        ));
        out
    }
}

fn percent(new: u64, old: u64) -> f64 {
    if old == 0 {
        0.0
    } else {
        (new as f64 - old as f64) * 100.0 / old as f64
    }
}

/// Which of `count` layers `picks` selects (indexes, negative from the end).
pub fn select_layers(picks: Option<&[i64]>, count: usize) -> Result<Vec<bool>> {
    let Some(picks) = picks else {
        return Ok(vec![true; count]);
    };
    let mut selected = vec![false; count];
    for &p in picks {
        let i = if p < 0 { count as i64 + p } else { p };
        if i < 0 || i >= count as i64 {
            bail!("--layers {p}: the image has {count} layers (0..{count}, or -1 for the last)");
        }
        selected[i as usize] = true;
    }
    Ok(selected)
}

/// One distinct layer to convert.
struct Job {
    /// Indexes in the manifest this blob appears at.
    indexes: Vec<usize>,
    desc: BlobDescriptor,
    diff_id: String,
    encrypt: bool,
}

/// Converts the image as `opts` says, showing progress on `progress`.
pub async fn convert(opts: &ConvertOptions, progress: &dyn Progress) -> Result<ConvertReport> {
    let started = Instant::now();
    if opts.recipients.as_ref().is_some_and(|r| r.is_empty()) {
        bail!("encryption asked for, but no recipient given (--recipient jwe:KEY.pem, --kbs-kid)");
    }
    if opts.recipients.is_none() && opts.layers.is_some() {
        bail!("--layers chooses the layers to encrypt: give --encrypt and recipients too");
    }
    let client = RegistryClient::new(opts.registry.clone())?;
    let source = Source::open(&opts.source, &client)
        .await
        .with_context(|| format!("opening the source {}", opts.source))?;
    let destination = Destination::open(&opts.destination, &client)
        .with_context(|| format!("opening the destination {}", opts.destination))?;
    let manifest = source.manifest().clone();
    let config = source.config().await.context("reading the image config")?;
    let source_diff_ids = diff_ids(&config)?;
    if source_diff_ids.len() != manifest.layers.len() {
        bail!(
            "the image config lists {} diff_ids for the manifest's {} layers",
            source_diff_ids.len(),
            manifest.layers.len()
        );
    }
    let count = manifest.layers.len();
    let encrypt = match &opts.recipients {
        Some(_) => select_layers(opts.layers.as_deref(), count)?,
        None => vec![false; count],
    };
    progress.line(&format!(
        "converting {} ({count} layers, manifest {}) to {} as {}{}",
        opts.source,
        short(&manifest.digest.to_string()),
        opts.destination,
        opts.format,
        match encrypt.iter().filter(|e| **e).count() {
            0 => String::new(),
            n if n == count => ", encrypted".to_string(),
            n => format!(", {n} of them encrypted"),
        }
    ));

    // One job per distinct (blob, encrypted) pair.
    let mut jobs: Vec<Job> = Vec::new();
    for (i, desc) in manifest.layers.iter().enumerate() {
        match jobs
            .iter_mut()
            .find(|j| j.desc.digest == desc.digest && j.encrypt == encrypt[i])
        {
            Some(job) => job.indexes.push(i),
            None => jobs.push(Job {
                indexes: vec![i],
                desc: desc.clone(),
                diff_id: source_diff_ids[i].clone(),
                encrypt: encrypt[i],
            }),
        }
    }

    let mut tmp = tempfile::Builder::new();
    tmp.prefix("veil-convert-");
    let tmp = match &opts.tmp_dir {
        Some(dir) => tmp.tempdir_in(dir),
        None => tmp.tempdir(),
    }
    .context("creating the temporary directory")?;
    let work = tmp.path().to_path_buf();
    let spec = Arc::new(SpecOwned {
        format: opts.format,
        chunk_size: opts.chunk_size,
        prefetch: opts.prefetch.clone(),
        recipients: opts.recipients.clone(),
    });
    let results: Vec<(Job, JobResult)> = futures::stream::iter(jobs.into_iter().map(|job| {
        let (source, destination, work, spec) = (&source, &destination, &work, spec.clone());
        async move {
            let label = format!(
                "layer {}/{count} {}",
                job.indexes[0] + 1,
                short(&job.desc.digest.to_string())
            );
            let bar = progress.layer(label);
            let result = run_job(&job, source, destination, work, spec, bar.clone()).await;
            match &result {
                Ok((layer, stored, _)) => bar.finish(&format!(
                    "{} -> {} {} ({:+.1}%){}",
                    human(job.desc.size),
                    short(&layer.digest.to_string()),
                    human(layer.size),
                    percent(layer.size, job.desc.size),
                    if *stored { "" } else { ", already there" }
                )),
                Err(e) => bar.fail(&format!("{e:#}")),
            }
            (job, result)
        }
    }))
    .buffer_unordered(opts.jobs.max(1))
    .collect()
    .await;

    let mut by_index: BTreeMap<usize, LayerReport> = BTreeMap::new();
    let mut descriptors: BTreeMap<usize, Descriptor> = BTreeMap::new();
    let mut failures = Vec::new();
    for (job, result) in results {
        let (layer, stored, took) = match result {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("layer {}: {e:#}", job.indexes[0] + 1));
                continue;
            }
        };
        for (n, &i) in job.indexes.iter().enumerate() {
            descriptors.insert(
                i,
                Descriptor {
                    media_type: layer.media_type.clone(),
                    digest: layer.digest.clone(),
                    size: layer.size,
                    annotations: layer.annotations.clone(),
                },
            );
            by_index.insert(
                i,
                LayerReport {
                    index: i,
                    source_digest: job.desc.digest.to_string(),
                    source_media_type: job.desc.media_type.clone(),
                    source_size: job.desc.size,
                    source_tar_size: layer.source_tar_size,
                    digest: layer.digest.to_string(),
                    media_type: layer.media_type.clone(),
                    size: layer.size,
                    uncompressed_size: layer.uncompressed_size,
                    diff_id: layer.diff_id.clone(),
                    encrypted: layer.encrypted,
                    stored: stored && n == 0,
                    prioritized: layer.prioritized,
                    convert_seconds: took.as_secs_f64(),
                },
            );
        }
    }
    if !failures.is_empty() {
        bail!(
            "{} of the layers failed; the destination tag was not changed:\n  {}",
            failures.len(),
            failures.join("\n  ")
        );
    }
    drop(tmp);

    let new_diff_ids: Vec<String> = by_index.values().map(|l| l.diff_id.clone()).collect();
    let new_config = rewrite_config(&config, &new_diff_ids)?;
    let config_digest = Digest::sha256_of(&new_config);
    if !destination
        .has_blob(&config_digest, new_config.len() as u64)
        .await?
    {
        destination
            .put_blob(&config_digest, BlobBody::Bytes(&new_config), &|_| {})
            .await
            .context("storing the config")?;
    }
    let config_desc = Descriptor {
        media_type: OCI_CONFIG.to_string(),
        digest: config_digest.clone(),
        size: new_config.len() as u64,
        annotations: BTreeMap::new(),
    };
    let layers: Vec<Descriptor> = descriptors.into_values().collect();
    let manifest_bytes = build_manifest(&config_desc, &layers, &manifest.annotations);
    let manifest_digest = destination
        .put_manifest(veil_registry::manifest::OCI_MANIFEST, &manifest_bytes)
        .await
        .context("storing the manifest")?;
    Ok(ConvertReport {
        destination: opts.destination.to_string(),
        manifest_digest: manifest_digest.to_string(),
        config_digest: config_digest.to_string(),
        layers: by_index.into_values().collect(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The layer options, owned (for the blocking conversion thread).
struct SpecOwned {
    format: LayerFormat,
    chunk_size: u64,
    prefetch: Vec<String>,
    recipients: Option<Arc<Recipients>>,
}

/// A converted layer, whether it was stored, and how long converting it took.
type JobResult = Result<(ConvertedLayer, bool, Duration)>;

/// Fetches, converts and stores one layer. Returns the layer, whether it was stored
/// (false: the destination had it) and the conversion time.
async fn run_job(
    job: &Job,
    source: &Source,
    destination: &Destination,
    work: &std::path::Path,
    spec: Arc<SpecOwned>,
    bar: Arc<dyn LayerProgress>,
) -> JobResult {
    let started = Instant::now();
    let name = format!("layer-{}-{}", job.indexes[0], u8::from(job.encrypt));
    let remote = matches!(source, Source::Registry { .. });
    if remote {
        bar.stage("fetch", job.desc.size);
    }
    let download = work.join(format!("{name}.source"));
    let (path, downloaded) = source
        .layer_file(&job.desc, &download, &|n| bar.set(n))
        .await
        .with_context(|| format!("fetching {}", job.desc.digest))?;
    if remote {
        bar.end_stage("");
    }

    let (desc, diff_id, encrypt) = (job.desc.clone(), job.diff_id.clone(), job.encrypt);
    let (work_owned, bar_owned, path_owned) = (work.to_path_buf(), bar.clone(), path.clone());
    let converted = tokio::task::spawn_blocking(move || {
        let current: Mutex<Option<Stage>> = Mutex::new(None);
        let write_name = match spec.format {
            LayerFormat::Estargz => "estargz",
            LayerFormat::ZstdChunked => "zstd",
        };
        let on_progress = |stage: Stage, pos: u64, total: u64| {
            let mut cur = current.lock().unwrap_or_else(|p| p.into_inner());
            if *cur != Some(stage) {
                if cur.is_some() {
                    bar_owned.end_stage("");
                }
                *cur = Some(stage);
                bar_owned.stage(
                    match stage {
                        Stage::Decompress => "unpack",
                        Stage::Write if encrypt => "encrypt",
                        Stage::Write => write_name,
                    },
                    total,
                );
            }
            bar_owned.set(pos);
        };
        let layer_spec = LayerSpec {
            format: spec.format,
            chunk_size: spec.chunk_size,
            prefetch: &spec.prefetch,
            encrypt: if encrypt {
                spec.recipients.as_deref()
            } else {
                None
            },
        };
        let result = convert_layer(
            SourceLayer {
                desc: &desc,
                path: &path_owned,
                expected_diff_id: Some(&diff_id),
            },
            &layer_spec,
            &work_owned,
            &name,
            &on_progress,
        );
        if current.lock().map(|c| c.is_some()).unwrap_or(false) {
            bar_owned.end_stage("");
        }
        result
    })
    .await
    .map_err(|e| ConvertError::Invalid(format!("the conversion thread failed: {e}")))?
    .map_err(ConvertError::Invalid);
    if downloaded {
        let _ = std::fs::remove_file(&path);
    }
    let layer = converted?;
    let took = started.elapsed();

    let stored = if destination.has_blob(&layer.digest, layer.size).await? {
        false
    } else {
        bar.stage(
            match destination {
                Destination::Registry { .. } => "push",
                Destination::Layout { .. } => "store",
            },
            layer.size,
        );
        destination
            .put_blob(
                &layer.digest,
                BlobBody::File {
                    path: &layer.blob,
                    size: layer.size,
                },
                &|n| bar.set(n),
            )
            .await
            .with_context(|| format!("storing {}", layer.digest))?;
        bar.end_stage("");
        true
    };
    let _ = std::fs::remove_file(&layer.blob);
    Ok((layer, stored, took))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_selection() {
        assert_eq!(select_layers(None, 2).unwrap(), [true, true]);
        assert_eq!(select_layers(Some(&[0]), 3).unwrap(), [true, false, false]);
        assert_eq!(select_layers(Some(&[-1]), 3).unwrap(), [false, false, true]);
        assert!(select_layers(Some(&[3]), 3).is_err());
        assert!(select_layers(Some(&[-4]), 3).is_err());
    }
}
