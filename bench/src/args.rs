//! The command line the benchmark binaries share:
//! `NAME [--quick] [--out PATH] [OPTIONS…] PATH/TO/tailgate`, run as root.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};

/// A parsed benchmark command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchArgs {
    /// `--quick` was given.
    pub quick: bool,
    /// Where to write the report.
    pub out: PathBuf,
    /// The tailgate binary under test.
    pub tailgate: PathBuf,
    /// Other flags that were given (from the binary's `flags`).
    flags: Vec<String>,
    /// Other options with their values (from the binary's `valued`).
    values: BTreeMap<String, String>,
}

impl BenchArgs {
    /// Parses `args` (without the program name). `flags` and `valued` are the binary's own
    /// extra options (`--name`). `Ok(None)`: help was asked for (the caller prints `usage`).
    pub fn parse(
        args: impl IntoIterator<Item = String>,
        usage: &str,
        default_out: &str,
        flags: &[&str],
        valued: &[&str],
    ) -> Result<Option<BenchArgs>> {
        let mut quick = false;
        let mut out = PathBuf::from(default_out);
        let mut tailgate = None;
        let mut given_flags = Vec::new();
        let mut values = BTreeMap::new();
        let mut args = args.into_iter();
        while let Some(a) = args.next() {
            match a.as_str() {
                "--quick" => quick = true,
                "--out" => {
                    out = args
                        .next()
                        .ok_or_else(|| anyhow!("--out needs a path\n{usage}"))?
                        .into()
                }
                "-h" | "--help" => return Ok(None),
                s if flags.contains(&s) => given_flags.push(s.to_string()),
                s if valued.contains(&s) => {
                    let v = args
                        .next()
                        .ok_or_else(|| anyhow!("{s} needs a value\n{usage}"))?;
                    values.insert(s.to_string(), v);
                }
                s if s.starts_with('-') => bail!("unknown option {s}\n{usage}"),
                s if tailgate.is_none() => tailgate = Some(PathBuf::from(s)),
                s => bail!("unexpected argument {s}\n{usage}"),
            }
        }
        let tailgate = tailgate.ok_or_else(|| anyhow!("{usage}"))?;
        Ok(Some(BenchArgs {
            quick,
            out,
            tailgate,
            flags: given_flags,
            values,
        }))
    }

    /// [`BenchArgs::parse`] of the process's arguments, then the checks every benchmark
    /// needs: the binary exists and we run as root. Prints `usage` and returns `Ok(None)` for
    /// `--help`.
    pub fn from_env(
        usage: &str,
        default_out: &str,
        flags: &[&str],
        valued: &[&str],
    ) -> Result<Option<BenchArgs>> {
        let Some(args) = Self::parse(std::env::args().skip(1), usage, default_out, flags, valued)?
        else {
            println!("{usage}");
            return Ok(None);
        };
        if !args.tailgate.is_file() {
            bail!("{} is not a file", args.tailgate.display());
        }
        if !crate::lab::is_root() {
            bail!("the benchmark creates network namespaces: run it as root (cargo xtask bench …)");
        }
        Ok(Some(args))
    }

    /// Whether the extra flag `name` was given.
    pub fn has(&self, name: &str) -> bool {
        self.flags.iter().any(|f| f == name)
    }

    /// The value of the extra option `name`, if given.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(a: &[&str]) -> Result<Option<BenchArgs>> {
        BenchArgs::parse(
            a.iter().map(|s| s.to_string()),
            "usage: x",
            "docs/x.md",
            &["--smoke"],
            &["--trials"],
        )
    }

    #[test]
    fn options_flags_and_values() {
        let a = parse(&["--quick", "--trials", "5", "--smoke", "/bin/tg"])
            .unwrap()
            .unwrap();
        assert!(a.quick && a.has("--smoke"));
        assert_eq!(a.value("--trials"), Some("5"));
        assert_eq!(a.out, PathBuf::from("docs/x.md"));
        assert_eq!(a.tailgate, PathBuf::from("/bin/tg"));
        let a = parse(&["--out", "/tmp/r.md", "tg"]).unwrap().unwrap();
        assert_eq!(a.out, PathBuf::from("/tmp/r.md"));
        assert!(!a.quick && !a.has("--smoke") && a.value("--trials").is_none());
        assert_eq!(parse(&["--help"]).unwrap(), None);
    }

    #[test]
    fn mistakes_are_explained() {
        for (args, want) in [
            (&["--bogus", "tg"][..], "unknown option --bogus"),
            (&["tg", "extra"][..], "unexpected argument extra"),
            (&["--out"][..], "--out needs a path"),
            (&["--trials"][..], "--trials needs a value"),
            (&[][..], "usage: x"),
        ] {
            let e = parse(args).unwrap_err().to_string();
            assert!(e.contains(want), "{args:?}: {e}");
        }
    }
}
