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

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use crate::bundle::{Entry, EntryOutcome};
use crate::client::{has_exact_identifier, searchset_matches, FhirClient, Versioned};
use crate::error::WriteError;
use crate::exchange::Exchange;
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

impl crate::cache::Weight for ResolvedIdentity {
    fn weight(&self) -> usize {
        96 + self.patient_id.len()
            + self.device_id.len()
            + self.encounter_id.as_ref().map_or(0, String::len)
    }
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
            IdentityError::Request(e) => e.type_name(),
        }
    }

    /// Whether resolving again later may succeed: only when a request failed for a reason
    /// other than a rejection (see [`WriteError::is_retryable`]); a missing or mismatched
    /// resource stays so until someone changes the data.
    pub fn is_retryable(&self) -> bool {
        matches!(self, IdentityError::Request(e) if e.is_retryable())
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

/// An identity key: device id, patient id, encounter id (as in the measurements).
pub(crate) type IdentityKey = (String, Option<String>, Option<String>);

/// What one search entry found.
type Found = Result<Option<Versioned>, IdentityError>;

/// A key's state between the rounds of [`IdentityResolver::resolve_many`].
enum Plan {
    Done(Result<ResolvedIdentity, IdentityError>),
    /// Resolve on its own, with single requests ([`IdentityResolver::resolve`]): the rare cases
    /// (a Device to link, a Patient to check, a conflict, a transient failure).
    Alone,
    /// Create the Device (and the Patient, unless found) with these ids.
    Create {
        patient_id: String,
        patient_value: String,
        create_patient: bool,
        device_id: String,
        encounter: Option<String>,
    },
}

fn unavailable(detail: String) -> IdentityError {
    IdentityError::Request(WriteError::GaveUp {
        method: "POST".into(),
        url: "(batch)".into(),
        attempts: 1,
        elapsed: std::time::Duration::ZERO,
        last: detail,
    })
}

impl IdentityResolver {
    /// Resolves many keys at once: one round of searches (the Devices, and in Create mode the
    /// Patients, and the Encounters) for all of them, then in Create mode one round creating the
    /// missing Patients and one creating the missing Devices — each round one Bundle per
    /// `bundle_size` entries where the server takes Bundles. Keys in an unusual state (a Device
    /// without patient, a Device linked to a Patient that does not carry the measurement's
    /// identifier, an entry that failed) are then resolved one by one as [`Self::resolve`] does,
    /// so the outcome is the same as resolving each key alone.
    pub(crate) async fn resolve_many(
        &self,
        exchange: &Exchange,
        keys: &[IdentityKey],
    ) -> Vec<Result<ResolvedIdentity, IdentityError>> {
        let create = self.mode == ResolutionMode::Create;
        let given = |p: &Option<String>| p.clone().filter(|p| !p.trim().is_empty());
        // Round 1: searches.
        let mut devices: BTreeSet<&str> = BTreeSet::new();
        let mut patients: BTreeSet<String> = BTreeSet::new();
        let mut encounters: BTreeSet<&str> = BTreeSet::new();
        for (d, p, e) in keys {
            devices.insert(d);
            if let (true, Some(p)) = (create, given(p)) {
                patients.insert(p);
            }
            if let Some(e) = e.as_deref() {
                encounters.insert(e);
            }
        }
        let device_token = |d: &str| match &self.device_system {
            Some(s) => format!("{s}|{d}"),
            None => d.to_string(),
        };
        let mut entries = Vec::new();
        for d in &devices {
            entries.push(Entry::search("Device", &[("identifier", &device_token(d))]));
        }
        for p in &patients {
            entries.push(Entry::search("Patient", &[("identifier", p)]));
        }
        for e in &encounters {
            entries.push(Entry::search("Encounter", &[("identifier", e)]));
        }
        let mut answers = exchange.send(&entries).await.into_iter();
        let mut found_device: BTreeMap<&str, Found> = BTreeMap::new();
        for d in &devices {
            let a = answers.next();
            let got = self
                .found(a, "Device", self.device_system.as_deref(), d)
                .await;
            found_device.insert(d, got);
        }
        let mut found_patient: BTreeMap<String, Found> = BTreeMap::new();
        for p in &patients {
            let a = answers.next();
            let got = self.found(a, "Patient", None, p).await;
            found_patient.insert(p.clone(), got);
        }
        let mut found_encounter: BTreeMap<&str, Found> = BTreeMap::new();
        for e in &encounters {
            let a = answers.next();
            let got = self.found(a, "Encounter", None, e).await;
            found_encounter.insert(e, got);
        }

        // Decide per key.
        let id_of = |v: &Versioned| v.resource["id"].as_str().unwrap_or_default().to_string();
        let mut plans: Vec<Plan> = Vec::with_capacity(keys.len());
        for (d, p, e) in keys {
            if self.mode == ResolutionMode::LookupWithEncounter
                && e.as_deref().is_none_or(str::is_empty)
            {
                plans.push(Plan::Done(Err(IdentityError::NotDefined {
                    resource: "Encounter",
                    device_id: d.clone(),
                    mode: self.mode,
                })));
                continue;
            }
            let encounter = match e.as_deref() {
                None => Ok(None),
                Some(e) => match found_encounter.get(e) {
                    Some(Ok(Some(v))) => Ok(Some(id_of(v))),
                    Some(Ok(None)) => Err(IdentityError::NotFound {
                        resource: "Encounter",
                        identifier: e.to_string(),
                    }),
                    _ => Err(unavailable(String::new())),
                },
            };
            let transient = |r: &Found| matches!(r, Err(e) if e.is_retryable());
            let device = found_device.get(d.as_str());
            let plan = match device {
                Some(r) if transient(r) => Plan::Alone,
                None => Plan::Alone,
                Some(Err(_)) => Plan::Alone,
                Some(Ok(Some(dev))) => {
                    let linked = dev
                        .resource
                        .get("patient")
                        .and_then(|p| reference_id(p, "Patient"));
                    match (linked, create, given(p)) {
                        (Some(linked), true, Some(pv)) => match found_patient.get(&pv) {
                            // The linked Patient carries the measurement's identifier.
                            Some(Ok(Some(pat))) if id_of(pat) == linked => {
                                Plan::Done(encounter.map(|enc| ResolvedIdentity {
                                    patient_id: linked,
                                    device_id: id_of(dev),
                                    encounter_id: enc,
                                }))
                            }
                            _ => Plan::Alone,
                        },
                        (Some(linked), _, _) => Plan::Done(encounter.map(|enc| ResolvedIdentity {
                            patient_id: linked,
                            device_id: id_of(dev),
                            encounter_id: enc,
                        })),
                        (None, false, _) => Plan::Done(Err(IdentityError::NotFound {
                            resource: "Patient",
                            identifier: format!("Device/{} has no patient", id_of(dev)),
                        })),
                        (None, true, _) => Plan::Alone,
                    }
                }
                Some(Ok(None)) if !create => Plan::Done(Err(IdentityError::NotFound {
                    resource: "Device",
                    identifier: d.clone(),
                })),
                Some(Ok(None)) => match given(p) {
                    None => Plan::Done(Err(IdentityError::NotDefined {
                        resource: "Patient",
                        device_id: d.clone(),
                        mode: self.mode,
                    })),
                    Some(pv) => match (found_patient.get(&pv), encounter) {
                        (_, Err(e)) => Plan::Done(Err(e)),
                        (Some(Ok(Some(pat))), Ok(enc)) => Plan::Create {
                            patient_id: id_of(pat),
                            patient_value: pv,
                            create_patient: false,
                            device_id: d.clone(),
                            encounter: enc,
                        },
                        (Some(Ok(None)), Ok(enc)) => Plan::Create {
                            patient_id: logical_id("", &pv),
                            patient_value: pv,
                            create_patient: true,
                            device_id: d.clone(),
                            encounter: enc,
                        },
                        _ => Plan::Alone,
                    },
                },
            };
            plans.push(plan);
        }

        // Rounds 2 and 3 (Create mode): the missing Patients, then the Devices linked to them.
        let mut new_patients: BTreeMap<String, Value> = BTreeMap::new();
        for plan in &plans {
            if let Plan::Create {
                patient_id,
                patient_value,
                create_patient: true,
                ..
            } = plan
            {
                new_patients.entry(patient_id.clone()).or_insert_with(|| {
                    json!({
                        "resourceType": "Patient",
                        "id": patient_id,
                        "identifier": [{"value": patient_value}],
                    })
                });
            }
        }
        let ids: Vec<String> = new_patients.keys().cloned().collect();
        let entries: Vec<Entry> = new_patients
            .into_values()
            .map(|resource| Entry::Put {
                resource,
                if_match: None,
            })
            .collect();
        let made: BTreeMap<String, bool> = ids
            .into_iter()
            .zip(exchange.send(&entries).await)
            .map(|(id, o)| (id, matches!(o, EntryOutcome::Done { .. })))
            .collect();
        let mut device_entries = Vec::new();
        let mut device_plans = Vec::new();
        for (i, plan) in plans.iter_mut().enumerate() {
            if let Plan::Create {
                patient_id,
                create_patient,
                device_id,
                ..
            } = plan
            {
                if *create_patient && made.get(patient_id.as_str()) != Some(&true) {
                    *plan = Plan::Alone;
                    continue;
                }
                let system = self.device_system.clone().unwrap_or_default();
                let mut identifier = json!({"value": device_id});
                if let Some(s) = &self.device_system {
                    identifier["system"] = json!(s);
                }
                device_entries.push(Entry::Put {
                    resource: json!({
                        "resourceType": "Device",
                        "id": logical_id(&system, device_id),
                        "identifier": [identifier],
                        "patient": {"reference": format!("Patient/{patient_id}")},
                    }),
                    if_match: None,
                });
                device_plans.push(i);
            }
        }
        let outcomes = exchange.send(&device_entries).await;
        for (i, o) in device_plans.into_iter().zip(outcomes) {
            let plan = &mut plans[i];
            if let (
                Plan::Create {
                    patient_id,
                    device_id,
                    encounter,
                    ..
                },
                EntryOutcome::Done { .. },
            ) = (&*plan, &o)
            {
                let system = self.device_system.clone().unwrap_or_default();
                *plan = Plan::Done(Ok(ResolvedIdentity {
                    patient_id: patient_id.clone(),
                    device_id: logical_id(&system, device_id),
                    encounter_id: encounter.clone(),
                }));
            } else {
                *plan = Plan::Alone;
            }
        }

        // The rest, one by one.
        let mut out = Vec::with_capacity(keys.len());
        for ((d, p, e), plan) in keys.iter().zip(plans) {
            out.push(match plan {
                Plan::Done(r) => r,
                _ => self.resolve(d, p.as_deref(), e.as_deref()).await,
            });
        }
        out
    }

    /// The one resource an identifier search entry found (exact matches only; `next` pages
    /// followed).
    async fn found(
        &self,
        answer: Option<EntryOutcome>,
        resource: &'static str,
        system: Option<&str>,
        value: &str,
    ) -> Found {
        let bundle = match answer {
            Some(EntryOutcome::Done {
                resource: Some(b), ..
            }) => b,
            Some(EntryOutcome::Refused { status, outcome }) => {
                return Err(IdentityError::Request(WriteError::Rejected {
                    method: "GET".into(),
                    url: resource.to_string(),
                    status,
                    outcome,
                }))
            }
            Some(other) => return Err(unavailable(format!("{other:?}"))),
            None => return Err(unavailable("no answer".into())),
        };
        let (mut matches, next) = searchset_matches(bundle);
        if let Some(next) = next {
            matches.extend(self.client.search_from(&next).await?);
        }
        let exact: Vec<Versioned> = matches
            .into_iter()
            .filter(|r| has_exact_identifier(r, system, value))
            .map(|resource| Versioned {
                version: resource
                    .pointer("/meta/versionId")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                resource,
            })
            .collect();
        one(exact, resource, value)
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
