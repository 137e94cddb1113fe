//! Device, Patient and Encounter resolution, as the reference does it
//! (`R4DeviceAndPatientLookupIdentityService`, `...CreateIdentityService`):
//!
//! * `Lookup`: the Device by identifier; the patient from `Device.patient` (the measurement's
//!   patient id is ignored); the Encounter by identifier when the group has one.
//! * `LookupWithEncounter`: as Lookup, and an encounter id is required.
//! * `Create`: Lookup first; when the Device or its Patient is missing, get-or-create the Patient
//!   (identifier `{value: patientId}`, id = SHA-256 of `"_" + patientId`) and the Device
//!   (identifier `{system: deviceIdentifierSystem, value: deviceId}`, `patient` reference, id =
//!   SHA-256 of `"{system}_{deviceId}"`), both by PUT; link an unlinked Device; a Device linked to
//!   another patient is a `PatientDeviceMismatchException` (also when Lookup found the Device:
//!   unlike the reference, Create mode checks the linked Patient's identifier).

use serde_json::{json, Value};

use crate::client::{FhirClient, Versioned, WriteError};
use crate::observation::logical_id;

/// How identities are resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
pub enum ResolutionMode {
    /// Find Device (and its Patient) and Encounter; create nothing.
    #[default]
    Lookup,
    /// As Lookup, and every group must carry an encounter id.
    LookupWithEncounter,
    /// Create the Patient and Device when missing.
    Create,
}

impl std::str::FromStr for ResolutionMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "lookup" => Ok(ResolutionMode::Lookup),
            "lookupwithencounter" => Ok(ResolutionMode::LookupWithEncounter),
            "create" => Ok(ResolutionMode::Create),
            _ => Err(format!(
                "unknown resolution mode {s:?}: expected Create, Lookup or LookupWithEncounter"
            )),
        }
    }
}

/// The FHIR logical ids a group's Observations link to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedIdentity {
    /// `Patient/{id}`.
    pub patient_id: String,
    /// `Device/{id}`.
    pub device_id: String,
    /// `Encounter/{id}`, when the group has an encounter.
    pub encounter_id: Option<String>,
}

/// Why an identity could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A resource the mode needs does not exist.
    #[error("{resource} not found: no {resource} with identifier {identifier:?}")]
    NotFound {
        /// `Device`, `Patient` or `Encounter`.
        resource: &'static str,
        /// What was searched for.
        identifier: String,
    },
    /// Several resources carry the identifier.
    #[error("{count} {resource} resources have identifier {identifier:?}; expected one")]
    Multiple {
        /// Resource type.
        resource: &'static str,
        /// Identifier.
        identifier: String,
        /// How many.
        count: usize,
    },
    /// The measurement lacks an id the mode needs.
    #[error("the measurement group of device {device_id:?} has no {resource} id, which resolution mode {mode:?} requires")]
    NotDefined {
        /// `Patient` or `Encounter`.
        resource: &'static str,
        /// Device id of the group.
        device_id: String,
        /// The mode.
        mode: ResolutionMode,
    },
    /// The Device is linked to another Patient.
    #[error("Device {device_id:?} is linked to Patient/{linked}, which does not carry the measurement's patient identifier {patient_id:?}")]
    Mismatch {
        /// Device identifier value.
        device_id: String,
        /// Patient identifier value from the measurement.
        patient_id: String,
        /// The Patient the device is linked to.
        linked: String,
        /// The Patient id the measurement's patient would have (get-or-create).
        expected: String,
    },
    /// The FHIR request failed.
    #[error(transparent)]
    Request(#[from] WriteError),
}

impl IdentityError {
    /// The reference's exception name.
    pub fn type_name(&self) -> &'static str {
        match self {
            IdentityError::NotFound { .. } => "FhirResourceNotFoundException",
            IdentityError::Multiple { .. } => "MultipleResourceFoundException",
            IdentityError::NotDefined { .. } => "ResourceIdentityNotDefinedException",
            IdentityError::Mismatch { .. } => "PatientDeviceMismatchException",
            IdentityError::Request(e) => crate::writer::request_error_type(e),
        }
    }
}

/// Resolves identities against a FHIR server.
#[derive(Debug, Clone)]
pub struct IdentityResolver {
    client: FhirClient,
    mode: ResolutionMode,
    device_system: Option<String>,
}

