//! The image check of `cargo xtask test` (`package_oci`): builds the image archive from the
//! package, then
//! - `skopeo inspect` reads it as an `oci-archive` and as a `docker-archive` (what `docker
//!   load` reads), with the expected digest, platform, entrypoint, environment and volume;
//! - umoci unpacks the OCI layout in it into a runtime bundle (root file system + config.json);
//! - podman loads it, into a private storage under `target/oci/check/`, and runs it;
//! - `gateway/tests/oci_image_lab.rs` starts the image in a lab against a control server, in
//!   kernel and userspace mode: under podman, and from the unpacked bundle with chroot (the
//!   way to run it where no container runtime is usable).
//!
//! Everything it makes is under `target/oci/check/`, removed at the end.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::deb::Deb;
use super::oci::{self, Image, ENTRYPOINT, OUT_DIR, STATE_DIR};
use super::util::{self, stdout_of, write, ScratchDir};
use crate::StatusOk;

/// The lab test and its two ways of starting the image.
const LAB_TEST: &str = "oci_image_lab";
const TEST_PODMAN: &str = "image_runs_under_podman";
const TEST_CHROOT: &str = "image_rootfs_runs_under_chroot";

/// Builds the image from `deb` and checks it (see the module documentation).
pub fn check(root: &Path, deb: &Deb) -> Result<()> {
    let started = Instant::now();
    let image = oci::build_from_deb(root, deb)?;
    let scratch = ScratchDir::new(root.join(OUT_DIR).join("check"))?;
    inspect(&image)?;
    let bundle = unpack(&image, scratch.path())?;
    let podman = Podman::new(&scratch.path().join("podman"))?;
    let mut tests = vec![TEST_CHROOT];
    let lab = match podman.load_and_run(&image) {
        Ok(()) => {
            tests.insert(0, TEST_PODMAN);
            Ok(())
        }
        Err(e) if e.is::<Unrunnable>() => {
            println!("xtask: {e:#}; the image's root runs under chroot only");
            Ok(())
        }
        Err(e) => Err(e),
    }
    .and_then(|()| lab_test(root, &image, &podman, &bundle, &tests));
    podman.remove_all();
    lab?;
    println!(
        "xtask: image check passed in {:.0} s ({}, layer {:.1} MiB compressed, root {:.1} MiB)",
        started.elapsed().as_secs_f64(),
        image.reference,
        image.layer_size as f64 / 1048576.0,
        image.rootfs_size as f64 / 1048576.0
    );
    Ok(())
}

/// `skopeo inspect` of both transports, and the config's entrypoint, environment and volume.
fn inspect(image: &Image) -> Result<()> {
    let archive = image.archive.display();
    let skopeo = |args: &[&str], reference: String| -> Result<Value> {
        let out = stdout_of(
            Command::new("skopeo")
                .arg("inspect")
                .args(args)
                .arg(&reference),
        )
        .context("skopeo inspect (install skopeo with `cargo xtask setup`)")?;
        serde_json::from_str(&out).with_context(|| format!("parsing skopeo inspect {reference}"))
    };
    let oci = skopeo(&[], format!("oci-archive:{archive}:{}", image.reference))?;
    if oci["Digest"] != image.manifest_digest.as_str() {
        bail!(
            "skopeo reads the manifest digest {} from the archive",
            oci["Digest"]
        );
    }
    let docker = skopeo(&[], format!("docker-archive:{archive}:{}", image.reference))?;
    for (what, v) in [("oci-archive", &oci), ("docker-archive", &docker)] {
        if v["Architecture"] != image.architecture.as_str()
            || v["Os"] != "linux"
            || v["Layers"].as_array().map_or(0, Vec::len) != 1
        {
            bail!(
                "skopeo reads the {what} as something else than one {} linux layer: {v}",
                image.architecture
            );
        }
    }
    let config = skopeo(&["--config"], format!("oci-archive:{archive}"))?;
    let c = &config["config"];
    let entrypoint: Vec<&str> = c["Entrypoint"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if entrypoint != ENTRYPOINT {
        bail!("the image's entrypoint is {entrypoint:?}");
    }
    let state_env = format!("TS_STATE_DIR={STATE_DIR}");
    if !c["Env"]
        .as_array()
        .is_some_and(|e| e.iter().any(|v| v == state_env.as_str()))
    {
        bail!("the image's environment has no {state_env}: {}", c["Env"]);
    }
    if c["Volumes"].get(STATE_DIR).is_none() {
        bail!("the image has no volume {STATE_DIR}: {}", c["Volumes"]);
    }
    println!(
        "xtask: skopeo reads {} as oci-archive and docker-archive ({})",
        image.archive.display(),
        image.manifest_digest
    );
    Ok(())
}

/// Extracts the archive (an OCI layout) and lets umoci unpack the image into a bundle.
fn unpack(image: &Image, dir: &Path) -> Result<PathBuf> {
    let layout = dir.join("layout");
    let bundle = dir.join("bundle");
    util::mkdir(&layout)?;
    util::run(
        Command::new("tar")
            .arg("-xf")
            .arg(&image.archive)
            .arg("-C")
            .arg(&layout),
    )?;
    stdout_of(
        Command::new("umoci")
            .arg("unpack")
            .arg("--image")
            .arg(format!("{}:{}", layout.display(), image.reference))
            .arg(&bundle),
    )
    .context("umoci unpack (install umoci with `cargo xtask setup`)")?;
    for f in [
        "config.json",
        "rootfs/usr/bin/tailgate",
        "rootfs/usr/sbin/nft",
    ] {
        if !bundle.join(f).exists() {
            bail!("the bundle umoci unpacked has no {f}");
        }
    }
    println!("xtask: umoci unpacked the image into {}", bundle.display());
    Ok(bundle)
}

/// podman cannot run containers on this machine (loading worked).
#[derive(Debug)]
struct Unrunnable(String);

impl std::fmt::Display for Unrunnable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "podman cannot run containers here: {}", self.0)
    }
}

