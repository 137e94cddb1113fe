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
//!   same mappings as JSON-encoded strings; inside a nested `Microsoft.Resources/deployments`);
//! - `bicep-quickstart/main.bicep`: Azure/azure-quickstart-templates,
//!   `quickstarts/microsoft.healthcareapis/workspaces/iotconnectors/main.bicep` (MIT), the
//!   Bicep source of the ARM template above;
//! - `terraform-docs/`: hashicorp/terraform-provider-azurerm, the examples of
//!   `website/docs/r/healthcare_medtech_service.html.markdown` and
//!   `…/healthcare_medtech_service_fhir_destination.html.markdown` (MPL-2.0);
//! - `terraform-acctest/main.tf`: ms-henglu/terraform-provider-azurerm,
//!   `export/azurerm_healthcare_medtech_service_fhir_destination/
//!   TestAccHealthCareMedTechServiceFhirDestination_updateFhir/step_2.tf` (MPL-2.0);
//! - `terraform-variables/`: derived from the provider docs' examples.
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
    assert_quickstart(&c, &params);
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

/// A copy loop over a connector (the quickstart's template with `"copy"` added to it, written
/// by the test) is named with its line, not imported as if it were one connector.
#[test]
fn a_copy_loop_is_named_not_imported_as_one() {
    let src = data("quickstart-iotconnectors/azuredeploy.json");
    let mut t: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&src).unwrap()).unwrap();
    let resources = t["resources"].as_array_mut().unwrap();
    let connector = resources
        .iter_mut()
        .find(|r| r["type"] == "Microsoft.HealthcareApis/workspaces/iotconnectors")
        .expect("the quickstart's connector");
    connector["copy"] = serde_json::json!({"name": "connectors", "count": 3});
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("copy-loop.json");
    let text = serde_json::to_string_pretty(&t).unwrap();
    std::fs::write(&file, &text).unwrap();
    let params = data("quickstart-iotconnectors/azuredeploy.parameters.json");
    let (code, stdout, stderr, _out) = import(
        std::slice::from_ref(&file),
        &["--parameters", &params.display().to_string()],
    );
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    let line = text.lines().position(|l| l.contains("\"copy\"")).unwrap() + 1;
    let expected = format!("{}:{line}:", file.display());
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with(&expected) && l.contains("copy loop is not expanded")),
        "{expected} copy loop: {stderr}"
    );
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

/// The argument of `attr = jsonencode(…)` in an HCL file, read as JSON: what the file
/// defines, taken from its text independently of the import's HCL parser.
fn jsonencode_argument(file: &Path, attr: &str) -> Value {
    let text = std::fs::read_to_string(file).unwrap();
    let from = text.find(&format!("{attr} = jsonencode(")).unwrap() + attr.len() + 14;
    let mut depth = 0;
    let end = text[from..]
        .char_indices()
        .find(|&(_, c)| {
            depth += match c {
                '(' => 1,
                ')' => -1,
                _ => 0,
            };
            depth < 0
        })
        .unwrap()
        .0;
    serde_json::from_str(&text[from..from + end]).unwrap()
}

/// The text between `attr = <<JSON` and the closing `JSON` line, read as JSON.
fn heredoc(file: &Path, attr: &str) -> Value {
    let text = std::fs::read_to_string(file).unwrap();
    let from = text.find(&format!("{attr} = <<JSON\n")).unwrap() + attr.len() + 9;
    let end = text[from..].find("\nJSON").unwrap();
    serde_json::from_str(&text[from..from + end]).unwrap()
}

