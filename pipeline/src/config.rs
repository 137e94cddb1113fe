//! The service configuration: one strict TOML file (`deny_unknown_fields`), every option
//! documented in `config/example.toml`. Secrets may come from the environment.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Mapping templates.
    pub templates: TemplatesConfig,
    /// The FHIR server.
    pub fhir: FhirConfig,
    /// Where events come from.
    pub source: SourceConfig,
    /// Batching and limits.
    #[serde(default)]
    pub pipeline: PipelineConfig,
    /// The dead-letter store.
    #[serde(default)]
    pub dead_letters: DeadLetterConfig,
    /// The durable spool between the source and the pipeline.
    #[serde(default)]
    pub spool: SpoolSection,
    /// The HTTP endpoint for metrics and health.
    #[serde(default)]
    pub http: HttpConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
}

/// `[templates]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplatesConfig {
    /// Device mapping (CollectionContent), relative to the config file.
    pub device_mapping: PathBuf,
    /// FHIR mapping (CollectionFhir), relative to the config file.
    pub fhir_mapping: PathBuf,
}

/// `[fhir]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FhirConfig {
    /// FHIR R4 base URL.
    pub url: String,
    /// `Create`, `Lookup` or `LookupWithEncounter`.
    #[serde(default)]
    pub resolution: fhir_writer::ResolutionMode,
    /// System of Device identifiers.
    #[serde(default)]
    pub device_identifier_system: Option<String>,
    /// Devices written in parallel.
    #[serde(default = "default_concurrency")]
    pub max_concurrency: usize,
    /// Write in FHIR `batch` Bundles (false: one request per read and write, as for a server
    /// without Bundle support; the writer also falls back by itself when the server refuses
    /// Bundles).
    #[serde(default = "default_bundles")]
    pub bundles: bool,
    /// Most entries in one Bundle (100–500 is what FHIR servers advise).
    #[serde(default = "default_bundle_size")]
    pub bundle_size: usize,
    /// Bundles in flight at once.
    #[serde(default = "default_bundle_concurrency")]
    pub bundle_concurrency: usize,
    /// Claim the R4 vital-signs profiles (`meta.profile`) on the vital-sign Observations
    /// written (check the mapping with `iomt validate --profile vital-signs` first).
    #[serde(default)]
    pub stamp_profiles: bool,
    /// Give up one request after this long of retries, in seconds (the batch is retried later).
    #[serde(default = "default_retry_deadline")]
    pub retry_deadline_secs: u64,
    /// Timeout of one request, in seconds.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_secs: u64,
    /// Authentication.
    #[serde(default)]
    pub auth: AuthConfig,
}

fn default_concurrency() -> usize {
    10
}
fn default_bundles() -> bool {
    true
}
fn default_bundle_size() -> usize {
    fhir_writer::DEFAULT_BUNDLE_SIZE
}
fn default_bundle_concurrency() -> usize {
    fhir_writer::DEFAULT_BUNDLE_CONCURRENCY
}
fn default_retry_deadline() -> u64 {
    60
}
fn default_request_timeout() -> u64 {
    30
}

/// `[fhir.auth]`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub enum AuthConfig {
    /// No authentication.
    #[default]
    None,
    /// A static bearer token from an environment variable.
    Bearer {
        /// Environment variable holding the token.
        token_env: String,
    },
    /// OAuth2 client credentials.
    ClientCredentials {
        /// Token endpoint.
        token_url: String,
        /// Client id.
        client_id: String,
        /// Environment variable holding the client secret.
        client_secret_env: String,
        /// `scope` (v2 endpoints).
        #[serde(default)]
        scope: Option<String>,
        /// `resource` (v1 endpoints).
        #[serde(default)]
        resource: Option<String>,
    },
    /// SMART Backend Services: client credentials with a signed JWT assertion
    /// (`private_key_jwt`, RS384 or ES384).
    SmartBackend {
        /// The client id registered with the authorization server.
        client_id: String,
        /// Token endpoint; omitted: discovered from `<fhir.url>/.well-known/smart-configuration`.
        #[serde(default)]
        token_url: Option<String>,
        /// PEM file of the private key (PKCS#8, or PKCS#1 for RSA); relative to the config.
        #[serde(default)]
        private_key_file: Option<PathBuf>,
        /// Or: environment variable holding the PEM.
        #[serde(default)]
        private_key_env: Option<String>,
        /// `RS384` or `ES384`.
        alg: String,
        /// The key id of the public key in the JWKS registered for the client.
        kid: String,
        /// Scopes, e.g. `["system/Observation.write", "system/Device.write", "system/Patient.read"]`.
        scopes: Vec<String>,
    },
}

