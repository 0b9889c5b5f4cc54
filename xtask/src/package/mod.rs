//! `cargo xtask package deb`: the Debian package of tailgate, and the check `cargo xtask test`
//! runs on it (lintian, `systemd-analyze verify`, install into a fresh Debian root and start
//! the unit there under systemd).
//!
//! `cargo xtask package oci`: the container image built from that package, and its check
//! (skopeo, umoci, podman, the entrypoint run in a lab).
//!
//! `cargo xtask package image`: a bootable appliance disk image (Debian, cloud-init, the
//! package installed), and its check (booted under qemu with a NoCloud seed;
//! docs/appliance-image.md).
//!
//! `cargo xtask package cloud-init` and `cargo xtask package k8s`: the `#cloud-config` files
//! and Kubernetes manifests rendered with the user's values, and their offline checks
//! (`cloud-init schema`, the Kubernetes JSON schemas; docs/cloud-init.md, docs/kubernetes.md).
//!
//! `cargo xtask package spk` and `cargo xtask package qpkg`: the Synology DSM 7 and QNAP QTS
//! packages, and their checks (unpacked and their scripts run in a DSM-like tree and a QTS-like
//! root; docs/synology.md, docs/qnap.md).
//!
//! The package's static files live in `image/deb/`; docs/packaging.md describes the package,
//! docs/container.md the image.

mod check;
mod cloud_init;
mod cloud_init_check;
mod deb;
mod image;
mod image_check;
mod image_disk;
mod k8s;
mod k8s_check;
mod manpage;
mod oci;
mod oci_archive;
mod oci_check;
mod qpkg;
mod qpkg_check;
mod spk;
mod spk_archive;
mod spk_check;
mod util;

pub use check::check;
pub use cloud_init::{render as render_cloud_init, CloudInitArgs};
pub use cloud_init_check::install as install_cloud_init;
pub use deb::build;
pub use image::build as build_image;
pub use k8s::{render as render_k8s, K8sArgs};
pub use k8s_check::install as install_kubernetes_validate;
pub use oci::build as build_oci;
pub use qpkg::build as build_qpkg;
pub use spk::build as build_spk;

/// A package check beyond the .deb and the image: builds its artefact from the release binary
/// and checks it.
pub type Check = fn(root: &std::path::Path, bin: &std::path::Path) -> anyhow::Result<()>;

/// The checks `cargo xtask test` runs after the .deb and image checks, each under the name a
/// test filter selects it by.
pub const MORE_CHECKS: &[(&str, Check)] = &[
    ("package_spk", spk_check::check),
    ("package_qpkg", qpkg_check::check),
    ("package_image", image_check::check),
    ("package_cloud_init", cloud_init_check::check),
    ("package_k8s", k8s_check::check),
];
