//! The `[source]` settings of the Event Hubs source, and their compilation into a checked
//! [`Connection`] with the secrets read from the environment.

use std::path::PathBuf;

use serde::Deserialize;

use super::credential::{self, CredentialSettings, ManagedIdentityEndpoint};

/// Where a partition without a checkpoint starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StartFrom {
    /// The oldest event the hub retains (nothing sent before the first start is missed).
    #[default]
    Earliest,
    /// Only events enqueued after the partition is opened.
    Latest,
}

/// How an instance claims partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancing {
    /// Claim every partition this instance may own in one go (faster start).
    #[default]
    Greedy,
    /// Claim one partition per load-balancing cycle.
    Balanced,
}

/// Event Hubs source settings (the `[source]` table with `kind = "event_hubs"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventHubsConfig {
    /// Shared access key sign-in: name of the environment variable holding the connection
    /// string (`Endpoint=sb://<namespace>/;SharedAccessKeyName=...;SharedAccessKey=...[;EntityPath=<hub>]`).
    /// Leave out with `credential`.
    #[serde(default)]
    pub connection_string_env: Option<String>,
    /// Namespace host name, e.g. `<namespace>.servicebus.windows.net`; needed with `credential`
    /// (a connection string names its namespace itself).
    #[serde(default)]
    pub fully_qualified_namespace: Option<String>,
    /// Event hub name; needed with `credential`, and with a connection string that has no
    /// `EntityPath`.
    #[serde(default)]
    pub event_hub: Option<String>,
    /// Microsoft Entra ID (Azure AD) sign-in instead of a connection string: the
    /// `[source.credential]` table, `kind = "client_secret"` or `"managed_identity"`.
    #[serde(default)]
    pub credential: Option<CredentialConfig>,
    /// Consumer group.
    #[serde(default = "default_consumer_group")]
    pub consumer_group: String,
    /// Connect to this address instead of the namespace host, e.g. `amqps://10.0.0.4:5671` behind
    /// a private endpoint or proxy (`amqp://host:port` is plain TCP). The namespace of the
    /// connection string still names the hub (and keys the checkpoints).
    #[serde(default)]
    pub custom_endpoint: Option<String>,
    /// Directory of the checkpoint store (ownership and checkpoint JSON files), relative to the
    /// config file. Instances that split a hub's partitions must share it.
    pub checkpoint_dir: PathBuf,
    /// This instance's owner id in the ownership records; fixed, so that a restarted instance
    /// takes its partitions back at once. Distinct per instance.
    pub owner_id: String,
    /// Where a partition without a checkpoint starts: `"earliest"` or `"latest"`.
    #[serde(default)]
    pub start_position: StartFrom,
    /// Events the client prefetches per partition (AMQP link credit).
    #[serde(default = "default_prefetch")]
    pub prefetch: u32,
    /// Most events one partition may have handed to the pipeline and not yet acknowledged; the
    /// partition's reader waits when it is reached (bounds redelivery after a crash). An event
    /// is acknowledged once its window is written, up to `pipeline.flush_interval_ms` later, so
    /// this must hold a partition's events for a whole flush interval or it caps throughput at
    /// this many events per interval; the pipeline's `max_pending_measurements` bounds memory.
    #[serde(default = "default_max_unacked")]
    pub max_unacked_per_partition: usize,
    /// `"greedy"` or `"balanced"` partition claiming.
    #[serde(default)]
    pub load_balancing: LoadBalancing,
    /// Seconds between load-balancing cycles (ownership renewal, claiming partitions).
    #[serde(default = "default_lb_interval")]
    pub load_balancing_interval_secs: u64,
    /// Seconds after which an ownership that was not renewed may be claimed by another
    /// instance (a crashed instance's partitions move after this long). Must be larger than
    /// `load_balancing_interval_secs`.
    #[serde(default = "default_ownership_expiry")]
    pub ownership_expiry_secs: u64,
}