impl AuthConfig {
    /// The SMART signing key, read from its file or variable and checked.
    fn smart_key(&self) -> Option<Result<fhir_writer::auth::smart::SigningKey, String>> {
        let AuthConfig::SmartBackend {
            private_key_file,
            private_key_env,
            alg,
            kid,
            ..
        } = self
        else {
            return None;
        };
        let pem = match (private_key_file, private_key_env) {
            (Some(f), None) => std::fs::read(f).map_err(|e| {
                format!("fhir.auth.private_key_file: {}: {e}", f.display())
            }),
            (None, Some(v)) => std::env::var(v).map(String::into_bytes).map_err(|_| {
                format!("fhir.auth.private_key_env: environment variable {v} is not set")
            }),
            _ => Err("fhir.auth: smart_backend needs exactly one of private_key_file and private_key_env".into()),
        };
        Some(pem.and_then(|pem| {
            let from = match (private_key_file, private_key_env) {
                (Some(f), _) => format!("private_key_file {}", f.display()),
                (_, Some(v)) => format!("private_key_env {v}"),
                _ => String::new(),
            };
            fhir_writer::auth::smart::SigningKey::from_pem(&pem, alg, kid)
                .map_err(|e| format!("fhir.auth ({from}): {e}"))
        }))
    }
}

/// `[source]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub enum SourceConfig {
    /// MQTT (`[source]` with `kind = "mqtt"` and the MQTT settings).
    Mqtt(sources::mqtt::MqttConfig),
    /// Azure Event Hubs (`[source]` with `kind = "event_hubs"` and the Event Hubs settings;
    /// sign-in by connection string, or Azure AD with a `[source.credential]` table).
    EventHubs(sources::event_hubs::EventHubsConfig),
}

/// `[pipeline]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Events buffered between the source and the pipeline, and between stages (in chunks of
    /// `chunk_events`): back-pressure beyond, never loss.
    #[serde(default = "default_channel")]
    pub channel_capacity: usize,
    /// Events normalized together by one worker.
    #[serde(default = "default_chunk")]
    pub chunk_events: usize,
    /// Normalization workers (0: one per core).
    #[serde(default)]
    pub normalize_workers: usize,
    /// A window's pending measurements are written at most this long after the first of them
    /// arrived, in milliseconds (MedTech waits about 5 minutes). Each window waits between 3/4
    /// of it and all of it, by a fixed offset per device and type, so that windows which open
    /// together (every device's hour begins in the same second) are written over a quarter of
    /// the interval instead of all at once.
    #[serde(default = "default_flush_interval")]
    pub flush_interval_ms: u64,
    /// Most measurements pending in all windows together; past it the oldest windows are
    /// written early (bounds memory).
    #[serde(default = "default_max_pending")]
    pub max_pending_measurements: usize,
    /// Larger event bodies are dead-lettered unparsed (bounds memory).
    #[serde(default = "default_max_event_bytes")]
    pub max_event_bytes: usize,
    /// On shutdown, give the last writes this long, in seconds; what is not written by then
    /// stays un-acknowledged (MQTT: in the spool) and is delivered again on the next start.
    #[serde(default = "default_drain")]
    pub shutdown_drain_secs: u64,
}

