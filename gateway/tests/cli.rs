//! The `tailgate` command line: keys agree with the `wg` tool, bad configs fail with clear
//! errors before anything is created, and the CLI explains when no daemon runs.

use std::io::Write;
use std::process::{Command, Output, Stdio};

const TAILGATE: &str = env!("CARGO_BIN_EXE_tailgate");

fn run_with_stdin(program: &str, args: &[&str], input: &str) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
fn genkey_and_pubkey_match_wg() {
    let private = Command::new(TAILGATE).arg("genkey").output().unwrap();
    assert!(private.status.success());
    let private = stdout(&private);
    assert_eq!(private.len(), 44, "{private}");
    let ours = run_with_stdin(TAILGATE, &["pubkey"], &private);
    let theirs = run_with_stdin("wg", &["pubkey"], &private);
    assert!(ours.status.success() && theirs.status.success());
    assert_eq!(stdout(&ours), stdout(&theirs));

    let wg_private = stdout(&Command::new("wg").arg("genkey").output().unwrap());
    let ours = run_with_stdin(TAILGATE, &["pubkey"], &wg_private);
    let theirs = run_with_stdin("wg", &["pubkey"], &wg_private);
    assert_eq!(stdout(&ours), stdout(&theirs));
}

#[test]
fn pubkey_rejects_bad_input() {
    let o = run_with_stdin(TAILGATE, &["pubkey"], "not a key");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("private key on stdin"), "{err}");
}

fn daemon_error(config: &str) -> String {
    let dir = std::env::temp_dir().join(format!("tg-cli-{}-{}", std::process::id(), config.len()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(&file, config).unwrap();
    let o = Command::new(TAILGATE)
        .args(["daemon", "--no-xdp", "--config"])
        .arg(&file)
        .arg("--socket")
        .arg(dir.join("s.sock"))
        .env("TS_ACCEPT_DNS", "false")
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!o.status.success(), "daemon accepted a bad config");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn daemon_refuses_bad_config_with_file_key_and_reason() {
    let key = "YEocP0uB4VQvKpz0Bg+R3jcGZ8SbKYCiPHvMbGwnQGk=";
    let head = format!("[interface]\nname = \"tgbad0\"\nprivate_key = \"{key}\"\n");
    let cases = [
        (
            format!("{head}[[peer]]\npublic_key = \"xyz!\"\n"),
            "peer 1 (public_key): bad base64",
        ),
        (
            format!("{head}[[peer]]\npublic_key = \"AAAA\"\n"),
            "peer 1 (public_key): wrong length",
        ),
        (
            format!("{head}[[peer]]\npublic_key = \"{key}\"\nallowed_ips = [\"1.2.3.4/40\"]\n"),
            "peer 1 (allowed_ips)",
        ),
        (
            format!("{head}colour = \"red\"\n"),
            "unknown field `colour`",
        ),
        (
            "[interface]\nname = \"tgbad0\"\n".to_string(),
            "interface.private_key: missing",
        ),
        ("this is not toml".to_string(), "bad.toml"),
    ];
    for (config, expected) in cases {
        let err = daemon_error(&config);
        assert!(
            err.contains("bad.toml"),
            "error does not name the file: {err}"
        );
        assert!(err.contains(expected), "expected {expected:?} in: {err}");
    }
}

#[test]
fn status_without_daemon_explains() {
    let o = Command::new(TAILGATE)
        .args(["--socket", "/nonexistent/tailgate.sock", "status"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("cannot reach the tailgate daemon"), "{err}");
}

#[test]
fn help_lists_commands() {
    let o = Command::new(TAILGATE).arg("--help").output().unwrap();
    let help = stdout(&o);
    for cmd in ["daemon", "status", "genkey", "pubkey"] {
        assert!(help.contains(cmd), "{help}");
    }
}