impl std::error::Error for Unrunnable {}

/// podman with a storage, configuration and run directory of its own, through a wrapper
/// script (also what the lab test runs).
struct Podman {
    wrapper: PathBuf,
}

impl Podman {
    /// Writes the configuration and the wrapper into `dir`. runc rather than crun (crun
    /// refuses hosts with both cgroup versions mounted); limits on open files and processes
    /// that need no CAP_SYS_RESOURCE (podman's defaults for root may be above the hard limits
    /// it runs under): the current hard limit on files, and 4096 processes, plenty for the
    /// daemon.
    fn new(dir: &Path) -> Result<Podman> {
        let nofile = hard_nofile_limit();
        let d = dir.display();
        write(
            &dir.join("containers.conf"),
            format!(
                "[containers]\ndefault_ulimits = [\"nofile={nofile}:{nofile}\", \
                 \"nproc=4096:4096\"]\n\n\
                 [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\n\
                 events_logger = \"none\"\ntmp_dir = \"{d}/tmp\"\n"
            ),
            0o644,
        )?;
        write(
            &dir.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{d}/storage\"\n\
                 runroot = \"{d}/run\"\n"
            ),
            0o644,
        )?;
        let wrapper = dir.join("podman");
        write(
            &wrapper,
            format!(
                "#!/bin/sh\n# podman with the image check's own storage and settings.\n\
                 CONTAINERS_CONF={d}/containers.conf CONTAINERS_STORAGE_CONF={d}/storage.conf \
                 exec podman \"$@\"\n"
            ),
            0o755,
        )?;
        Ok(Podman { wrapper })
    }

    fn cmd(&self) -> Command {
        Command::new(&self.wrapper)
    }

    /// `podman load`, the loaded image's name and digest, then a container of it (an
    /// [`Unrunnable`] error if that fails).
    fn load_and_run(&self, image: &Image) -> Result<()> {
        let out = stdout_of(self.cmd().arg("load").arg("--input").arg(&image.archive))
            .context("podman load (install podman with `cargo xtask setup`)")?;
        if !out.contains(&image.reference) {
            bail!(
                "podman load loaded something else than {}: {out}",
                image.reference
            );
        }
        let inspect = stdout_of(self.cmd().args(["image", "inspect", &image.reference]))?;
        let inspect: Value =
            serde_json::from_str(&inspect).context("parsing podman image inspect")?;
        let i = &inspect[0];
        if i["Config"]["Entrypoint"][1] != ENTRYPOINT[1] {
            bail!("podman sees the entrypoint {}", i["Config"]["Entrypoint"]);
        }
        println!("xtask: podman loaded {} ({})", image.reference, out.trim());
        let version = stdout_of(self.cmd().args([
            "run",
            "--rm",
            "--network=none",
            &format!("--entrypoint={}", ENTRYPOINT[0]),
            &image.reference,
            "--version",
        ]))
        .map_err(|e| Unrunnable(format!("{e:#}")))?;
        println!("xtask: podman runs it: {version}");
        Ok(())
    }

    /// Removes the containers and images (the directory goes with the scratch directory).
    fn remove_all(&self) {
        let _ = self.cmd().args(["rm", "--all", "--force"]).output();
        let _ = self.cmd().args(["rmi", "--all", "--force"]).output();
    }
}

/// The hard limit on open files, for podman's containers.
fn hard_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    if rc != 0 || lim.rlim_max == libc::RLIM_INFINITY {
        1_048_576
    } else {
        lim.rlim_max.min(1_048_576)
    }
}

/// `cargo test` of the ignored lab tests `tests`, with the image's bundle and podman. The
/// workspace is named as in `cargo xtask test`, so that the same features are resolved and
/// the test built there is reused.
fn lab_test(
    root: &Path,
    image: &Image,
    podman: &Podman,
    bundle: &Path,
    tests: &[&str],
) -> Result<()> {
    println!(
        "xtask: starting the image in the lab ({})",
        tests.join(", ")
    );
    let t = Instant::now();
    let mut cmd = crate::cargo(
        root,
        &["test", "--workspace", "--release", "--test", LAB_TEST, "--"],
    );
    cmd.args(["--ignored", "--exact", "--test-threads=1"])
        .args(tests)
        .env(
            crate::ebpf::EBPF_OBJ_ENV,
            crate::ebpf::build_ebpf(root, true)?,
        )
        .env("TAILGATE_OCI_BUNDLE", bundle)
        .env("TAILGATE_OCI_PODMAN", &podman.wrapper)
        .env("TAILGATE_OCI_IMAGE", &image.reference);
    cmd.status_ok()?;
    println!(
        "xtask: the image served the lab in {:.0} s",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
