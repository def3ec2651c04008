//! The OCI image `scripts/image.sh` assembles without a container engine: skopeo reads its
//! config, umoci unpacks it, and `fleetward --version` and `fleetward crds` run inside the
//! unpacked root filesystem under `chroot` as the image's user. A library missing from the
//! image fails the run; the test removes one to show that it would.
//!
//! It packs the binary the other end-to-end tests run (`cargo build --bin fleetward`, a debug
//! build): the release build `scripts/image.sh` makes by default adds minutes to CI and the
//! same libraries. `chroot` needs root: run as another user, the test fails saying so.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use fleetward_e2e::workspace;
use serde_json::Value;

/// What a command printed, or an error naming it.
fn run(program: &str, args: &[&str]) -> Result<(bool, String)> {
    let out = Command::new(program).args(args).output().with_context(|| {
        format!("run {program} (scripts/install-tools.sh installs umoci and skopeo)")
    })?;
    Ok((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

fn utf8(path: &Path) -> Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

#[test]
#[ignore = "end-to-end: run by scripts/test.sh"]
fn the_image_holds_what_the_binary_needs_and_runs_it_as_nonroot() -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    ensure!(
        euid == 0,
        "this test runs the image's binary under chroot, which needs root (euid is {euid}): run \
         it as root, as CI does"
    );
    let binary = workspace::fleetward_binary()?;
    let dir = tempfile::tempdir().context("create a directory")?;
    let script = workspace::root().join("scripts/image.sh");
    // The .deb cache outlives the test, so CI downloads the packages once.
    let out = workspace::target_dir().join("image");
    let (ok, log) = run(
        utf8(&script)?,
        &[
            "--binary",
            utf8(&binary)?,
            "--out",
            utf8(&out)?,
            "--tag",
            "e2e",
        ],
    )?;
    ensure!(ok, "scripts/image.sh failed:\n{log}");
    // Its one line on stdout (printed first here) is the archive's path.
    let archive = log
        .lines()
        .find(|l| l.starts_with('/') && l.ends_with(".tar"))
        .with_context(|| format!("scripts/image.sh printed no archive path:\n{log}"))?
        .to_owned();
    ensure!(archive.ends_with("fleetward-e2e.tar"), "{log}");
    let reference = format!("oci-archive:{archive}:e2e");

    let (ok, text) = run("skopeo", &["inspect", "--config", &reference])?;
    ensure!(ok, "skopeo inspect --config: {text}");
    let config: Value = serde_json::from_str(&text).context("skopeo printed no JSON")?;
    ensure!(
        config["architecture"] == "amd64" && config["os"] == "linux",
        "{config}"
    );
    let c = &config["config"];
    ensure!(c["User"] == "65532:65532", "runs as nonroot: {c}");
    ensure!(
        c["Entrypoint"] == serde_json::json!(["/usr/local/bin/fleetward"]),
        "the chart's args follow the entrypoint: {c}"
    );
    let (ok, text) = run("skopeo", &["inspect", &reference])?;
    ensure!(ok, "skopeo inspect: {text}");
    let manifest: Value = serde_json::from_str(&text).context("skopeo printed no JSON")?;
    ensure!(
        manifest["Layers"].as_array().map(Vec::len) == Some(1),
        "one layer: {manifest}"
    );

    // umoci unpacks the layout inside the archive into a runtime bundle.
    let layout = dir.path().join("layout");
    std::fs::create_dir(&layout).context("create the layout directory")?;
    let (ok, text) = run("tar", &["-C", utf8(&layout)?, "-xf", &archive])?;
    ensure!(ok, "untar the archive: {text}");
    let bundle = dir.path().join("bundle");
    let image = format!("{}:e2e", utf8(&layout)?);
    let (ok, text) = run("umoci", &["unpack", "--image", &image, utf8(&bundle)?])?;
    ensure!(ok, "umoci unpack: {text}");
    let rootfs = bundle.join("rootfs");

    let mut files = Vec::new();
    for entry in walk(&rootfs)? {
        files.push(entry);
    }
    files.sort();
    for needed in [
        "/usr/local/bin/fleetward",
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/passwd",
        "/etc/group",
        "/lib64/ld-linux-x86-64.so.2",
        "/lib/x86_64-linux-gnu/libc.so.6",
    ] {
        ensure!(files.iter().any(|f| f == needed), "{needed} in {files:?}");
    }
    ensure!(
        !files
            .iter()
            .any(|f| f == "/bin/sh" || f.starts_with("/usr/bin/")),
        "no shell, no tools: {files:?}"
    );
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).context("read passwd")?;
    ensure!(passwd.contains("nonroot:x:65532:65532:"), "{passwd}");

    let root = utf8(&rootfs)?;
    let chrooted = |args: &[&str]| -> Result<(bool, String)> {
        let mut full = vec!["--userspec=65532:65532", root, "/usr/local/bin/fleetward"];
        full.extend_from_slice(args);
        run("chroot", &full)
    };
    let (ok, text) = chrooted(&["--version"])?;
    ensure!(
        ok && text.starts_with("fleetward "),
        "fleetward --version in the image: {text}"
    );
    let (ok, text) = chrooted(&["crds"])?;
    ensure!(
        ok && text.matches("kind: CustomResourceDefinition").count() == fleetward_crds::all().len(),
        "fleetward crds in the image: {text}"
    );

    // Without one of its libraries the binary does not start, and the run says which.
    std::fs::remove_file(rootfs.join("lib/x86_64-linux-gnu/libgcc_s.so.1"))
        .context("remove libgcc_s from the unpacked image")?;
    let (ok, text) = chrooted(&["--version"])?;
    ensure!(
        !ok && text.contains("libgcc_s.so.1"),
        "a missing library fails the run: {text}"
    );
    Ok(())
}

/// Every file and symlink under `root`, as an absolute path inside it.
fn walk(root: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
            let path = entry.context("a directory entry")?.path();
            let kind = std::fs::symlink_metadata(&path)
                .with_context(|| format!("stat {}", path.display()))?;
            if kind.is_dir() {
                dirs.push(path);
            } else {
                let inside = path.strip_prefix(root).context("a path under the rootfs")?;
                out.push(format!("/{}", utf8(inside)?));
            }
        }
    }
    Ok(out)
}
