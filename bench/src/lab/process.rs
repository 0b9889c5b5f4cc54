//! Child processes that are stopped when dropped, and bounded waiting.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};

/// A running child process; on drop it gets SIGTERM, then SIGKILL after a grace period.
pub struct Process {
    child: Option<Child>,
    what: String,
    log: PathBuf,
    keep_log: bool,
}

/// How long a process may take to exit after SIGTERM before it is killed.
const GRACE: Duration = Duration::from_secs(5);

impl Process {
    /// Starts `cmd` with stdout and stderr appended to a log file in the temp directory.
    pub fn spawn(what: &str, mut cmd: Command) -> Result<Process> {
        let log = std::env::temp_dir().join(format!("{}.log", super::netns::unique_name(what)));
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {what}: {cmd:?}"))?;
        Ok(Process {
            child: Some(child),
            what: what.to_string(),
            log,
            keep_log: true,
        })
    }

    /// The process id, while the process has not been stopped (for `/proc/<pid>/…`).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Deletes the log file when the process is dropped (logs are kept by default), for
    /// short-lived helpers whose output is only read while they run.
    pub fn discard_log_on_drop(&mut self) {
        self.keep_log = false;
    }

    /// The process's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails with the log if the process has already exited.
    pub fn check_running(&mut self) -> Result<()> {
        let child = self
            .child
            .as_mut()
            .ok_or_else(|| anyhow!("{} was stopped", self.what))?;
        if let Some(status) = child.try_wait()? {
            return Err(anyhow!("{} exited ({status}):\n{}", self.what, self.log()));
        }
        Ok(())
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: libc::c_int) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) with a pid we spawned and have not yet reaped.
            unsafe { libc::kill(c.id() as libc::pid_t, signal) };
        }
    }

    /// Sends SIGTERM and waits (bounded) for the exit status; returns whether it exited 0.
    pub fn stop(&mut self) -> Result<bool> {
        let Some(mut child) = self.child.take() else {
            return Ok(false);
        };
        // SAFETY: as in `signal`.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + GRACE;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                return Ok(status.success());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        Err(anyhow!(
            "{} ignored SIGTERM for {GRACE:?} and was killed",
            self.what
        ))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.stop();
        if !self.keep_log {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// Polls `check` every 50 ms until it returns `Ok(Some(v))` or `timeout` passes; the last
/// error (or "timed out") is returned on failure.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last = anyhow!("timed out after {timeout:?}");
    while Instant::now() < deadline {
        match check() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(last.context(format!("waiting for {what}")))
}