fn reference_id(reference: &Value, resource: &str) -> Option<String> {
    let r = reference.get("reference")?.as_str()?;
    // "Patient/123", "Patient/123/_history/2" or an absolute URL ending so.
    let parts: Vec<&str> = r.split('/').collect();
    let at = parts.iter().rposition(|p| *p == resource)?;
    parts.get(at + 1).map(|s| s.to_string())
}

fn has_identifier(resource: &Value, value: &str) -> bool {
    resource["identifier"]
        .as_array()
        .is_some_and(|ids| ids.iter().any(|i| i["value"].as_str() == Some(value)))
}

fn one(
    found: Vec<Versioned>,
    resource: &'static str,
    identifier: &str,
) -> Result<Option<Versioned>, IdentityError> {
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.into_iter().next()),
        count => Err(IdentityError::Multiple {
            resource,
            identifier: identifier.to_string(),
            count,
        }),
    }
}

impl IdentityResolver {
    /// A resolver. `device_system` is the reference's `DefaultDeviceIdentifierSystem`.
    pub fn new(client: FhirClient, mode: ResolutionMode, device_system: Option<String>) -> Self {
        IdentityResolver {
            client,
            mode,
            device_system: device_system.filter(|s| !s.is_empty()),
        }
    }

    /// The mode.
    pub fn mode(&self) -> ResolutionMode {
        self.mode
    }

    async fn find_device(&self, device_id: &str) -> Result<Option<Versioned>, IdentityError> {
        let found = self
            .client
            .search_by_identifier("Device", self.device_system.as_deref(), device_id)
            .await?;
        one(found, "Device", device_id)
    }