/// Bicep: Azure/azure-quickstart-templates,
/// `quickstarts/microsoft.healthcareapis/workspaces/iotconnectors/main.bicep` (the source of
/// the `azuredeploy.json` above) with the same parameters file gives exactly the ARM
/// template's folder: mappings, Event Hub, resolution, FHIR URL (from `fhirService.id`).
#[test]
fn bicep_quickstart_gives_what_its_arm_template_gives() {
    let params = data("quickstart-iotconnectors/azuredeploy.parameters.json");
    let p = ["--parameters", params.to_str().unwrap()];
    let bicep = data("bicep-quickstart/main.bicep");
    let (code, stdout, stderr, out) = import(std::slice::from_ref(&bicep), &p);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let (code, _, stderr, arm) = import(&[data("quickstart-iotconnectors/azuredeploy.json")], &p);
    assert_eq!(code, 0, "{stderr}");
    let c = out.path().join("hi-GEN-UNIQUE-16");
    let a = arm.path().join("hi-GEN-UNIQUE-16");
    for f in ["devicecontent.json", "fhirmapping.json"] {
        assert_eq!(
            std::fs::read_to_string(c.join(f)).unwrap(),
            std::fs::read_to_string(a.join(f)).unwrap(),
            "{f}"
        );
    }
    // config.toml: the same but for the first line, which names the file read.
    let body = |d: &Path| {
        let t = std::fs::read_to_string(d.join("config.toml")).unwrap();
        t.split_once('\n').unwrap().1.to_string()
    };
    assert_eq!(body(&c), body(&a));
    assert_quickstart(&c, &params);
}

/// The quickstart's connector (ARM or Bicep) against its parameters file's mappings.
fn assert_quickstart(c: &Path, params: &Path) {
    let p = json(params);
    assert_imported(
        c,
        (
            p["parameters"]["deviceMapping"]["value"].clone(),
            p["parameters"]["destinationMapping"]["value"].clone(),
        ),
        (
            "en-GEN-UNIQUE-16.servicebus.windows.net",
            "devicedata",
            "$Default",
        ),
        "Create",
        "https://hwGENUNIQUE16-fs-GEN-UNIQUE-16.fhir.azurehealthcareapis.com",
    );
}

