//! The example config's commented Event Hubs blocks (connection string, Azure AD), uncommented,
//! validate; what is missing is named.

use super::*;

/// `config/example.toml` with its MQTT `[source]` block replaced by the commented Event Hubs
/// block, uncommented. `edit` sees the block's lines first, still commented: lines it leaves
/// commented twice (`# # ...`) stay out.
fn example_with_event_hubs(edit: impl Fn(Vec<String>) -> Vec<String>) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = std::fs::read_to_string(root.join("config/example.toml")).unwrap();
    let start = example.find("# [source]\n# kind = \"event_hubs\"").unwrap();
    let end = start + example[start..].find("\n\n").unwrap();
    let block: String = edit(example[start..end].lines().map(String::from).collect())
        .iter()
        .filter(|l| !l.starts_with("# #"))
        .map(|l| l.strip_prefix("# ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let mqtt_start = example.find("[source]\n").unwrap();
    format!("{}{}\n\n{}", &example[..mqtt_start], block, &example[end..])
        .replace("\"../templates", &format!("\"{}/templates", root.display()))
}

/// Turns on the example's optional Azure AD lines: `fully_qualified_namespace` and the
/// `[source.credential]` table of `kind` (its key lines, not the prose around them).
fn with_credential(lines: Vec<String>, kind: &str) -> Vec<String> {
    let is_key = |l: &str| {
        l.strip_prefix("# # ").is_some_and(|rest| {
            rest.starts_with('[')
                || rest
                    .split_once(" = ")
                    .is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        })
    };
    let table = lines
        .windows(2)
        .position(|w| w[0] == "# # [source.credential]" && w[1] == format!("# # kind = \"{kind}\""))
        .unwrap_or_else(|| panic!("no {kind} credential in the example"));
    let mut in_table = false;
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            if i == table {
                in_table = true;
            } else if in_table && !is_key(l) {
                in_table = false;
            }
            if in_table || l.starts_with("# # fully_qualified_namespace = ") {
                l.replacen("# # ", "# ", 1)
            } else {
                l.clone()
            }
        })
        .collect()
}

/// `iomt validate` of `text` with `env` set (and the other sign-in variables unset): the exit
/// code and what it printed.
fn validate_config(text: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("eh.toml");
    std::fs::write(&config, text).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_iomt"));
    command.args(["validate", "--config"]).arg(&config);
    for k in [
        "IOMT_EVENTHUBS_CONNECTION_STRING",
        "IOMT_EVENTHUBS_CLIENT_SECRET",
        "IDENTITY_ENDPOINT",
        "IDENTITY_HEADER",
    ] {
        command.env_remove(k);
    }
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The example config's commented Event Hubs `[source]` block, uncommented in place of the
/// MQTT one, is valid; without its connection string variable, `validate` says so.
#[test]
fn example_event_hubs_source_validates() {
    let text = example_with_event_hubs(|lines| lines);
    let cs = "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=a2V5";
    let (code, out) = validate_config(&text, &[("IOMT_EVENTHUBS_CONNECTION_STRING", cs)]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = validate_config(&text, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("IOMT_EVENTHUBS_CONNECTION_STRING is not set"),
        "{out}"
    );
}

/// The example's Azure AD variants (connection string left out; namespace and a
/// `[source.credential]` table in): the client secret one validates with its secret variable
/// set and names the variable without it; the managed identity one validates as it is; a
/// connection string together with a credential is refused.
#[test]
fn example_event_hubs_azure_ad_sources_validate() {
    let without_cs = |lines: Vec<String>| -> Vec<String> {
        lines
            .into_iter()
            .filter(|l| !l.starts_with("# connection_string_env = "))
            .collect()
    };
    let secret = example_with_event_hubs(|l| with_credential(without_cs(l), "client_secret"));
    assert!(
        secret.contains("\n[source.credential]\nkind = \"client_secret\"\n"),
        "{secret}"
    );
    let (code, out) = validate_config(&secret, &[("IOMT_EVENTHUBS_CLIENT_SECRET", "s3cret")]);
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains("s3cret"), "{out}");
    let (code, out) = validate_config(&secret, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("source.credential.client_secret_env: environment variable IOMT_EVENTHUBS_CLIENT_SECRET is not set"),
        "{out}"
    );

    let identity = example_with_event_hubs(|l| with_credential(without_cs(l), "managed_identity"));
    assert!(
        identity.contains("\nkind = \"managed_identity\"\n"),
        "{identity}"
    );
    let (code, out) = validate_config(&identity, &[]);
    assert_eq!(code, Some(0), "{out}");

    let both = example_with_event_hubs(|l| with_credential(l, "managed_identity"));
    let cs = "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=a2V5";
    let (code, out) = validate_config(&both, &[("IOMT_EVENTHUBS_CONNECTION_STRING", cs)]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("source.credential: give either connection_string_env"),
        "{out}"
    );
    assert!(
        !out.contains("source.fully_qualified_namespace: only used with [source.credential]"),
        "one error for one mistake: {out}"
    );
}
