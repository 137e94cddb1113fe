//! The system's Mosquitto, started for one bench phase on a free loopback port with a config
//! that never drops a message, and killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Finds the `mosquitto` binary: `/usr/sbin/mosquitto` (Debian), else `mosquitto` on `PATH`.
pub fn find() -> Result<PathBuf> {
    let debian = PathBuf::from("/usr/sbin/mosquitto");
    if debian.exists() {
        return Ok(debian);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let exe = dir.join("mosquitto");
            if exe.is_file() {
                return Ok(exe);
            }
        }
    }
    bail!("mosquitto not found (looked for /usr/sbin/mosquitto and on PATH): apt-get install mosquitto")
}

/// The broker config: loopback only, no persistence, and no limit that drops or refuses a
/// QoS 1 message (`max_queued_messages 0` and `max_queued_bytes 0` mean "no maximum" in
/// mosquitto.conf(5)). `max_inflight_messages` is the bench's `--inflight`: QoS 1 messages
/// sent to one client before its PUBACKs; also the Receive Maximum offered to publishers.
/// Packet size stays unlimited (the default).
pub fn config(port: u16, inflight: u16) -> String {
    format!(
        "# Written by `iomt bench`.\n\
         listener {port} 127.0.0.1\n\
         allow_anonymous true\n\
         persistence false\n\
         max_queued_messages 0\n\
         max_queued_bytes 0\n\
         max_inflight_messages {inflight}\n\
         max_inflight_bytes 0\n\
         set_tcp_nodelay true\n\
         log_dest stderr\n\
         log_type error\n\
         log_type warning\n\
         log_type notice\n\
         log_type subscribe\n"
    )
}

/// A running broker.
pub struct Broker {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its log (stderr).
    pub log: PathBuf,
}

impl Broker {
    /// Starts `exe` with its config and log in `dir`, and waits until it accepts connections.
    pub fn start(exe: &Path, dir: &Path, inflight: u16) -> Result<Broker> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        // Mosquitto started as root reads its config before dropping to its own user; keep
        // the folder readable either way.
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
        }
        let port = super::free_port()?;
        let conf = dir.join("mosquitto.conf");
        std::fs::write(&conf, config(port, inflight))
            .with_context(|| format!("writing {}", conf.display()))?;
        let log = dir.join("mosquitto.log");
        let log_file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut child = Command::new(exe)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "mosquitto exited at start ({status}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default().trim()
                );
            }
            if started.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                bail!("mosquitto did not listen on 127.0.0.1:{port} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Broker { child, port, log })
    }

    /// The broker's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the log shows `client_id` subscribed to `filter` (mosquitto's `subscribe` log
    /// line: `<time>: <client id> <qos> <filter>`).
    pub fn subscribed(&self, client_id: &str, filter: &str) -> bool {
        let needle = format!("{client_id} 1 {filter}");
        self.log_text().lines().any(|l| l.ends_with(&needle))
    }

    /// Log lines that report a client's keep-alive running out ("Client ... has exceeded
    /// timeout, disconnecting"): a connection left unpolled. Expected empty.
    pub fn keep_alive_trouble(&self) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| l.contains("exceeded timeout"))
            .map(str::to_string)
            .collect()
    }

    /// Log lines that report messages dropped (mosquitto warns "Outgoing messages are being
    /// dropped for client ..."); empty with this config unless memory ran out.
    pub fn dropped_warnings(&self) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| l.to_ascii_lowercase().contains("dropped"))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