/// Microsoft Entra ID (Azure AD) sign-in (`[source.credential]`). The token is for
/// `https://eventhubs.azure.net/.default`; the identity needs a data role on the hub or
/// namespace (Azure Event Hubs Data Receiver).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub enum CredentialConfig {
    /// An app registration (service principal) with a client secret.
    ClientSecret {
        /// Directory (tenant) id, or a domain such as `contoso.onmicrosoft.com`.
        #[serde(default)]
        tenant_id: Option<String>,
        /// Application (client) id.
        #[serde(default)]
        client_id: Option<String>,
        /// Name of the environment variable holding the client secret (the secret itself is
        /// never in the file, nor in logs or errors).
        #[serde(default)]
        client_secret_env: Option<String>,
        /// Entra ID authority (another cloud, e.g. `https://login.microsoftonline.us`).
        #[serde(default = "default_authority_host")]
        authority_host: String,
    },
    /// The host's managed identity: the instance metadata service, or `IDENTITY_ENDPOINT` and
    /// `IDENTITY_HEADER` where App Service / Container Apps set them.
    ManagedIdentity {
        /// Client id of a user-assigned identity; leave out for the system-assigned one.
        #[serde(default)]
        client_id: Option<String>,
        /// Token endpoint spoken to with the instance metadata service protocol, instead of
        /// `IDENTITY_ENDPOINT` or `http://169.254.169.254/metadata/identity/oauth2/token`.
        #[serde(default)]
        endpoint: Option<String>,
    },
}

fn default_authority_host() -> String {
    credential::DEFAULT_AUTHORITY_HOST.into()
}

/// Where the source connects and how it signs in: [`EventHubsConfig`] checked, with the
/// secrets read from the environment (`Debug` redacts them).
#[derive(Debug, Clone)]
pub struct Connection {
    /// Namespace host name (keys the checkpoints with the hub and consumer group).
    pub namespace: String,
    /// Event hub name.
    pub event_hub: String,
    /// How to sign in.
    pub auth: Auth,
}

/// How the source signs in to Event Hubs.
#[derive(Debug, Clone)]
pub enum Auth {
    /// A shared access key connection string.
    ConnectionString(azure_core::credentials::Secret),
    /// Microsoft Entra ID tokens ([`credential::EntraCredential`]).
    Entra(CredentialSettings),
}

fn is_http_url(s: &str) -> bool {
    (s.starts_with("https://") || s.starts_with("http://")) && s.len() > "https://".len()
}

fn default_consumer_group() -> String {
    "$Default".into()
}
fn default_prefetch() -> u32 {
    300
}
fn default_max_unacked() -> usize {
    100_000
}
fn default_lb_interval() -> u64 {
    10
}
fn default_ownership_expiry() -> u64 {
    60
}

impl EventHubsConfig {
    /// Where to connect and how to sign in, with the secrets read from the environment; or
    /// every problem with those settings.
    pub fn connection(&self) -> Result<Connection, Vec<String>> {
        self.connection_with_env(|name| std::env::var(name).ok())
    }

