//! The modes of `veil bench`: the layer formats, every way of starting the container
//! it measures (status quo, encrypted status quo, the peer, Veil's variants), their names,
//! labels and image tags, and `--modes`' kinds.

use serde::Serialize;

/// The layer format of Veil's images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Format {
    #[serde(rename = "estargz")]
    Estargz,
    #[serde(rename = "zstd-chunked")]
    ZstdChunked,
}

impl Format {
    pub fn flag(self) -> &'static str {
        match self {
            Format::Estargz => "estargz",
            Format::ZstdChunked => "zstd-chunked",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Format::Estargz => "eStargz",
            Format::ZstdChunked => "zstd:chunked",
        }
    }
}

/// One way of starting the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// containerd's own pull (download + unpack into overlayfs), then `ctr run`.
    StatusQuo,
    /// The encrypted status quo: Veil's encrypted image of `format` (the same image as
    /// the `-enc` mode) copied whole and decrypted by skopeo (`--decryption-key`) into an
    /// OCI archive, imported and unpacked by containerd into overlayfs, then `ctr run`.
    EncStatusQuo { format: Format },
    /// The peer: `ctr-remote images rpull` + `ctr run --snapshotter stargz` on the
    /// unencrypted eStargz image.
    Stargz,
    /// `veil pull` + `ctr run --snapshotter veil`.
    Veil {
        format: Format,
        encrypted: bool,
        prefetch: bool,
        /// Fetching as before issue 13, for side-by-side runs: no neighbourhood windows,
        /// the prefetch waits for all prioritized files (same image).
        baseline: bool,
    },
    /// The same, on the encrypted image `veil optimize` made: the files the workload
    /// read in a recording run first, then the landmark.
    Optimized { format: Format },
}

impl Mode {
    /// The mode's name in the table, the JSON and `--modes`.
    pub fn name(self) -> String {
        match self {
            Mode::StatusQuo => "status-quo".into(),
            Mode::EncStatusQuo { format } => format!("status-quo-enc-{}", format.flag()),
            Mode::Stargz => "stargz-snapshotter".into(),
            Mode::Veil {
                format,
                encrypted,
                prefetch,
                baseline,
            } => {
                let parts = [
                    (encrypted, "-enc"),
                    (prefetch, "-prefetch"),
                    (baseline, "-baseline"),
                ];
                with_parts(format!("veil-{}", format.flag()), parts)
            }
            Mode::Optimized { format } => format!("veil-{}-enc-optimized", format.flag()),
        }
    }

    /// A short label for the plot.
    pub fn short(self) -> String {
        match self {
            Mode::StatusQuo => "status quo".into(),
            Mode::EncStatusQuo { format } => format!("status quo enc ({})", format.label()),
            Mode::Stargz => "stargz-snapshotter".into(),
            Mode::Veil {
                format,
                encrypted,
                prefetch,
                baseline,
            } => {
                let parts = [
                    (encrypted, "+enc"),
                    (prefetch, "+pf"),
                    (baseline, " (before)"),
                ];
                with_parts(format.label().to_string(), parts)
            }
            Mode::Optimized { format } => format!("{}+enc+optimize", format.label()),
        }
    }

    /// What it does, in words.
    pub fn describe(self) -> String {
        match self {
            Mode::StatusQuo => {
                "ctr images pull (download + unpack, overlayfs) + ctr run; plain tar.gz, unencrypted"
                    .into()
            }
            Mode::EncStatusQuo { format } => format!(
                "skopeo copy --decryption-key (whole image, decrypted) to an OCI archive + ctr \
                 images import (unpack, overlayfs) + ctr run; {}, encrypted (JWE), the -enc \
                 mode's image",
                format.label()
            ),
            Mode::Stargz => "ctr-remote images rpull + ctr run --snapshotter stargz \
                 (stargz-snapshotter from Debian's sources); eStargz, unencrypted"
                .into(),
            Mode::Veil {
                format,
                encrypted,
                prefetch,
                baseline,
            } => format!(
                "veil pull + ctr run --snapshotter veil; {}{}{}{}",
                format.label(),
                if encrypted { ", encrypted (JWE)" } else { "" },
                if prefetch {
                    ", prefetch landmark (the workload's files)"
                } else {
                    ""
                },
                if baseline {
                    "; fetching as before: no windows, prefetch waits for all"
                } else {
                    ""
                }
            ),
            Mode::Optimized { format } => format!(
                "veil pull + ctr run --snapshotter veil; {}, encrypted (JWE), made by veil \
                 optimize (the files a recording run of the workload read, then the landmark)",
                format.label()
            ),
        }
    }

    /// Whether it pulls the whole image and unpacks it before the container starts
    /// (the status quo, encrypted or not): its `run` part is the workload on a local
    /// snapshot.
    pub fn is_status_quo(self) -> bool {
        matches!(self, Mode::StatusQuo | Mode::EncStatusQuo { .. })
    }

    /// The Veil image it runs on (`veil convert`'s output), if any: a baseline mode
    /// runs on its mode's image, the encrypted status quo on the `-enc` mode's.
    pub fn veil_image(self) -> Option<Mode> {
        match self {
            Mode::StatusQuo | Mode::Stargz => None,
            Mode::EncStatusQuo { format } => Some(Mode::Veil {
                format,
                encrypted: true,
                prefetch: false,
                baseline: false,
            }),
            Mode::Veil {
                format,
                encrypted,
                prefetch,
                ..
            } => Some(Mode::Veil {
                format,
                encrypted,
                prefetch,
                baseline: false,
            }),
            m @ Mode::Optimized { .. } => Some(m),
        }
    }

