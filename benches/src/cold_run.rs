//! One cold start of one mode: a fresh containerd and veil-snapshotter, the page cache
//! dropped, then the measured part (pull, then the workload's container) timed and its
//! bytes counted at the shaping proxy; everything it started is stopped and unmounted
//! after it, whatever happened.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use veil_tests::containerd::{shim_pids_for, Containerd};
use veil_tests::process::ChildGuard;
use veil_tests::scenario::VeilSnapshotter;

use crate::mode::Mode;
use crate::proxy::ShapingProxy;
use crate::run::{
    drop_caches, say, veil_config_lazy, veil_pull, Plan, RunResult, Started, NAMESPACE,
    PULL_TIMEOUT, REPO,
};

/// One cold start of `mode`; a failure of the run itself is recorded, not returned
/// (errors setting it up are returned). With `access`: the daemon's access orders after
/// the workload (JSON, `veil status --access-order all`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn one_run_recording(
    plan: &Plan,
    mode: Mode,
    proxy: &ShapingProxy,
    name: &str,
    workload: &str,
    expect: &str,
    started: &mut Vec<Started>,
    mut access: Option<&mut Option<anyhow::Result<serde_json::Value>>>,
) -> anyhow::Result<RunResult> {
    let dir = plan.dir.join("runs").join(name);
    std::fs::create_dir_all(&dir)?;
    let dir = dir.canonicalize()?;
    let config = dir.join("veil-config.toml");
    std::fs::write(
        &config,
        veil_config_lazy(
            &proxy.host(),
            plan.background_fetch,
            &plan
                .lazy
                .lines(matches!(mode, Mode::Veil { baseline: true, .. })),
            &plan.dir.join("keys"),
        ),
    )?;
    let mut veil = VeilSnapshotter::new(
        plan.bins.snapshotter.clone(),
        dir.join("veil"),
        dir.join("veil.sock"),
        dir.clone(),
    )
    .with_config(config);
    let result = (|| -> anyhow::Result<RunResult> {
        if plan.drop_caches {
            drop_caches()?;
        }
        let pid = veil.start().context("starting veil-snapshotter")?;
        started.push(Started {
            what: format!("veil-snapshotter ({} {name})", mode.name()),
            pid,
        });
        let mut stargz = None;
        let stargz_socket = dir.join("stargz.sock");
        if mode == Mode::Stargz {
            let tools = plan
                .stargz
                .as_ref()
                .context("stargz-snapshotter was not built")?;
            let mut cmd = Command::new(&tools.snapshotter);
            cmd.arg("-root")
                .arg(dir.join("stargz"))
                .arg("-address")
                .arg(&stargz_socket);
            if !plan.background_fetch {
                cmd.arg("-no-background-fetch");
            }
            let mut guard = ChildGuard::spawn("stargz-grpc", cmd, &dir.join("stargz.log"))?;
            started.push(Started {
                what: format!("stargz-grpc ({} {name})", mode.name()),
                pid: guard.pid(),
            });
            guard.wait_for_path(&stargz_socket, Duration::from_secs(60))?;
            stargz = Some(guard);
        }
        let more: Vec<(&str, &Path)> = if stargz.is_some() {
            vec![("stargz", stargz_socket.as_path())]
        } else {
            Vec::new()
        };
        let mut cd = Containerd::start_with(&dir.join("containerd"), veil.socket(), &more)
            .context("starting containerd")?;
        started.push(Started {
            what: format!("containerd ({} {name})", mode.name()),
            pid: cd.pid(),
        });
        let r = measured(plan, mode, proxy, &cd, &dir, workload, expect);
        if let Some(slot) = access.as_deref_mut() {
            *slot = Some(crate::read_set::access_orders(
                &plan.bins.veil,
                &veil.socket().with_file_name("status.sock"),
                &dir.join("veil-status"),
            ));
        }
        for pid in shim_pids_for(cd.address()) {
            started.push(Started {
                what: format!("containerd-shim ({} {name})", mode.name()),
                pid,
            });
        }
        let shutdown = cd.shutdown();
        if !shutdown.shims_left.is_empty() {
            say(&format!(
                "{name}: shims outlived containerd and were killed: {:?}",
                shutdown.shims_left
            ));
        }
        if let Some(mut g) = stargz.take() {
            g.stop();
        }
        Ok(r)
    })();
    veil.stop();
    veil_tests::unmount_below(&dir);
    let r = result?;
    if r.error.is_some() || plan.keep {
        // Logs stay for a look; the status quo's blobs and snapshots do not.
        let cd_root = dir.join("containerd").join("root");
        let _ = std::fs::remove_dir_all(cd_root);
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(r)
}

/// The measured part: pull, then run the workload.
fn measured(
    plan: &Plan,
    mode: Mode,
    proxy: &ShapingProxy,
    cd: &Containerd,
    dir: &Path,
    workload: &str,
    expect: &str,
) -> RunResult {
    let reference = format!("{}/{REPO}:{}", proxy.host(), mode.tag());
    let down = proxy.bytes_down();
    let conns = proxy.connections();
    let requests = proxy.requests();
    let t = Instant::now();
    let pulled: anyhow::Result<()> = match mode {
        Mode::StatusQuo => cd
            .ctr_like(
                Path::new("ctr"),
                NAMESPACE,
                &["images", "pull", "--plain-http", &reference],
                PULL_TIMEOUT,
            )
            .map(|_| ()),
        Mode::EncStatusQuo { .. } => crate::enc_status_quo::pull(
            cd,
            &proxy.host(),
            &mode.tag(),
            &plan.dir.join("keys").join(crate::convert::PRIVATE_KEY_FILE),
            dir,
            PULL_TIMEOUT,
        ),
        Mode::Stargz => match plan.stargz.as_ref() {
            Some(tools) => cd
                .ctr_like(
                    &tools.ctr_remote,
                    NAMESPACE,
                    &["images", "rpull", "--plain-http", &reference],
                    PULL_TIMEOUT,
                )
                .map(|_| ()),
            None => Err(anyhow::anyhow!("ctr-remote was not built")),
        },
        Mode::Veil { .. } | Mode::Optimized { .. } => {
            veil_pull(&plan.bins.veil, cd.address(), &reference, dir)
        }
    };
    let pull_s = t.elapsed().as_secs_f64();
    let ran = pulled.and_then(|()| {
        let snapshotter = match mode {
            Mode::StatusQuo => "overlayfs",
            Mode::EncStatusQuo { .. } => crate::enc_status_quo::SNAPSHOTTER,
            Mode::Stargz => "stargz",
            Mode::Veil { .. } | Mode::Optimized { .. } => veil_tests::containerd::SNAPSHOTTER,
        };
        cd.run_container_in(
            NAMESPACE,
            snapshotter,
            &reference,
            "veil-bench-workload",
            &["/bin/sh", "-c", workload],
        )
    });
    let total_s = t.elapsed().as_secs_f64();
    let fetched_bytes = proxy.bytes_down() - down;
    let connections = proxy.connections() - conns;
    let requests = proxy.requests() - requests;
    let (output, error) = match ran {
        Ok(out) => (out, None),
        Err(e) => (String::new(), Some(format!("{e:#}"))),
    };
    RunResult {
        round: 0,
        total_s,
        pull_s,
        run_s: total_s - pull_s,
        fetched_bytes,
        connections,
        requests,
        output_ok: error.is_none() && output.contains(expect),
        output: output.trim_end().to_string(),
        error,
    }
}