    /// [`Self::connection`] with the environment given (tests).
    pub fn connection_with_env(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Connection, Vec<String>> {
        match (&self.connection_string_env, &self.credential) {
            (Some(_), Some(_)) => Err(vec![
                "source.credential: give either connection_string_env (a shared access key connection string) or [source.credential] (Azure AD), not both".into(),
            ]),
            (None, None) => Err(vec![
                "source: no sign-in: set connection_string_env (a shared access key connection string) or add a [source.credential] table (Azure AD)".into(),
            ]),
            (Some(cs_env), None) => self.connection_string(cs_env, &env),
            (None, Some(credential)) => self.entra(credential, &env),
        }
    }

    fn connection_string(
        &self,
        cs_env: &str,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<Connection, Vec<String>> {
        let mut errors = Vec::new();
        if self.fully_qualified_namespace.is_some() {
            errors.push("source.fully_qualified_namespace: only used with [source.credential]; the connection string names the namespace".into());
        }
        let Some(cs) = env(cs_env) else {
            errors.push(format!(
                "source.connection_string_env: environment variable {cs_env} is not set"
            ));
            return Err(errors);
        };
        let parsed = match cs.parse::<azure_messaging_eventhubs::ConnectionString>() {
            Ok(p) => p,
            Err(e) => {
                errors.push(format!(
                    "source.connection_string_env: {cs_env} does not hold a valid connection string: {e}"
                ));
                return Err(errors);
            }
        };
        let hub = match (&self.event_hub, &parsed.entity_path) {
            (Some(h), Some(p)) if h != p => {
                errors.push(format!(
                    "source.event_hub: {h:?} differs from the connection string's EntityPath {p:?}"
                ));
                None
            }
            (Some(h), _) => Some(h.clone()),
            (None, Some(p)) => Some(p.clone()),
            (None, None) => {
                errors.push(
                    "source.event_hub: needed when the connection string has no EntityPath".into(),
                );
                None
            }
        };
        match hub {
            Some(hub) if errors.is_empty() => Ok(Connection {
                namespace: parsed.fully_qualified_namespace.clone(),
                event_hub: hub,
                auth: Auth::ConnectionString(azure_core::credentials::Secret::new(cs)),
            }),
            _ => Err(errors),
        }
    }

    fn entra(
        &self,
        credential: &CredentialConfig,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<Connection, Vec<String>> {
        let mut errors = Vec::new();
        let namespace = match self.fully_qualified_namespace.as_deref().map(str::trim) {
            None | Some("") => {
                errors.push("source.fully_qualified_namespace: needed with [source.credential], e.g. \"<namespace>.servicebus.windows.net\"".into());
                None
            }
            Some(ns)
                if ns.contains("://") || ns.contains('/') || ns.contains(char::is_whitespace) =>
            {
                errors.push(format!("source.fully_qualified_namespace: {ns:?} is not a host name; write \"<namespace>.servicebus.windows.net\", without sb:// or a path"));
                None
            }
            Some(ns) => Some(ns.to_string()),
        };
        let hub = match self.event_hub.as_deref().map(str::trim) {
            None | Some("") => {
                errors.push("source.event_hub: needed with [source.credential]".into());
                None
            }
            Some(h) => Some(h.to_string()),
        };
        let settings = match credential {
            CredentialConfig::ClientSecret {
                tenant_id,
                client_id,
                client_secret_env,
                authority_host,
            } => {
                let mut required = |value: &Option<String>, key: &str, what: &str| match value
                    .as_deref()
                    .map(str::trim)
                {
                    None | Some("") => {
                        errors.push(format!(
                            "source.credential.{key}: needed for kind = \"client_secret\" ({what})"
                        ));
                        None
                    }
                    Some(v) => Some(v.to_string()),
                };
                let tenant = required(tenant_id, "tenant_id", "the directory (tenant) id");
                let client = required(client_id, "client_id", "the application (client) id");
                let secret_env = required(
                    client_secret_env,
                    "client_secret_env",
                    "the name of the environment variable holding the client secret",
                );
                if let Some(t) = &tenant {
                    if !t
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
                    {
                        errors.push(format!("source.credential.tenant_id: {t:?} is not a tenant id (a GUID, or a domain such as contoso.onmicrosoft.com)"));
                    }
                }
                if !is_http_url(authority_host) {
                    errors.push(format!(
                        "source.credential.authority_host: {authority_host:?} is not an http(s) URL"
                    ));
                }
                let secret = secret_env.as_ref().and_then(|name| match env(name) {
                    None => {
                        errors.push(format!(
                            "source.credential.client_secret_env: environment variable {name} is not set"
                        ));
                        None
                    }
                    Some(v) if v.trim().is_empty() => {
                        errors.push(format!(
                            "source.credential.client_secret_env: environment variable {name} is empty"
                        ));
                        None
                    }
                    Some(v) => Some(v),
                });
                match (tenant, client, secret) {
                    (Some(tenant_id), Some(client_id), Some(secret)) => {
                        Some(CredentialSettings::ClientSecret {
                            authority_host: authority_host.trim_end_matches('/').to_string(),
                            tenant_id,
                            client_id,
                            client_secret: azure_core::credentials::Secret::new(secret),
                        })
                    }
                    _ => None,
                }
            }
            CredentialConfig::ManagedIdentity {
                client_id,
                endpoint,
            } => {
                if client_id.as_deref().is_some_and(|c| c.trim().is_empty()) {
                    errors.push("source.credential.client_id: must not be empty (leave it out for the system-assigned identity)".into());
                }
                if let Some(e) = endpoint {
                    if !is_http_url(e) {
                        errors.push(format!(
                            "source.credential.endpoint: {e:?} is not an http(s) URL"
                        ));
                    }
                }
                match ManagedIdentityEndpoint::select(endpoint.as_deref(), |k| env(k)) {
                    Ok(endpoint) => Some(CredentialSettings::ManagedIdentity {
                        client_id: client_id.clone(),
                        endpoint,
                    }),
                    Err(e) => {
                        errors.push(format!("source.credential: {e}"));
                        None
                    }
                }
            }
        };
        match (namespace, hub, settings) {
            (Some(namespace), Some(event_hub), Some(settings)) if errors.is_empty() => {
                Ok(Connection {
                    namespace,
                    event_hub,
                    auth: Auth::Entra(settings),
                })
            }
            _ => Err(errors),
        }
    }

    /// Checks the settings, reporting every problem.
    pub fn validate(&self) -> Vec<String> {
        let mut errors = self.connection().err().unwrap_or_default();
        if self.consumer_group.trim().is_empty() {
            errors.push("source.consumer_group: must not be empty".into());
        }
        if self.owner_id.trim().is_empty() {
            errors.push("source.owner_id: a fixed, per-instance owner id is needed".into());
        }
        if let Some(e) = &self.custom_endpoint {
            if !(e.starts_with("amqp://") || e.starts_with("amqps://")) {
                errors.push(format!(
                    "source.custom_endpoint: {e:?} is not an amqp:// or amqps:// URL"
                ));
            }
        }
        if self.prefetch == 0 {
            errors.push("source.prefetch: must be at least 1".into());
        }
        if self.max_unacked_per_partition == 0 {
            errors.push("source.max_unacked_per_partition: must be at least 1".into());
        }
        if self.load_balancing_interval_secs == 0 {
            errors.push("source.load_balancing_interval_secs: must be at least 1".into());
        }
        if self.ownership_expiry_secs <= self.load_balancing_interval_secs {
            errors.push(
                "source.ownership_expiry_secs: must be larger than load_balancing_interval_secs"
                    .into(),
            );
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    use serde_json::{json, Value};

    fn config(fields: Value) -> EventHubsConfig {
        let mut c = json!({"checkpoint_dir": "checkpoints", "owner_id": "instance-1"});
        for (k, v) in fields.as_object().unwrap() {
            c[k] = v.clone();
        }
        serde_json::from_value(c).unwrap()
    }

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| vars.get(k).cloned()
    }

    fn errors(c: &EventHubsConfig, vars: &[(&str, &str)]) -> Vec<String> {
        c.connection_with_env(env(vars)).err().unwrap_or_default()
    }

    const CS: &str =
        "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=a2V5;EntityPath=hub";

    #[test]
    fn a_connection_string_names_namespace_and_hub() {
        let c = config(json!({"connection_string_env": "CS"}));
        let conn = c.connection_with_env(env(&[("CS", CS)])).unwrap();
        assert_eq!(conn.namespace, "ns.servicebus.windows.net");
        assert_eq!(conn.event_hub, "hub");
        assert!(matches!(conn.auth, Auth::ConnectionString(_)));
        assert!(!format!("{conn:?}").contains("a2V5"));
        assert_eq!(
            errors(&c, &[]),
            ["source.connection_string_env: environment variable CS is not set"]
        );
        let c = config(json!({"connection_string_env": "CS", "event_hub": "other",
            "fully_qualified_namespace": "ns.servicebus.windows.net"}));
        assert_eq!(
            errors(&c, &[("CS", CS)]),
            [
                "source.fully_qualified_namespace: only used with [source.credential]; the connection string names the namespace",
                "source.event_hub: \"other\" differs from the connection string's EntityPath \"hub\"",
            ]
        );
    }

    #[test]
    fn sign_in_is_a_connection_string_or_a_credential_never_both_nor_neither() {
        let both = config(json!({"connection_string_env": "CS",
            "fully_qualified_namespace": "ns.servicebus.windows.net", "event_hub": "hub",
            "credential": {"kind": "managed_identity"}}));
        let e = errors(&both, &[("CS", CS)]);
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("source.credential: give either connection_string_env"),
            "{e:?}"
        );
        let neither = config(json!({"event_hub": "hub"}));
        let e = errors(&neither, &[]);
        assert!(
            e[0].starts_with("source: no sign-in: set connection_string_env"),
            "{e:?}"
        );
        // validate() reports them with the other settings' problems.
        let mut bad = neither.clone();
        bad.prefetch = 0;
        let all = bad.validate();
        assert!(
            all.iter().any(|e| e.starts_with("source: no sign-in")),
            "{all:?}"
        );
        assert!(
            all.contains(&"source.prefetch: must be at least 1".to_string()),
            "{all:?}"
        );
    }

    #[test]
    fn a_client_secret_credential_reports_every_missing_key() {
        let c = config(json!({"credential": {"kind": "client_secret"}}));
        assert_eq!(
            errors(&c, &[]),
            [
                "source.fully_qualified_namespace: needed with [source.credential], e.g. \"<namespace>.servicebus.windows.net\"",
                "source.event_hub: needed with [source.credential]",
                "source.credential.tenant_id: needed for kind = \"client_secret\" (the directory (tenant) id)",
                "source.credential.client_id: needed for kind = \"client_secret\" (the application (client) id)",
                "source.credential.client_secret_env: needed for kind = \"client_secret\" (the name of the environment variable holding the client secret)",
            ]
        );
        let c = config(
            json!({"fully_qualified_namespace": "sb://ns.servicebus.windows.net/",
            "event_hub": "hub",
            "credential": {"kind": "client_secret", "tenant_id": "a/b", "client_id": "app",
                "client_secret_env": "SECRET", "authority_host": "login.example"}}),
        );
        assert_eq!(
            errors(&c, &[]),
            [
                "source.fully_qualified_namespace: \"sb://ns.servicebus.windows.net/\" is not a host name; write \"<namespace>.servicebus.windows.net\", without sb:// or a path",
                "source.credential.tenant_id: \"a/b\" is not a tenant id (a GUID, or a domain such as contoso.onmicrosoft.com)",
                "source.credential.authority_host: \"login.example\" is not an http(s) URL",
                "source.credential.client_secret_env: environment variable SECRET is not set",
            ]
        );
        assert_eq!(
            errors(&c, &[("SECRET", "  ")])[3],
            "source.credential.client_secret_env: environment variable SECRET is empty"
        );
    }

    #[test]
    fn a_client_secret_credential_compiles_with_the_secret_from_the_environment() {
        let c = config(
            json!({"fully_qualified_namespace": "ns.servicebus.windows.net",
            "event_hub": "hub",
            "credential": {"kind": "client_secret", "tenant_id": "contoso.onmicrosoft.com",
                "client_id": "app", "client_secret_env": "SECRET"}}),
        );
        let conn = c
            .connection_with_env(env(&[("SECRET", "very-secret-value")]))
            .unwrap();
        assert_eq!(conn.namespace, "ns.servicebus.windows.net");
        assert_eq!(conn.event_hub, "hub");
        match &conn.auth {
            Auth::Entra(CredentialSettings::ClientSecret {
                authority_host,
                tenant_id,
                client_id,
                client_secret,
            }) => {
                assert_eq!(authority_host, "https://login.microsoftonline.com");
                assert_eq!(tenant_id, "contoso.onmicrosoft.com");
                assert_eq!(client_id, "app");
                assert_eq!(client_secret.secret(), "very-secret-value");
            }
            other => panic!("{other:?}"),
        }
        assert!(!format!("{conn:?} {c:?}").contains("very-secret-value"));
    }

    #[test]
    fn a_managed_identity_credential_picks_its_endpoint_and_checks_it() {
        let c = config(
            json!({"fully_qualified_namespace": "ns.servicebus.windows.net",
            "event_hub": "hub", "credential": {"kind": "managed_identity"}}),
        );
        let conn = c.connection_with_env(env(&[])).unwrap();
        assert!(matches!(
            conn.auth,
            Auth::Entra(CredentialSettings::ManagedIdentity {
                client_id: None,
                endpoint: ManagedIdentityEndpoint::Imds(ref u),
            }) if u == credential::DEFAULT_IMDS_ENDPOINT
        ));
        let conn = c
            .connection_with_env(env(&[
                ("IDENTITY_ENDPOINT", "http://localhost:4141/msi/token"),
                ("IDENTITY_HEADER", "hdr"),
            ]))
            .unwrap();
        assert!(matches!(
            conn.auth,
            Auth::Entra(CredentialSettings::ManagedIdentity {
                endpoint: ManagedIdentityEndpoint::AppService { .. },
                ..
            })
        ));
        assert_eq!(
            errors(&c, &[("IDENTITY_ENDPOINT", "http://localhost:4141/msi/token")]),
            ["source.credential: IDENTITY_ENDPOINT is set but IDENTITY_HEADER is not (Azure Arc's managed identity is not supported); set source.credential.endpoint to use the instance metadata service"]
        );
        let c = config(
            json!({"fully_qualified_namespace": "ns.servicebus.windows.net",
            "event_hub": "hub",
            "credential": {"kind": "managed_identity", "client_id": "", "endpoint": "169.254.169.254"}}),
        );
        assert_eq!(
            errors(&c, &[]),
            [
                "source.credential.client_id: must not be empty (leave it out for the system-assigned identity)",
                "source.credential.endpoint: \"169.254.169.254\" is not an http(s) URL",
            ]
        );
    }

    #[test]
    fn unknown_credential_keys_and_kinds_are_refused() {
        let bad_key = serde_json::from_value::<EventHubsConfig>(json!({
            "checkpoint_dir": "c", "owner_id": "o",
            "credential": {"kind": "client_secret", "client_secret": "inline"}}));
        assert!(bad_key
            .unwrap_err()
            .to_string()
            .contains("unknown field `client_secret`"));
        let bad_kind = serde_json::from_value::<EventHubsConfig>(json!({
            "checkpoint_dir": "c", "owner_id": "o", "credential": {"kind": "certificate"}}));
        assert!(bad_kind
            .unwrap_err()
            .to_string()
            .contains("unknown variant `certificate`"));
    }
}