    /// The image tag it pulls.
    pub fn tag(self) -> String {
        match self {
            Mode::StatusQuo => "plain".into(),
            Mode::Stargz => "estargz".into(),
            Mode::EncStatusQuo { format } => format!("{}-enc", format.flag()),
            m => m
                .name()
                .trim_start_matches("veil-")
                .trim_end_matches("-baseline")
                .to_string(),
        }
    }
}

/// The modes for `formats`, with `kinds` picked from [`ModeKind`]'s (the encrypted status
/// quo and Veil's modes once per format).
pub fn modes(formats: &[Format], kinds: &[ModeKind]) -> Vec<Mode> {
    let mut out = Vec::new();
    if kinds.contains(&ModeKind::StatusQuo) {
        out.push(Mode::StatusQuo);
    }
    if kinds.contains(&ModeKind::Stargz) {
        out.push(Mode::Stargz);
    }
    for &format in formats {
        if kinds.contains(&ModeKind::EncStatusQuo) {
            out.push(Mode::EncStatusQuo { format });
        }
        for (kind, encrypted, prefetch, baseline) in [
            (ModeKind::Lazy, false, false, false),
            (ModeKind::LazyBaseline, false, false, true),
            (ModeKind::Enc, true, false, false),
            (ModeKind::EncBaseline, true, false, true),
            (ModeKind::EncPrefetch, true, true, false),
            (ModeKind::EncPrefetchBaseline, true, true, true),
        ] {
            if kinds.contains(&kind) {
                out.push(Mode::Veil {
                    format,
                    encrypted,
                    prefetch,
                    baseline,
                });
            }
        }
        if kinds.contains(&ModeKind::EncOptimized) {
            out.push(Mode::Optimized { format });
        }
    }
    out
}

/// The kinds of mode `--modes` picks from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeKind {
    /// containerd's pull + unpack into overlayfs, then ctr run.
    StatusQuo,
    /// The encrypted status quo: skopeo copy --decryption-key of the `enc` image, ctr
    /// images import (unpack into overlayfs), ctr run.
    EncStatusQuo,
    /// stargz-snapshotter (built from Debian's Go sources), eStargz, unencrypted.
    Stargz,
    /// Veil, lazy, unencrypted.
    Lazy,
    /// Veil, lazy, encrypted (JWE recipient).
    Enc,
    /// Veil, lazy, encrypted, the workload's files prefetched (landmark).
    EncPrefetch,
    /// Veil, lazy, encrypted, the image made by `veil optimize` (a recorded list).
    EncOptimized,
    /// `lazy` fetching as before issue 13 (no windows), for side-by-side runs.
    LazyBaseline,
    /// `enc` fetching as before issue 13 (no windows).
    EncBaseline,
    /// `enc-prefetch` fetching as before issue 13 (no windows, the prefetch waits).
    EncPrefetchBaseline,
}

/// `base` followed by each part whose flag is set, in order.
fn with_parts(mut base: String, parts: [(bool, &str); 3]) -> String {
    for (set, part) in parts {
        if set {
            base.push_str(part);
        }
    }
    base
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_names_and_tags() {
        let all = [
            ModeKind::StatusQuo,
            ModeKind::Stargz,
            ModeKind::Lazy,
            ModeKind::Enc,
            ModeKind::EncPrefetch,
        ];
        let names: Vec<String> = modes(&[Format::Estargz, Format::ZstdChunked], &all)
            .iter()
            .map(|m| m.name())
            .collect();
        assert_eq!(
            names,
            [
                "status-quo",
                "stargz-snapshotter",
                "veil-estargz",
                "veil-estargz-enc",
                "veil-estargz-enc-prefetch",
                "veil-zstd-chunked",
                "veil-zstd-chunked-enc",
                "veil-zstd-chunked-enc-prefetch"
            ]
        );
        assert_eq!(Mode::StatusQuo.tag(), "plain");
        assert_eq!(Mode::Stargz.tag(), "estargz");
        assert_eq!(
            modes(&[Format::Estargz], &all)[4].tag(),
            "estargz-enc-prefetch"
        );
        // A baseline mode runs the same image as its mode, fetching as before.
        let baseline = modes(&[Format::Estargz], &[ModeKind::EncBaseline])[0];
        assert_eq!(baseline.name(), "veil-estargz-enc-baseline");
        assert_eq!(baseline.tag(), "estargz-enc");
        // The encrypted status quo pulls the -enc mode's image, whole, per format.
        let esq = modes(
            &[Format::Estargz, Format::ZstdChunked],
            &[ModeKind::EncStatusQuo, ModeKind::Enc],
        );
        let names: Vec<String> = esq.iter().map(|m| m.name()).collect();
        assert_eq!(
            names,
            [
                "status-quo-enc-estargz",
                "veil-estargz-enc",
                "status-quo-enc-zstd-chunked",
                "veil-zstd-chunked-enc"
            ]
        );
        assert_eq!(esq[0].tag(), esq[1].tag());
        assert_eq!(esq[0].veil_image(), Some(esq[1]));
        assert_eq!(baseline.veil_image(), esq[1].veil_image());
        assert!(esq[0].is_status_quo() && Mode::StatusQuo.is_status_quo());
        assert!(!esq[1].is_status_quo() && Mode::StatusQuo.veil_image().is_none());
    }
}