fn default_channel() -> usize {
    1000
}
fn default_chunk() -> usize {
    256
}
fn default_flush_interval() -> u64 {
    30_000
}
fn default_max_pending() -> usize {
    500_000
}
fn default_max_event_bytes() -> usize {
    1024 * 1024
}
fn default_drain() -> u64 {
    30
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            channel_capacity: default_channel(),
            chunk_events: default_chunk(),
            normalize_workers: 0,
            flush_interval_ms: default_flush_interval(),
            max_pending_measurements: default_max_pending(),
            max_event_bytes: default_max_event_bytes(),
            shutdown_drain_secs: default_drain(),
        }
    }
}

impl PipelineConfig {
    /// The flush interval.
    pub fn flush_interval(&self) -> Duration {
        Duration::from_millis(self.flush_interval_ms)
    }

    /// Normalization workers, resolved (at least one).
    pub fn workers(&self) -> usize {
        if self.normalize_workers > 0 {
            self.normalize_workers
        } else {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        }
    }
}

/// `[dead_letters]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterConfig {
    /// Directory of the dead-letter store, relative to the config file.
    #[serde(default = "default_dl_dir")]
    pub dir: PathBuf,
}

fn default_dl_dir() -> PathBuf {
    PathBuf::from("dead-letters")
}

impl Default for DeadLetterConfig {
    fn default() -> Self {
        DeadLetterConfig {
            dir: default_dl_dir(),
        }
    }
}

/// `[spool]`: the local on-disk log the MQTT source acknowledges into (see
/// `pipeline::spool`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolSection {
    /// Use the spool: default on for MQTT (PUBACK once the event is fsynced to the spool),
    /// off for Event Hubs (the partition checkpoint follows the FHIR writes instead).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// The spool's directory, relative to the config file; one per connector process.
    #[serde(default = "default_spool_dir")]
    pub dir: PathBuf,
    /// When the spool holds this many bytes, the source stops reading (back-pressure, never
    /// loss). Default 1 GiB.
    #[serde(default = "default_spool_max")]
    pub max_bytes: std::num::NonZeroU64,
    /// Segment size: the unit in which written events' space is given back. Default 64 MiB.
    #[serde(default = "default_spool_segment")]
    pub segment_bytes: std::num::NonZeroU64,
}

fn default_spool_dir() -> PathBuf {
    PathBuf::from("spool")
}
fn default_spool_max() -> std::num::NonZeroU64 {
    crate::spool::DEFAULT_MAX_BYTES
}
fn default_spool_segment() -> std::num::NonZeroU64 {
    crate::spool::DEFAULT_SEGMENT_BYTES
}

impl Default for SpoolSection {
    fn default() -> Self {
        SpoolSection {
            enabled: None,
            dir: default_spool_dir(),
            max_bytes: default_spool_max(),
            segment_bytes: default_spool_segment(),
        }
    }
}

impl Config {
    /// The spool's settings when the spool is in use for this source.
    pub fn spool(&self) -> Option<crate::spool::SpoolConfig> {
        let on = self
            .spool
            .enabled
            .unwrap_or(matches!(self.source, SourceConfig::Mqtt(_)));
        on.then(|| crate::spool::SpoolConfig {
            dir: self.spool.dir.clone(),
            max_bytes: self.spool.max_bytes,
            segment_bytes: self.spool.segment_bytes,
        })
    }
}

/// `[http]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of `/metrics`, `/healthz` and `/readyz`; empty to disable.
    #[serde(default = "default_listen")]
    pub listen: String,
}

fn default_listen() -> String {
    "127.0.0.1:9464".into()
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: default_listen(),
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    #[serde(default = "default_log_format")]
    pub format: String,
    /// A `tracing` filter, e.g. `info` or `iomt=debug` (`RUST_LOG` overrides it).
    #[serde(default = "default_log_level")]
    pub level: String,
}

fn default_log_format() -> String {
    "text".into()
}
fn default_log_level() -> String {
    "info".into()
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: default_log_format(),
            level: default_log_level(),
        }
    }
}

