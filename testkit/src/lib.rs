//! What the workspace's tests share: the peers they start, the fakes they use where no real
//! peer can run here or a fault must come on cue, and fixtures. A dev-dependency only
//! (`publish = false`).
//!
//! Real peers by default: a Debian Mosquitto ([`mqtt::Mosquitto`]), a third-party FHIR
//! server ([`fhir::FhirServer`], Medplum's FHIR router) and an OAuth 2.0 authorization server
//! ([`oidc::OidcProvider`], oidc-provider), each on a free loopback port. The
//! fakes, each saying in its doc comment why it is one:
//! - [`fhir::FaultProxy`]: HTTP in front of the real FHIR server, answering 429/503/412 or
//!   dropping connections on cue (fault injection);
//! - [`fhir::Forwarder`]: TCP in front of the real FHIR server that can be switched off (an
//!   outage that keeps the server's in-memory data);
//! - [`event_hubs::EventHubsEmulator`] and [`event_hubs::TokenEndpoint`]: no Event Hubs and no
//!   Entra ID can run here (no cloud).
//!
//! | module | feature | what |
//! |---|---|---|
//! | [`conformance`] | | the reference's normalization cases (`conformance/iomt-fhir/cases.json`) |
//! | [`connector`] | | `iomt run` as a child process: ready check, metrics, signals, memory |
//! | [`vitals`] | | readings of many kinds from many devices, and one `iomt replay` of them |
//! | [`fhir`] | `fhir` | the test FHIR server, FHIR state comparison, the fault proxy, the forwarder |
//! | [`heart_rate`] | `fhir` | an hour of heart rate per device and the Observations it must become |
//! | [`writer`] | `writer` | the FHIR writer's fixtures: mappings, normalized events, 1 Hz heart rate |
//! | [`mqtt`] | `mqtt` | Mosquitto, a test CA, publishers |
//! | [`event_hubs`] | `event-hubs` | the Event Hubs emulator and the Entra ID token endpoint |
//! | [`oidc`] | `oidc` | a real OAuth 2.0 authorization server (oidc-provider), test keys |
//! | [`oidc_users`] | `oidc` | that provider signing people in (authorization code, PKCE) |
//!
//! A crate's tests enable only the features they use, so that `cargo test -p normalizer` does
//! not build an AMQP stack. A crate may dev-depend on testkit although testkit depends on it
//! (`writer` uses `fhir-writer` and `normalizer`): its integration tests and testkit link the
//! same library.
//!
//! Files of the repository (the Node FHIR server in `tests/fhir-server`, `templates/`,
//! `conformance/`) are found from [`workspace_root`], whichever crate's tests run.
//!
//! ```
//! use testkit::connector::metric;
//!
//! let text = "# TYPE iomt_errors_total counter\n\
//!             iomt_errors_total{error_type=\"A\"} 2\n\
//!             iomt_errors_total{error_type=\"B\"} 3\n\
//!             iomt_errors_total_other 7\n";
//! assert_eq!(metric(text, "iomt_errors_total"), 5.0);
//! assert_eq!(metric(text, "iomt_missing_total"), 0.0);
//! ```
#![deny(missing_docs)]

use std::path::{Path, PathBuf};

pub mod conformance;
pub mod connector;
#[cfg(feature = "event-hubs")]
pub mod event_hubs;
#[cfg(feature = "fhir")]
pub mod fhir;
#[cfg(feature = "fhir")]
pub mod heart_rate;
#[cfg(feature = "mqtt")]
pub mod mqtt;
#[cfg(feature = "oidc")]
pub mod oidc;
#[cfg(feature = "oidc")]
pub mod oidc_users;
pub mod vitals;
#[cfg(feature = "writer")]
pub mod writer;

/// The workspace's root directory (the repository checkout).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit/ lies in the workspace root")
        .to_path_buf()
}

/// A free loopback port (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Installs a test peer's pinned npm packages (`npm ci` in `dir`, from its package-lock.json)
/// when `dir/node_modules/<probe>` is missing: the first run on a fresh checkout.
pub fn npm_ci_once(dir: &Path, probe: &str) {
    if dir.join("node_modules").join(probe).is_dir() {
        return;
    }
    let status = std::process::Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(dir)
        .status()
        .expect("run npm (Node.js 20 and npm are needed for the tests' Node peers)");
    assert!(status.success(), "`npm ci` in {} failed", dir.display());
}

/// `iomt <command>` on a template set's mappings (`<set>/devicecontent.json` and
/// `<set>/fhirmapping.json`) and, if given, an events file: how the tests run `map`, `replay`
/// and `validate` over a set. `iomt` is the binary (`env!("CARGO_BIN_EXE_iomt")`).
pub fn set_command(
    iomt: impl AsRef<std::ffi::OsStr>,
    command: &str,
    set: &Path,
    events: Option<&Path>,
) -> std::process::Command {
    let mut c = std::process::Command::new(iomt);
    c.arg(command)
        .arg("--device-mapping")
        .arg(set.join("devicecontent.json"))
        .arg("--fhir-mapping")
        .arg(set.join("fhirmapping.json"));
    if let Some(events) = events {
        c.arg("--events").arg(events);
    }
    c
}

/// The template sets of `templates/` that come with events (`events.json`), sorted.
pub fn template_sets() -> Vec<PathBuf> {
    let mut sets: Vec<PathBuf> = std::fs::read_dir(workspace_root().join("templates"))
        .expect("templates/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("events.json").is_file())
        .collect();
    sets.sort();
    sets
}
