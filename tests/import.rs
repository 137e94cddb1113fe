//! `iomt import medtech` on real public MedTech deployment files (copies in
//! `tests/data/import/`, provenance and licences in its README):
//!
//! - `quickstart-iotconnectors/`: Azure/azure-quickstart-templates,
//!   `quickstarts/microsoft.healthcareapis/workspaces/iotconnectors/azuredeploy.json` and
//!   `azuredeploy.parameters.json` (MIT): an ARM template whose names, Event Hub namespace and
//!   FHIR service id are expressions over a parameter without a default;
//! - `rest-api-examples/`: Azure/azure-rest-api-specs, `specification/healthcareapis/
//!   resource-manager/Microsoft.HealthcareApis/stable/2022-06-01/examples/iotconnectors/
//!   iotconnector_Create.json` and `iotconnector_fhirdestination_Create.json` (MIT), the
//!   `200` response bodies: the REST / `az … show` resources, mappings as inline objects;
//! - `json-string-content/` and `nested-deployment/`: derived from the REST examples (the
//!   same mappings as JSON-encoded strings; inside a nested `Microsoft.Resources/deployments`).
//!
//! No peer is involved: the command reads files and writes files.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/import")
        .join(rel)
}

fn iomt(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_iomt"))
        .args(args)
        .output()
        .expect("run iomt");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn config(dir: &Path) -> toml::Value {
    toml::from_str(&std::fs::read_to_string(dir.join("config.toml")).unwrap()).unwrap()
}

/// Imports `files` into a fresh folder: (exit code, stdout, stderr, the folder).
fn import(files: &[PathBuf], extra: &[&str]) -> (i32, String, String, tempfile::TempDir) {
    let out = tempfile::tempdir().unwrap();
    let mut args = vec!["import".to_string(), "medtech".into()];
    args.extend(files.iter().map(|f| f.display().to_string()));
    args.extend(["--out".into(), out.path().display().to_string()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, stdout, stderr) = iomt(&refs);
    (code, stdout, stderr, out)
}

fn assert_source(c: &toml::Value, namespace: &str, hub: &str, group: &str) {
    let s = &c["source"];
    assert_eq!(s["kind"].as_str(), Some("event_hubs"));
    assert_eq!(s["fully_qualified_namespace"].as_str(), Some(namespace));
    assert_eq!(s["event_hub"].as_str(), Some(hub));
    assert_eq!(s["consumer_group"].as_str(), Some(group));
}

#[test]
fn quickstart_template_with_its_parameters_file() {
    let dir = data("quickstart-iotconnectors");
    let params = dir.join("azuredeploy.parameters.json");
    let (code, stdout, stderr, out) = import(
        &[dir.join("azuredeploy.json")],
        &["--parameters", params.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    // Connector name: format('{0}/hi-{1}', workspaceName, basename).
    let c = out.path().join("hi-GEN-UNIQUE-16");
    let p = json(&params);
    assert_eq!(
        json(&c.join("devicecontent.json")),
        p["parameters"]["deviceMapping"]["value"]
    );
    assert_eq!(
        json(&c.join("fhirmapping.json")),
        p["parameters"]["destinationMapping"]["value"]
    );
    let cfg = config(&c);
    assert_source(
        &cfg,
        "en-GEN-UNIQUE-16.servicebus.windows.net",
        "devicedata",
        "$Default",
    );
    assert_eq!(cfg["fhir"]["resolution"].as_str(), Some("Create"));
    assert_eq!(
        cfg["fhir"]["url"].as_str(),
        Some("https://hwGENUNIQUE16-fs-GEN-UNIQUE-16.fhir.azurehealthcareapis.com")
    );
    assert!(stdout.contains("still to fill in"), "{stdout}");
    assert!(stdout.contains("<tenant-id>"), "{stdout}");
}

#[test]
fn unresolvable_parameter_is_reported_with_its_line() {
    let file = data("quickstart-iotconnectors/azuredeploy.json");
    let (code, stdout, stderr, _out) = import(std::slice::from_ref(&file), &[]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    let expected = format!(
        "{}:139:56: fullyQualifiedEventHubNamespace: parameter 'basename' has no value",
        file.display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    let text = std::fs::read_to_string(&file).unwrap();
    let line = text.lines().nth(138).unwrap();
    assert!(
        line.contains("\"fullyQualifiedEventHubNamespace\""),
        "{line}"
    );
    // The other unresolvable values are named too, none dropped.
    for what in [":130:21: name:", ": fhirServiceResourceId: "] {
        assert!(stderr.contains(what), "{what} missing: {stderr}");
    }
}

#[test]
fn rest_resources_with_inline_mappings() {
    let connector = data("rest-api-examples/iotconnector.json");
    let destination = data("rest-api-examples/fhirdestination.json");
    let (code, stdout, stderr, out) = import(&[connector.clone(), destination.clone()], &[]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let c = out.path().join("blue");
    assert_eq!(
        json(&c.join("devicecontent.json")),
        json(&connector)["properties"]["deviceMapping"]["content"]
    );
    assert_eq!(
        json(&c.join("fhirmapping.json")),
        json(&destination)["properties"]["fhirMapping"]["content"]
    );
    let cfg = config(&c);
    assert_source(
        &cfg,
        "myeventhub.servicesbus.windows.net",
        "MyEventHubName",
        "ConsumerGroupA",
    );
    assert_eq!(cfg["fhir"]["resolution"].as_str(), Some("Create"));
    assert_eq!(
        cfg["fhir"]["url"].as_str(),
        Some("https://myworkspace-myfhirservice.fhir.azurehealthcareapis.com")
    );
    assert!(
        stdout.contains("devicecontent.json: valid (1 templates)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("fhirmapping.json: valid (1 templates)"),
        "{stdout}"
    );
}

#[test]
fn rest_list_with_json_string_mappings() {
    let connectors = data("json-string-content/iotconnectors.json");
    let destinations = data("json-string-content/fhirdestinations.json");
    let (code, stdout, stderr, out) = import(&[connectors.clone(), destinations.clone()], &[]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let c = out.path().join("blue");
    let device: Value = serde_json::from_str(
        json(&connectors)["value"][0]["properties"]["deviceMapping"]["content"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(json(&c.join("devicecontent.json")), device);
    let fhir: Value = serde_json::from_str(
        json(&destinations)[0]["properties"]["fhirMapping"]["content"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(json(&c.join("fhirmapping.json")), fhir);
    // The same mappings as the real example's inline objects.
    assert_eq!(
        device,
        json(&data("rest-api-examples/iotconnector.json"))["properties"]["deviceMapping"]
            ["content"]
    );
}

#[test]
fn nested_deployment_with_two_connectors() {
    let file = data("nested-deployment/azuredeploy.json");
    let (code, stdout, stderr, out) = import(std::slice::from_ref(&file), &[]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let rest = json(&data("rest-api-examples/iotconnector.json"));
    let dest = json(&data("rest-api-examples/fhirdestination.json"));
    for (name, hub, group, resolution, fhir) in [
        ("blue", "devicedata", "blue-cg", "Lookup", "fhir1"),
        ("green", "greenhub", "$Default", "Create", "fhir2"),
    ] {
        let c = out.path().join(name);
        assert_eq!(
            json(&c.join("devicecontent.json")),
            rest["properties"]["deviceMapping"]["content"],
            "{name}"
        );
        assert_eq!(
            json(&c.join("fhirmapping.json")),
            dest["properties"]["fhirMapping"]["content"],
            "{name}"
        );
        let cfg = config(&c);
        assert_source(
            &cfg,
            &format!("en-{name}.servicebus.windows.net"),
            hub,
            group,
        );
        assert_eq!(cfg["fhir"]["resolution"].as_str(), Some(resolution));
        assert_eq!(
            cfg["fhir"]["url"].as_str(),
            Some(format!("https://workspace1-{fhir}.fhir.azurehealthcareapis.com").as_str())
        );
    }
}

#[test]
fn bicep_and_terraform_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["main.bicep", "main.tf"] {
        let f = dir.path().join(name);
        std::fs::write(&f, "").unwrap();
        let (code, _, stderr, _out) = import(std::slice::from_ref(&f), &[]);
        assert_eq!(code, 2, "{stderr}");
        assert!(
            stderr.contains(&format!(
                "{}: Bicep/Terraform not supported yet",
                f.display()
            )),
            "{stderr}"
        );
    }
}

#[test]
fn key_vault_parameter_is_reported_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let params = dir.path().join("kv.parameters.json");
    std::fs::write(
        &params,
        r#"{"parameters": {"basename": {"reference": {"keyVault": {"id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv"}, "secretName": "basename"}}}}"#,
    )
    .unwrap();
    let file = data("quickstart-iotconnectors/azuredeploy.json");
    let (code, _stdout, stderr, _out) = import(
        std::slice::from_ref(&file),
        &["--parameters", params.to_str().unwrap()],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:139:56: fullyQualifiedEventHubNamespace: parameter 'basename' is a Key Vault reference",
            file.display()
        )),
        "{stderr}"
    );
}

/// Once the sign-in placeholders are filled in and the secrets are in the environment, the
/// imported folder passes `iomt validate --config` as it is.
#[test]
fn imported_config_validates_once_filled_in() {
    let (code, stdout, stderr, out) = import(
        &[
            data("rest-api-examples/iotconnector.json"),
            data("rest-api-examples/fhirdestination.json"),
        ],
        &[],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let config = out.path().join("blue/config.toml");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("<tenant-id>", "11111111-2222-3333-4444-555566667777")
        .replace("<client-id>", "00000000-0000-0000-0000-000000000001");
    assert!(!text.contains("\"<") && !text.contains("/<"), "{text}");
    std::fs::write(&config, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_iomt"))
        .args(["validate", "--config", config.to_str().unwrap()])
        .env("IOMT_FHIR_CLIENT_SECRET", "x")
        .env("IOMT_EVENTHUBS_CLIENT_SECRET", "x")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("valid"), "{stdout}");
}