impl Config {
    /// Reads and parses a config file; relative paths become relative to its folder.
    pub fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Config::parse(&text, path.parent().unwrap_or(Path::new(".")))
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses config text (what [`Config::load`] reads from a file); relative paths become
    /// relative to `base`. The TOML error names line and column.
    pub fn parse(text: &str, base: &Path) -> Result<Config, String> {
        let mut c: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        for p in [
            &mut c.templates.device_mapping,
            &mut c.templates.fhir_mapping,
            &mut c.dead_letters.dir,
            &mut c.spool.dir,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let AuthConfig::SmartBackend {
            private_key_file: Some(p),
            ..
        } = &mut c.fhir.auth
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let SourceConfig::EventHubs(e) = &mut c.source {
            let p = &mut e.checkpoint_dir;
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(c)
    }

    /// Every problem with the settings (not the templates).
    pub fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if !(self.fhir.url.starts_with("http://") || self.fhir.url.starts_with("https://")) {
            errors.push(format!(
                "fhir.url: {:?} is not an http(s) URL",
                self.fhir.url
            ));
        }
        if self.fhir.max_concurrency == 0 {
            errors.push("fhir.max_concurrency: must be at least 1".into());
        }
        if self.fhir.bundle_size == 0 || self.fhir.bundle_size > 1000 {
            errors.push(format!(
                "fhir.bundle_size: {} is not between 1 and 1000",
                self.fhir.bundle_size
            ));
        }
        if self.fhir.bundle_concurrency == 0 {
            errors.push("fhir.bundle_concurrency: must be at least 1".into());
        }
        if self.pipeline.channel_capacity == 0 {
            errors.push("pipeline.channel_capacity: must be at least 1".into());
        }
        if self.pipeline.chunk_events == 0 {
            errors.push("pipeline.chunk_events: must be at least 1".into());
        }
        if self.pipeline.max_pending_measurements == 0 {
            errors.push("pipeline.max_pending_measurements: must be at least 1".into());
        }
        if self.log.format != "text" && self.log.format != "json" {
            errors.push(format!(
                "log.format: {:?} is neither \"text\" nor \"json\"",
                self.log.format
            ));
        }
        match &self.fhir.auth {
            AuthConfig::Bearer { token_env } if std::env::var(token_env).is_err() => {
                errors.push(format!(
                    "fhir.auth.token_env: environment variable {token_env} is not set"
                ));
            }
            AuthConfig::ClientCredentials {
                client_secret_env,
                scope,
                resource,
                ..
            } => {
                if std::env::var(client_secret_env).is_err() {
                    errors.push(format!("fhir.auth.client_secret_env: environment variable {client_secret_env} is not set"));
                }
                if scope.is_none() && resource.is_none() {
                    errors.push("fhir.auth: client_credentials needs scope or resource".into());
                }
            }
            AuthConfig::SmartBackend {
                scopes, token_url, ..
            } => {
                if let Some(Err(e)) = self.fhir.auth.smart_key() {
                    errors.push(e);
                }
                if scopes.is_empty() {
                    errors.push("fhir.auth.scopes: smart_backend needs at least one scope (e.g. \"system/Observation.write\")".into());
                }
                if let Some(u) = token_url {
                    if !(u.starts_with("http://") || u.starts_with("https://")) {
                        errors.push(format!("fhir.auth.token_url: {u:?} is not an http(s) URL"));
                    }
                }
            }
            _ => {}
        }
        match &self.source {
            SourceConfig::Mqtt(m) => errors.extend(m.validate()),
            SourceConfig::EventHubs(e) => errors.extend(e.validate()),
        }
        errors
    }

    /// The auth settings with secrets read from the environment (and the SMART key from its
    /// file). An error names the setting, never the secret.
    pub fn auth(&self) -> Result<fhir_writer::auth::Auth, String> {
        use fhir_writer::auth::{smart::SmartBackend, Auth, ClientCredentials};
        Ok(match &self.fhir.auth {
            AuthConfig::None => Auth::None,
            AuthConfig::Bearer { token_env } => {
                Auth::Bearer(std::env::var(token_env).unwrap_or_default())
            }
            AuthConfig::SmartBackend {
                client_id,
                token_url,
                scopes,
                ..
            } => Auth::SmartBackend(SmartBackend {
                client_id: client_id.clone(),
                token_url: token_url.clone(),
                key: self
                    .fhir
                    .auth
                    .smart_key()
                    .unwrap_or_else(|| Err("fhir.auth: not smart_backend".into()))?,
                scope: scopes.join(" "),
            }),
            AuthConfig::ClientCredentials {
                token_url,
                client_id,
                client_secret_env,
                scope,
                resource,
            } => Auth::ClientCredentials(ClientCredentials {
                token_url: token_url.clone(),
                client_id: client_id.clone(),
                client_secret: std::env::var(client_secret_env).unwrap_or_default(),
                scope: scope.clone(),
                resource: resource.clone(),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_resolves_relative_paths_against_the_base_and_keeps_absolute_ones() {
        let text = r#"
[templates]
device_mapping = "dm.json"
fhir_mapping = "/abs/fm.json"
[fhir]
url = "http://127.0.0.1:8080/fhir/R4"
[source]
kind = "mqtt"
host = "127.0.0.1"
port = 1883
client_id = "c"
topics = ["t"]
"#;
        let c = Config::parse(text, Path::new("/etc/iomt")).unwrap();
        assert_eq!(c.templates.device_mapping, Path::new("/etc/iomt/dm.json"));
        assert_eq!(c.templates.fhir_mapping, Path::new("/abs/fm.json"));
        assert_eq!(c.dead_letters.dir, Path::new("/etc/iomt/dead-letters"));
        assert!(c.validate().is_empty(), "{:?}", c.validate());
    }

    #[test]
    fn parse_reports_the_toml_error_with_its_line() {
        let e = Config::parse("[templates]\ndevice_mapping = 1\n", Path::new(".")).unwrap_err();
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn the_example_config_parses_and_validates() {
        let text = include_str!("../../config/example.toml");
        let c = Config::parse(text, Path::new("config")).unwrap();
        assert!(c.validate().is_empty(), "{:?}", c.validate());
    }

    fn smart_config(auth: &str, dir: &Path) -> Config {
        let text = format!(
            r#"
[templates]
device_mapping = "dm.json"
fhir_mapping = "fm.json"
[fhir]
url = "https://ehr.example/fhir/R4"
[fhir.auth]
kind = "smart_backend"
client_id = "iomt"
{auth}
[source]
kind = "mqtt"
host = "127.0.0.1"
port = 1883
client_id = "c"
topics = ["t"]
"#
        );
        Config::parse(&text, dir).unwrap()
    }

    #[test]
    fn smart_backend_keys_are_read_relative_to_the_config_and_checked() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fhir-writer/src/auth/testdata");
        let good = smart_config(
            "private_key_file = \"es384.pem\"\nalg = \"ES384\"\nkid = \"k1\"\nscopes = [\"system/Observation.write\"]",
            &dir,
        );
        assert!(good.validate().is_empty(), "{:?}", good.validate());
        match good.auth().unwrap() {
            fhir_writer::auth::Auth::SmartBackend(s) => {
                assert_eq!(s.scope, "system/Observation.write");
                assert_eq!(s.token_url, None, "discovered");
            }
            other => panic!("{other:?}"),
        }
        // A P-256 key for ES384, no scopes: both named, the key's path too, its bytes never.
        let bad = smart_config(
            "private_key_file = \"es256.pem\"\nalg = \"ES384\"\nkid = \"k1\"\nscopes = []",
            &dir,
        );
        let errors = bad.validate().join("\n");
        assert!(
            errors.contains("es256.pem") && errors.contains("cannot sign ES384"),
            "{errors}"
        );
        assert!(errors.contains("fhir.auth.scopes"), "{errors}");
        assert!(!errors.contains("MII"), "{errors}");
        let missing = smart_config(
            "private_key_env = \"IOMT_TEST_NO_SUCH_VARIABLE\"\nalg = \"RS384\"\nkid = \"k1\"\nscopes = [\"system/Observation.write\"]",
            &dir,
        );
        assert!(
            missing
                .validate()
                .join("\n")
                .contains("IOMT_TEST_NO_SUCH_VARIABLE is not set"),
            "{:?}",
            missing.validate()
        );
        assert!(missing.auth().is_err());
    }
}
