//! A real MQTT broker for the tests: Debian's `mosquitto` (`.ci/run` installs it), started on a
//! free loopback port with its own config, killed when dropped. Its log (connections,
//! subscriptions, keep-alive timeouts, dropped messages) goes to a file the test can read.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

/// A running broker.
pub struct Mosquitto {
    child: Child,
    /// The loopback port it listens on.
    pub port: u16,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
    _extra: Option<tempfile::TempDir>,
}

/// A CA and a server certificate for 127.0.0.1, made with `openssl` for a TLS test.
pub struct TestCa {
    /// The CA's certificate (what a client trusts).
    pub ca_pem: std::path::PathBuf,
    /// The server's certificate, signed by the CA, for `127.0.0.1` and `localhost`.
    pub cert_pem: std::path::PathBuf,
    /// The server's private key.
    pub key_pem: std::path::PathBuf,
}

impl TestCa {
    /// Makes the CA and the server certificate in `dir` (readable by Mosquitto's own user).
    pub fn create(dir: &std::path::Path) -> TestCa {
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=iomt test CA",
        ]);
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]);
        // Mosquitto started as root drops to its own user: let it read the files.
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
        for f in ["ca.pem", "server.pem", "server.key"] {
            let _ = std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o644));
        }
        TestCa {
            ca_pem: dir.join("ca.pem"),
            cert_pem: dir.join("server.pem"),
            key_pem: dir.join("server.key"),
        }
    }
}

impl Mosquitto {
    /// Starts a broker and waits until it accepts connections.
    pub fn start() -> Mosquitto {
        Self::start_with("")
    }

    /// Starts a broker with extra global config lines (`max_queued_messages 1000000`, ...). A
    /// line naming an option the defaults set (`persistence`, `max_queued_messages`,
    /// `max_inflight_messages`) replaces the default.
    pub fn start_with_config(lines: &str) -> Mosquitto {
        Self::start_full("", lines)
    }

    /// Starts a broker that only accepts `user` / `password`.
    pub fn start_with_password(user: &str, password: &str) -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("passwd");
        let status = Command::new("mosquitto_passwd")
            .args(["-c", "-b"])
            .arg(&file)
            .args([user, password])
            .status()
            .expect("mosquitto_passwd");
        assert!(status.success());
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755));
            let _ = std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644));
        }
        let mut m = Self::start_with(&format!(
            "password_file {}\nallow_anonymous false\n",
            file.display()
        ));
        m._extra = Some(dir);
        m
    }

    /// Starts a broker with a TLS listener using `ca`.
    pub fn start_tls(ca: &TestCa) -> Mosquitto {
        Self::start_with(&format!(
            "cafile {}\ncertfile {}\nkeyfile {}\n",
            ca.ca_pem.display(),
            ca.cert_pem.display(),
            ca.key_pem.display()
        ))
    }

    fn start_with(listener_extra: &str) -> Mosquitto {
        Self::start_full(listener_extra, "")
    }

    fn start_full(listener_extra: &str, global: &str) -> Mosquitto {
        let anon = if listener_extra.contains("allow_anonymous") {
            ""
        } else {
            "allow_anonymous true\n"
        };
        let dir = tempfile::tempdir().unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755));
        }
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        let option = |line: &str| line.split_whitespace().next().unwrap_or("").to_string();
        let given: Vec<String> = global.lines().map(option).collect();
        let defaults: String = [
            "persistence false",
            "max_queued_messages 1000000",
            "max_inflight_messages 100",
        ]
        .iter()
        .filter(|l| !given.contains(&option(l)))
        .map(|l| format!("{l}\n"))
        .collect();
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\n{listener_extra}{anon}{defaults}{global}\n\
                 log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n\
                 log_type information\nlog_type subscribe\n"
            ),
        )
        .unwrap();
        let exe = ["/usr/sbin/mosquitto", "mosquitto"]
            .into_iter()
            .find(|p| !p.contains('/') || std::path::Path::new(p).exists())
            .unwrap();
        // The log file is opened here (Mosquitto started as root drops to its own user, which
        // could not create it in this directory).
        let log = dir.path().join("mosquitto.log");
        let child = Command::new(exe)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start mosquitto (apt-get install mosquitto; bash .ci/run does)");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "mosquitto did not start:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Mosquitto {
            child,
            port,
            log,
            _dir: dir,
            _extra: None,
        }
    }

    /// The broker's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many times `client_id` has connected.
    pub fn connections_of(&self, client_id: &str) -> usize {
        let needle = format!(" as {client_id} (");
        self.log_text()
            .lines()
            .filter(|l| l.contains(&needle))
            .count()
    }

    /// Whether the broker dropped a client for missing its keep-alive, or dropped queued
    /// messages for one (its queue limits were reached): the lines the tests must not see.
    pub fn keep_alive_or_queue_trouble(&self) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| l.contains("exceeded timeout") || l.contains("are being dropped"))
            .map(str::to_string)
            .collect()
    }

    /// Waits (polling the log) until a line contains `needle`; panics after `within`.
    pub fn wait_for_log(&self, needle: &str, within: Duration) {
        let started = Instant::now();
        while !self.log_text().contains(needle) {
            assert!(
                started.elapsed() < within,
                "mosquitto never logged {needle:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- mosquitto log ---\n{}", self.log_text());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
