//! tailgate(1), generated from the binary's `--help` output: help2man makes the page from the
//! top-level help, `image/deb/tailgate.h2m` adds the description, files and references, and a
//! COMMAND REFERENCE section carries the full `--help` of every subcommand.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use super::util::{stdout_of, write};

/// Column at which the subcommands' help is wrapped (an 80-column terminal less man's indent).
const WIDTH: usize = 72;

/// Writes the man page of `bin` to `out`, dated `epoch` (seconds since 1970).
pub fn generate(bin: &Path, summary: &str, include: &Path, epoch: &str, out: &Path) -> Result<()> {
    let reference = out.with_extension("h2m");
    write(&reference, command_reference(bin)?, 0o644)?;
    stdout_of(
        Command::new("help2man")
            .args([
                "--no-info",
                "--locale",
                "C.UTF-8",
                "--name",
                summary,
                "--section",
                "1",
            ])
            .arg("--include")
            .arg(include)
            .arg("--include")
            .arg(&reference)
            .arg("--output")
            .arg(out)
            .arg(bin)
            .env("SOURCE_DATE_EPOCH", epoch)
            .env("LC_ALL", "C.UTF-8"),
    )
    .context("help2man (install it with `cargo xtask setup`)")?;
    let page = fs::read_to_string(out).with_context(|| format!("reading {}", out.display()))?;
    write(out, ascii_roff(&page), 0o644)
}

/// Non-ASCII characters as roff escapes (`…` becomes `\[u2026]`), so the page renders the
/// same in every locale.
fn ascii_roff(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let _ = write!(out, "\\[u{:04X}]", c as u32);
        }
    }
    out
}

/// A help2man include section with the `--help` of every subcommand, depth first.
fn command_reference(bin: &Path) -> Result<String> {
    let mut out = String::from("[COMMAND REFERENCE]\n");
    let mut pending: Vec<Vec<String>> = subcommands(&help(bin, &[])?)
        .into_iter()
        .rev()
        .map(|c| vec![c])
        .collect();
    while let Some(path) = pending.pop() {
        let text = help(bin, &path)?;
        let _ = writeln!(out, ".SS \"tailgate {}\"", path.join(" "));
        out.push_str(".nf\n");
        for line in text.lines() {
            for wrapped in wrap(line.trim_end(), WIDTH) {
                if wrapped.is_empty() {
                    out.push_str(".sp\n");
                } else {
                    out.push_str(&escape_line(&wrapped));
                    out.push('\n');
                }
            }
        }
        out.push_str(".fi\n");
        for sub in subcommands(&text).into_iter().rev() {
            let mut p = path.clone();
            p.push(sub);
            pending.push(p);
        }
    }
    Ok(out)
}

fn help(bin: &Path, path: &[String]) -> Result<String> {
    stdout_of(Command::new(bin).args(path).arg("--help"))
}

/// The names in the `Commands:` list of a clap help text, without `help`.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect()
}

/// Wraps a help line at `width` columns. Continuation lines start under the text of a
/// two-column entry ("  --flag    description") or else at the line's own indentation.
fn wrap(line: &str, width: usize) -> Vec<String> {
    if line.chars().count() <= width {
        return vec![line.to_string()];
    }
    let indent = line.len() - line.trim_start_matches(' ').len();
    // The part kept as it is: the indentation, or up to the description column (after the
    // first run of two or more spaces) when that column is not too far right.
    let mut head = &line[..indent];
    if let Some(gap) = line[indent..].find("  ") {
        let col = line.len() - line[indent + gap..].trim_start_matches(' ').len();
        if line[..col].chars().count() < width / 2 {
            head = &line[..col];
        }
    }
    let hang = head.chars().count();
    let mut lines = Vec::new();
    let mut current = head.to_string();
    let mut current_len = hang;
    let mut empty = true;
    for word in line[head.len()..].split_whitespace() {
        let word_len = word.chars().count();
        if !empty && current_len + 1 + word_len > width {
            lines.push(std::mem::replace(&mut current, " ".repeat(hang)));
            current_len = hang;
            empty = true;
        }
        if !empty {
            current.push(' ');
            current_len += 1;
        }
        current.push_str(word);
        current_len += word_len;
        empty = false;
    }
    lines.push(current);
    lines
}

/// One line of text for a roff no-fill block: backslashes and minus signs escaped, and a
/// leading control character neutralised.
fn escape_line(line: &str) -> String {
    let mut out = String::new();
    if line.starts_with('.') || line.starts_with('\'') {
        out.push_str("\\&");
    }
    for c in line.chars() {
        match c {
            '\\' => out.push_str("\\e"),
            '-' => out.push_str("\\-"),
            c if c.is_ascii() => out.push(c),
            c => {
                let _ = write!(out, "\\[u{:04X}]", c as u32);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subcommands_are_read_from_the_commands_list() {
        let help = "About\n\nUsage: x <COMMAND>\n\nCommands:\n  serve    Run it\n  \
                    info     Show it\n  help     Print this\n\nOptions:\n  -h, --help  Print help\n";
        assert_eq!(subcommands(help), vec!["serve", "info"]);
        assert!(subcommands("Usage: x\n\nOptions:\n  -h\n").is_empty());
    }

    #[test]
    fn long_lines_wrap_under_the_description() {
        let line = format!("  -c, --config <C>  {}", "word ".repeat(30));
        let lines = wrap(line.trim_end(), 60);
        assert!(lines.len() > 1);
        assert!(lines.iter().all(|l| l.chars().count() <= 60), "{lines:#?}");
        assert!(lines[0].starts_with("  -c, --config <C>  word"));
        assert!(lines[1..].iter().all(|l| l.starts_with(&" ".repeat(20))));
        let joined: Vec<&str> = lines.iter().flat_map(|l| l.split_whitespace()).collect();
        assert_eq!(joined.len(), line.split_whitespace().count());
    }

    #[test]
    fn plain_paragraphs_wrap_at_their_indentation() {
        let line = "          ".to_string() + &"abc ".repeat(40);
        let lines = wrap(line.trim_end(), 50);
        assert!(
            lines.iter().all(|l| l.starts_with("          abc")),
            "{lines:#?}"
        );
        assert!(lines.iter().all(|l| l.chars().count() <= 50));
        assert_eq!(wrap("short", 50), vec!["short"]);
    }

    #[test]
    fn roff_control_characters_are_escaped() {
        assert_eq!(escape_line(".config -x \\n"), "\\&.config \\-x \\en");
        assert_eq!(escape_line("a \u{2026}"), "a \\[u2026]");
        assert_eq!(ascii_roff("x \u{2026}"), "x \\[u2026]");
    }
}