    async fn lookup(
        &self,
        device_id: &str,
        encounter_id: Option<&str>,
    ) -> Result<ResolvedIdentity, IdentityError> {
        let device = self
            .find_device(device_id)
            .await?
            .ok_or_else(|| IdentityError::NotFound {
                resource: "Device",
                identifier: device_id.to_string(),
            })?;
        let patient = device
            .resource
            .get("patient")
            .and_then(|p| reference_id(p, "Patient"))
            .ok_or_else(|| IdentityError::NotFound {
                resource: "Patient",
                identifier: format!(
                    "Device/{} has no patient",
                    device.resource["id"].as_str().unwrap_or("?")
                ),
            })?;
        let encounter = self.encounter(encounter_id).await?;
        Ok(ResolvedIdentity {
            patient_id: patient,
            device_id: device.resource["id"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            encounter_id: encounter,
        })
    }

    async fn encounter(&self, encounter_id: Option<&str>) -> Result<Option<String>, IdentityError> {
        let Some(e) = encounter_id else {
            return Ok(None);
        };
        let found = self
            .client
            .search_by_identifier("Encounter", None, e)
            .await?;
        let enc = one(found, "Encounter", e)?.ok_or_else(|| IdentityError::NotFound {
            resource: "Encounter",
            identifier: e.to_string(),
        })?;
        Ok(enc.resource["id"].as_str().map(str::to_string))
    }

    /// Resolves the ids for a group's key.
    pub async fn resolve(
        &self,
        device_id: &str,
        patient_id: Option<&str>,
        encounter_id: Option<&str>,
    ) -> Result<ResolvedIdentity, IdentityError> {
        if self.mode == ResolutionMode::LookupWithEncounter
            && encounter_id.is_none_or(str::is_empty)
        {
            return Err(IdentityError::NotDefined {
                resource: "Encounter",
                device_id: device_id.to_string(),
                mode: self.mode,
            });
        }
        match self.lookup(device_id, encounter_id).await {
            Ok(r) if self.mode == ResolutionMode::Create => {
                match patient_id.filter(|p| !p.trim().is_empty()) {
                    // Deliberate difference: the reference ignores the measurement's patient once
                    // the Device is linked, writing readings to whoever the device was linked to.
                    // In Create mode we check the linked Patient carries the measurement's patient
                    // identifier, and report a mismatch instead of mis-attributing readings.
                    Some(p) => match self.client.read("Patient", &r.patient_id).await? {
                        Some(linked) if has_identifier(&linked.resource, p) => Ok(r),
                        Some(_) => Err(IdentityError::Mismatch {
                            device_id: device_id.to_string(),
                            patient_id: p.to_string(),
                            linked: r.patient_id.clone(),
                            expected: logical_id("", p),
                        }),
                        None => self.ensure(device_id, patient_id, encounter_id).await,
                    },
                    None => Ok(r),
                }
            }
            Ok(r) => Ok(r),
            Err(IdentityError::NotFound { resource, .. })
                if self.mode == ResolutionMode::Create
                    && (resource == "Device" || resource == "Patient") =>
            {
                self.ensure(device_id, patient_id, encounter_id).await
            }
            Err(e) => Err(e),
        }
    }

    async fn ensure(
        &self,
        device_id: &str,
        patient_id: Option<&str>,
        encounter_id: Option<&str>,
    ) -> Result<ResolvedIdentity, IdentityError> {
        let Some(patient_value) = patient_id.filter(|p| !p.trim().is_empty()) else {
            return Err(IdentityError::NotDefined {
                resource: "Patient",
                device_id: device_id.to_string(),
                mode: self.mode,
            });
        };
        // Patient: get or create.
        let found = self
            .client
            .search_by_identifier("Patient", None, patient_value)
            .await?;
        let patient = match one(found, "Patient", patient_value)? {
            Some(p) => p,
            None => {
                let id = logical_id("", patient_value);
                let resource = json!({
                    "resourceType": "Patient",
                    "id": id,
                    "identifier": [{"value": patient_value}],
                });
                self.client.put(&resource, None).await?
            }
        };
        let patient_ref = patient.resource["id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        // Device: get or create, linked to the patient.
        let device = match self.find_device(device_id).await? {
            Some(d) => d,
            None => {
                let system = self.device_system.clone().unwrap_or_default();
                let id = logical_id(&system, device_id);
                let mut identifier = json!({"value": device_id});
                if let Some(s) = &self.device_system {
                    identifier["system"] = json!(s);
                }
                let resource = json!({
                    "resourceType": "Device",
                    "id": id,
                    "identifier": [identifier],
                    "patient": {"reference": format!("Patient/{patient_ref}")},
                });
                self.client.put(&resource, None).await?
            }
        };
        let mut device = device;
        let mut conflicts = 0;
        loop {
            match device
                .resource
                .get("patient")
                .and_then(|p| reference_id(p, "Patient"))
            {
                None => {
                    let mut linked = device.resource.clone();
                    linked["patient"] = json!({"reference": format!("Patient/{patient_ref}")});
                    match self.client.put(&linked, device.version.as_deref()).await {
                        Ok(_) => break,
                        // The Device changed since it was read: another writer linked it, or
                        // this very PUT was applied but its answer lost and the client sent it
                        // again. Read it again and decide anew (bounded).
                        Err(WriteError::Conflict { .. }) if conflicts < 3 => {
                            conflicts += 1;
                            device = self.find_device(device_id).await?.ok_or_else(|| {
                                IdentityError::NotFound {
                                    resource: "Device",
                                    identifier: device_id.to_string(),
                                }
                            })?;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                Some(other) if other != patient_ref => {
                    return Err(IdentityError::Mismatch {
                        device_id: device_id.to_string(),
                        patient_id: patient_value.to_string(),
                        linked: other,
                        expected: patient_ref,
                    })
                }
                Some(_) => break,
            }
        }
        let encounter = self.encounter(encounter_id).await?;
        Ok(ResolvedIdentity {
            patient_id: patient_ref,
            device_id: device.resource["id"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            encounter_id: encounter,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_ids() {
        assert_eq!(
            reference_id(&json!({"reference": "Patient/abc"}), "Patient").as_deref(),
            Some("abc")
        );
        assert_eq!(
            reference_id(
                &json!({"reference": "https://x/fhir/Patient/abc/_history/2"}),
                "Patient"
            )
            .as_deref(),
            Some("abc")
        );
        assert_eq!(reference_id(&json!({"display": "x"}), "Patient"), None);
        assert_eq!(
            "create".parse::<ResolutionMode>(),
            Ok(ResolutionMode::Create)
        );
        assert!("nope".parse::<ResolutionMode>().is_err());
    }
}