/// Bicep: the quickstart's `main.bicep` (Azure/azure-quickstart-templates, as above)
/// without parameters: `param basename string` has no default, and each value built from it
/// is named with its place.
#[test]
fn bicep_param_without_default_is_reported_with_its_line() {
    let file = data("bicep-quickstart/main.bicep");
    let (code, stdout, stderr, _out) = import(std::slice::from_ref(&file), &[]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    let expected = format!(
        "{}:116:40: fullyQualifiedEventHubNamespace: param 'basename' has no value: no default (declared at {}:4:1)",
        file.display(),
        file.display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text
        .lines()
        .nth(115)
        .unwrap()
        .contains("fullyQualifiedEventHubNamespace: 'en-${basename}"));
    assert!(text
        .lines()
        .nth(3)
        .unwrap()
        .starts_with("param basename string"));
    for what in [":106:9: name: ", ":130:28: fhirServiceResourceId: "] {
        assert!(stderr.contains(what), "{what} missing: {stderr}");
    }
}

/// Terraform: hashicorp/terraform-provider-azurerm,
/// `website/docs/r/healthcare_medtech_service_fhir_destination.html.markdown`, its example:
/// mappings as `jsonencode({…})`, the Event Hub and FHIR service by reference to other
/// resources, the destination linked by `azurerm_healthcare_medtech_service.example.id`.
#[test]
fn terraform_provider_docs_example_with_jsonencode() {
    let file = data("terraform-docs/healthcare_medtech_service_fhir_destination.tf");
    let (code, stdout, stderr, out) = import(std::slice::from_ref(&file), &[]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_imported(
        &out.path().join("examplemt"),
        (
            jsonencode_argument(&file, "device_mapping_json"),
            jsonencode_argument(&file, "destination_fhir_mapping_json"),
        ),
        (
            "example-ehn.servicebus.windows.net",
            "example-eh",
            "$default",
        ),
        "Create",
        "https://exampleworkspace-examplefhir.fhir.azurehealthcareapis.com",
    );
}

/// An imported connector's folder against what its source defines: both mappings as JSON
/// values, the Event Hub (namespace, hub, consumer group), the resolution type and FHIR URL.
fn assert_imported(
    c: &Path,
    (device, fhir): (Value, Value),
    hub: (&str, &str, &str),
    resolution: &str,
    url: &str,
) {
    assert_eq!(json(&c.join("devicecontent.json")), device);
    assert_eq!(json(&c.join("fhirmapping.json")), fhir);
    let cfg = config(c);
    assert_source(&cfg, hub.0, hub.1, hub.2);
    assert_eq!(cfg["fhir"]["resolution"].as_str(), Some(resolution));
    assert_eq!(cfg["fhir"]["url"].as_str(), Some(url));
}

/// Terraform: hashicorp/terraform-provider-azurerm,
/// `website/docs/r/healthcare_medtech_service.html.markdown`, its example: a service
/// without a destination; the device mapping comes out, the missing destination is said.
#[test]
fn terraform_service_without_destination_is_said() {
    let file = data("terraform-docs/healthcare_medtech_service.tf");
    let (code, stdout, stderr, out) = import(std::slice::from_ref(&file), &[]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    let c = out.path().join("examplemed");
    assert_eq!(
        json(&c.join("devicecontent.json")),
        jsonencode_argument(&file, "device_mapping_json")
    );
    assert_source(
        &config(&c),
        "example-eventhub-namespace.servicebus.windows.net",
        "example-eventhub",
        "$Default",
    );
    assert!(
        stderr.contains("has no FHIR destination in the files given"),
        "{stderr}"
    );
}

/// Terraform: ms-henglu/terraform-provider-azurerm (the provider's rendered acceptance-test
/// configurations), `export/azurerm_healthcare_medtech_service_fhir_destination/
/// TestAccHealthCareMedTechServiceFhirDestination_updateFhir/step_2.tf`: heredoc mappings,
/// two Event Hubs, consumer groups and FHIR services, of which the ones referenced count.
#[test]
fn terraform_acceptance_test_with_heredocs() {
    let file = data("terraform-acctest/main.tf");
    let (code, stdout, stderr, out) = import(std::slice::from_ref(&file), &[]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_imported(
        &out.path().join("mt230421022238480739"),
        (
            heredoc(&file, "device_mapping_json"),
            heredoc(&file, "destination_fhir_mapping_json"),
        ),
        (
            "acctest-ehn-230421022238480739.servicebus.windows.net",
            "acctest-eh-230421022238480739",
            "acctestCG-230421022238480739",
        ),
        "Create",
        "https://wks230421022238480739-fhir1230421022238480739.fhir.azurehealthcareapis.com",
    );
}

/// Terraform: `terraform-variables/` (derived from the provider docs' examples above): a
/// variable without a default is named with its file:line (and its declaration's); with the
/// `.tfvars` file, variables, locals, `file("${path.module}/…")` and a `<<-JSON` heredoc
/// resolve.
#[test]
fn terraform_variables_locals_file_and_tfvars() {
    let file = data("terraform-variables/main.tf");
    let (code, stdout, stderr, _out) = import(std::slice::from_ref(&file), &[]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    let expected = format!(
        "{}:39:34: eventhub_name: var.eventhub_name has no value: `variable \"eventhub_name\"` at {}:5:1 has no default",
        file.display(),
        file.display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text
        .lines()
        .nth(38)
        .unwrap()
        .contains("= var.eventhub_name"));

    let tfvars = data("terraform-variables/example.tfvars");
    let (code, stdout, stderr, out) = import(&[file.clone(), tfvars], &[]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_imported(
        &out.path().join("examplemed"),
        (
            json(&data("terraform-variables/devicecontent.json")),
            jsonencode_argument(
                &data("terraform-docs/healthcare_medtech_service_fhir_destination.tf"),
                "destination_fhir_mapping_json",
            ),
        ),
        (
            "example-eventhub-namespace.servicebus.windows.net",
            "example-eventhub",
            "$Default",
        ),
        "Lookup",
        "https://examplewkspace-examplefhir.fhir.azurehealthcareapis.com",
    );
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
