//! The bundle's `config.json`: an OCI runtime spec made from the image config, as CDH's
//! own puller (image-rs `bundle.rs`) writes it, so kata-agent finds what it expects.
//!
//! Like image-rs: the runtime spec's defaults (oci-spec's, those of `runc spec`),
//! hostname `image-rs`, `process.args` = Entrypoint + Cmd, `process.env` = Env,
//! `process.cwd` = WorkingDir, the image's labels and platform as annotations, root path
//! `rootfs`. Unlike image-rs, the root is writable (it is an overlay with its own upper
//! layer) and `User` is honoured: `uid[:gid]`, or names looked up in the image's own
//! `/etc/passwd` and `/etc/group` (read without following symbolic links, which would
//! point into the guest). A name that is not there fails the pull rather than running
//! the container as root. kata-agent later replaces the file with the host's spec.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use oci_spec::image::ImageConfiguration;
use oci_spec::runtime::{Process, Root, Spec, User};

/// The file name of the spec in the bundle.
pub const BUNDLE_CONFIG: &str = "config.json";
/// The root filesystem's directory in the bundle.
pub const BUNDLE_ROOTFS: &str = "rootfs";
/// The hostname image-rs writes.
pub const BUNDLE_HOSTNAME: &str = "image-rs";

/// The runtime spec for an image with config `image`, whose root filesystem is mounted
/// at `rootfs` (for user names).
pub fn runtime_spec(image: &ImageConfiguration, rootfs: &Path) -> Result<Spec, String> {
    let mut spec = Spec::default();
    spec.set_hostname(Some(BUNDLE_HOSTNAME.to_string()));
    let mut root = Root::default();
    root.set_path(PathBuf::from(BUNDLE_ROOTFS));
    root.set_readonly(Some(false));
    spec.set_root(Some(root));
    let mut annotations: HashMap<String, String> = HashMap::new();
    annotations.insert("org.opencontainers.image.os".into(), image.os().to_string());
    annotations.insert(
        "org.opencontainers.image.architecture".into(),
        image.architecture().to_string(),
    );
    if let Some(created) = image.created() {
        annotations.insert("org.opencontainers.image.created".into(), created.clone());
    }
    if let Some(config) = image.config() {
        let mut process = Process::default();
        if let Some(cwd) = config.working_dir().as_ref().filter(|d| !d.is_empty()) {
            process.set_cwd(PathBuf::from(cwd));
        }
        if let Some(env) = config.env() {
            process.set_env(Some(env.clone()));
        }
        let mut args = config.entrypoint().clone().unwrap_or_default();
        args.extend(config.cmd().clone().unwrap_or_default());
        if !args.is_empty() {
            process.set_args(Some(args));
        }
        if let Some(user) = config.user().as_deref().filter(|u| !u.is_empty()) {
            process.set_user(resolve_user(user, rootfs)?);
        }
        spec.set_process(Some(process));
        if let Some(stop) = config.stop_signal() {
            annotations.insert("org.opencontainers.image.stopSignal".into(), stop.clone());
        }
        if let Some(labels) = config.labels() {
            annotations.extend(labels.clone());
        }
    }
    spec.set_annotations(Some(annotations));
    Ok(spec)
}

/// The user `spec` (`user`, `uid`, `user:group`, `uid:gid`, ...) as uid and gid.
fn resolve_user(spec: &str, rootfs: &Path) -> Result<User, String> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let (uid, primary_gid) = match user.parse::<u32>() {
        Ok(uid) => (
            uid,
            lookup(rootfs, "passwd", |f| f.get(2) == Some(&user))
                .and_then(|f| f.get(3)?.parse().ok())
                .unwrap_or(0),
        ),
        Err(_) => {
            let fields =
                lookup(rootfs, "passwd", |f| f.first() == Some(&user)).ok_or_else(|| {
                    format!(
                        "user {user:?} (config User {spec:?}) is not in the image's /etc/passwd"
                    )
                })?;
            let parse = |i: usize| fields.get(i).and_then(|v| v.parse::<u32>().ok());
            match (parse(2), parse(3)) {
                (Some(uid), Some(gid)) => (uid, gid),
                _ => {
                    return Err(format!(
                        "the image's /etc/passwd entry of {user:?} is malformed"
                    ))
                }
            }
        }
    };
    let gid = match group {
        None => primary_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => lookup(rootfs, "group", |f| f.first() == Some(&g))
                .and_then(|f| f.get(2)?.parse().ok())
                .ok_or_else(|| {
                    format!("group {g:?} (config User {spec:?}) is not in the image's /etc/group")
                })?,
        },
    };
    let mut out = User::default();
    out.set_uid(uid);
    out.set_gid(gid);
    Ok(out)
}

/// The fields of the first line of the image's `/etc/NAME` that `matches`; `None` when
/// the file is missing, is not a regular file (a symbolic link is not followed) or has
/// no such line.
fn lookup(rootfs: &Path, name: &str, matches: impl Fn(&[&str]) -> bool) -> Option<Vec<String>> {
    let etc = rootfs.join("etc");
    if !std::fs::symlink_metadata(&etc).ok()?.is_dir() {
        return None;
    }
    let file = etc.join(name);
    if !std::fs::symlink_metadata(&file).ok()?.is_file() {
        return None;
    }
    let text = std::fs::read_to_string(file).ok()?;
    text.lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| matches(f))
        .map(|f| f.into_iter().map(str::to_string).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> ImageConfiguration {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn args_env_cwd_and_user_come_from_the_image_config() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::fs::write(
            root.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(root.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        let image = config(
            r#"{"architecture":"amd64","os":"linux","config":{
                "Entrypoint":["/bin/app"],"Cmd":["--serve"],"Env":["A=1"],
                "WorkingDir":"/srv","User":"app:staff"},
                "rootfs":{"type":"layers","diff_ids":[]}}"#,
        );
        let spec = runtime_spec(&image, root.path()).unwrap();
        let p = spec.process().as_ref().unwrap();
        assert_eq!(p.args().as_ref().unwrap(), &["/bin/app", "--serve"]);
        assert_eq!(p.env().as_ref().unwrap(), &["A=1"]);
        assert_eq!(p.cwd(), Path::new("/srv"));
        assert_eq!((p.user().uid(), p.user().gid()), (1000, 50));
        assert_eq!(spec.root().as_ref().unwrap().path(), Path::new("rootfs"));
        assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(false));

        let numeric = config(
            r#"{"architecture":"amd64","os":"linux","config":{"User":"1000"},
                "rootfs":{"type":"layers","diff_ids":[]}}"#,
        );
        let spec = runtime_spec(&numeric, root.path()).unwrap();
        let u = spec.process().as_ref().unwrap().user().clone();
        assert_eq!((u.uid(), u.gid()), (1000, 1001));

        let unknown = config(
            r#"{"architecture":"amd64","os":"linux","config":{"User":"nobody"},
                "rootfs":{"type":"layers","diff_ids":[]}}"#,
        );
        let err = runtime_spec(&unknown, root.path()).unwrap_err();
        assert!(
            err.contains("\"nobody\"") && err.contains("/etc/passwd"),
            "{err}"
        );
    }
}
