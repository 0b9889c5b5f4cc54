//! `cargo xtask package deb`: the Debian package of tailgate, and the check `cargo xtask test`
//! runs on it (lintian, `systemd-analyze verify`, install into a fresh Debian root and start
//! the unit there under systemd).
//!
//! The package's static files live in `image/deb/`; docs/packaging.md describes the package.

mod check;
mod deb;
mod manpage;
mod util;

pub use check::check;
pub use deb::build;
