//! The connector under test as a child process (`iomt run --config …`), so its memory is its
//! own: resident set size read from `/proc/<pid>/status`, sampled on a thread.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Resident memory of a process, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    /// `VmRSS`: resident now.
    pub rss: u64,
    /// `VmHWM`: the most it was ever resident (the kernel's peak).
    pub hwm: u64,
}

/// Reads `VmRSS` and `VmHWM` from a `/proc/<pid>/status` text.
pub fn parse_status(text: &str) -> Option<Memory> {
    let kib = |key: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        let v = line[key.len()..].trim().trim_end_matches("kB").trim();
        v.parse::<u64>().ok().map(|k| k * 1024)
    };
    Some(Memory {
        rss: kib("VmRSS:")?,
        hwm: kib("VmHWM:")?,
    })
}

/// The memory of process `pid`, or `None` once it is gone.
pub fn read_memory(pid: u32) -> Option<Memory> {
    parse_status(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// The running connector.
pub struct Connector {
    child: Child,
    /// Its stdout and stderr.
    pub log: PathBuf,
}

impl Connector {
    /// Starts `exe run --config config`, its output into `log`.
    pub fn start(exe: &Path, config: &Path, log: &Path) -> Result<Connector> {
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = Command::new(exe)
            .arg("run")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {} run", exe.display()))?;
        Ok(Connector {
            child,
            log: log.to_path_buf(),
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails with the end of its log if it has exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "the connector exited early ({status}); the end of {}:\n{}",
                self.log.display(),
                self.log_tail(20)
            );
        }
        Ok(())
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Sends SIGTERM (the service drains: flushes every window, writes, acknowledges) and
    /// waits up to `timeout` for it to exit; returns its status and how long the drain took.
    /// A connector still running after `timeout` is killed (SIGKILL): status `None`.
    pub fn terminate(&mut self, timeout: Duration) -> Result<(Option<ExitStatus>, Duration)> {
        let started = Instant::now();
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .context("running kill -TERM")?;
        if !sent.success() {
            bail!("kill -TERM {} failed", self.pid());
        }
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok((Some(status), started.elapsed()));
            }
            if started.elapsed() > timeout {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Ok((None, started.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Connector {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Samples a process's `VmRSS` every `every` on a thread, keeping the peak, the latest value
/// and the latest `VmHWM`.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    current: Arc<AtomicU64>,
    handle: Option<std::thread::JoinHandle<RssSummary>>,
}

/// What the sampler saw.
#[derive(Debug, Clone, Copy, Default)]
pub struct RssSummary {
    /// Samples taken.
    pub samples: u64,
    /// Largest `VmRSS` sampled, bytes.
    pub peak_rss: u64,
    /// The last `VmHWM` read while the process was alive, bytes.
    pub hwm: u64,
}

impl RssSampler {
    /// Starts sampling `pid`.
    pub fn start(pid: u32, every: Duration) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let current = Arc::new(AtomicU64::new(0));
        let (s, c) = (stop.clone(), current.clone());
        let handle = std::thread::Builder::new()
            .name("bench-rss".into())
            .spawn(move || {
                let mut sum = RssSummary::default();
                while !s.load(Ordering::Relaxed) {
                    if let Some(m) = read_memory(pid) {
                        sum.samples += 1;
                        sum.peak_rss = sum.peak_rss.max(m.rss);
                        sum.hwm = sum.hwm.max(m.hwm);
                        c.store(m.rss, Ordering::Relaxed);
                    }
                    std::thread::sleep(every);
                }
                sum
            })
            .ok();
        RssSampler {
            stop,
            current,
            handle,
        }
    }

    /// The latest `VmRSS`, bytes.
    pub fn current(&self) -> u64 {
        self.current.load(Ordering::Relaxed)
    }

    /// Stops sampling.
    pub fn stop(mut self) -> RssSummary {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rss_and_hwm_from_proc_status() {
        let text = "Name:\tiomt\nVmPeak:\t  900000 kB\nVmHWM:\t   51200 kB\nVmRSS:\t   40960 kB\n";
        assert_eq!(
            parse_status(text),
            Some(Memory {
                rss: 40960 * 1024,
                hwm: 51200 * 1024
            })
        );
        assert_eq!(parse_status("Name:\tzombie\n"), None);
        let me = read_memory(std::process::id()).expect("our own /proc status");
        assert!(me.rss > 0 && me.hwm >= me.rss);
    }
}
