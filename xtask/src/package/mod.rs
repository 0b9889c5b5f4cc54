//! `cargo xtask package deb`: the Debian package of tailgate, and the check `cargo xtask test`
//! runs on it (lintian, `systemd-analyze verify`, install into a fresh Debian root and start
//! the unit there under systemd).
//!
//! `cargo xtask package oci`: the container image built from that package, and its check
//! (skopeo, umoci, podman, the entrypoint run in a lab).
//!
//! The package's static files live in `image/deb/`; docs/packaging.md describes the package,
//! docs/container.md the image.

mod check;
mod deb;
mod manpage;
mod oci;
mod oci_archive;
mod oci_check;
mod util;

pub use check::check;
pub use deb::build;
pub use oci::build as build_oci;

/// A package check beyond the .deb and the image: builds its artefact from the release binary
/// and checks it.
pub type Check = fn(root: &std::path::Path, bin: &std::path::Path) -> anyhow::Result<()>;

/// The checks `cargo xtask test` runs after the .deb and image checks, each under the name a
/// test filter selects it by.
pub const MORE_CHECKS: &[(&str, Check)] = &[];
