//! Search by identifier, id, reference, code and date (with prefixes); paging by `next`
//! links; sorting by date.

use super::*;

async fn seed_search_data(base: &str) {
    for r in [
        json!({"resourceType": "Patient", "id": "p1", "identifier": [{"system": "urn:mrn", "value": "A1"}, {"value": "plain"}]}),
        json!({"resourceType": "Patient", "id": "p2", "identifier": [{"system": "urn:other", "value": "A1"}]}),
        json!({"resourceType": "Patient", "id": "p3", "identifier": [{"value": "A1"}]}),
        json!({"resourceType": "Patient", "id": "p4", "identifier": [{"system": "urn:mrn", "value": "A10"}, {"system": "urn:mrn", "value": "a1"}]}),
        json!({"resourceType": "Device", "id": "d1", "identifier": [{"value": "dev-1"}], "patient": {"reference": "Patient/p1"}}),
        json!({"resourceType": "Device", "id": "d2", "identifier": [{"value": "dev-2"}]}),
        json!({"resourceType": "Observation", "id": "o1", "status": "final",
               "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
               "subject": {"reference": "Patient/p1"}, "device": {"reference": "Device/d1"},
               "effectiveDateTime": "2024-03-01T10:15:00Z"}),
        json!({"resourceType": "Observation", "id": "o2", "status": "final",
               "code": {"coding": [{"system": "http://loinc.org", "code": "59408-5"}, {"system": "urn:local", "code": "spo2"}]},
               "subject": {"reference": "http://elsewhere/fhir/Patient/p1"}, "device": {"reference": "Device/d2/_history/1"},
               "effectivePeriod": {"start": "2024-03-01T10:00:00Z", "end": "2024-03-01T10:59:59.999Z"}}),
        json!({"resourceType": "Observation", "id": "o3", "status": "final",
               "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
               "subject": {"reference": "Patient/p2"},
               "effectivePeriod": {"start": "2024-03-02T00:00:00+01:00"}}),
        json!({"resourceType": "Observation", "id": "o4", "status": "final",
               "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
               "subject": {"reference": "Group/g1"}}),
    ] {
        let a = put(base, &r, None).await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    }
}

#[tokio::test]
async fn search_by_identifier_id_references_and_code() {
    let s = Running::start().await;
    let b = &s.base;
    seed_search_data(b).await;
    // identifier: system|value, |value (no system), value (any system); exact, case-sensitive.
    assert_eq!(
        id_set(b, "Patient?identifier=urn:mrn|A1").await,
        set(&["p1"])
    );
    assert_eq!(id_set(b, "Patient?identifier=%7CA1").await, set(&["p3"]));
    assert_eq!(
        id_set(b, "Patient?identifier=A1").await,
        set(&["p1", "p2", "p3"])
    );
    assert_eq!(
        id_set(b, "Patient?identifier=urn:mrn|").await,
        set(&["p1", "p4"])
    );
    assert_eq!(id_set(b, "Patient?identifier=a1").await, set(&["p4"]));
    assert_eq!(id_set(b, "Patient?identifier=A").await, set(&[]));
    assert_eq!(
        id_set(b, "Patient?identifier=urn:mrn|A1,urn:other|A1").await,
        set(&["p1", "p2"])
    );
    assert_eq!(
        id_set(b, "Patient?identifier=A1&identifier=plain").await,
        set(&["p1"])
    );
    // A full (long) identifier value is compared whole (the reference compared 128 characters).
    let long_a = "x".repeat(200) + "a";
    let long_b = "x".repeat(200) + "b";
    put(
        b,
        &json!({"resourceType": "Patient", "id": "long", "identifier": [{"value": long_a}]}),
        None,
    )
    .await;
    assert_eq!(
        id_set(b, &format!("Patient?identifier={long_b}")).await,
        set(&[])
    );
    assert_eq!(
        id_set(b, &format!("Patient?identifier={long_a}")).await,
        set(&["long"])
    );
    // _id.
    assert_eq!(
        id_set(b, "Patient?_id=p2,p3,nope").await,
        set(&["p2", "p3"])
    );
    // References: Type/id, bare id, absolute URL, versioned; patient covers Device.patient.
    assert_eq!(
        id_set(b, "Observation?subject=Patient/p1").await,
        set(&["o1", "o2"])
    );
    assert_eq!(
        id_set(b, "Observation?subject=p1").await,
        set(&["o1", "o2"])
    );
    assert_eq!(
        id_set(b, "Observation?subject=http://x/fhir/R4/Patient/p2").await,
        set(&["o3"])
    );
    assert_eq!(
        id_set(b, "Observation?subject:Group=g1").await,
        set(&["o4"])
    );
    assert_eq!(
        id_set(b, "Observation?patient=p1").await,
        set(&["o1", "o2"])
    );
    assert_eq!(id_set(b, "Observation?patient=g1").await, set(&[]));
    assert_eq!(id_set(b, "Device?patient=Patient/p1").await, set(&["d1"]));
    assert_eq!(id_set(b, "Observation?device=d2").await, set(&["o2"]));
    assert_eq!(
        id_set(b, "Observation?device=Device/d1").await,
        set(&["o1"])
    );
    // code against code.coding.
    assert_eq!(
        id_set(b, "Observation?code=http://loinc.org|8867-4").await,
        set(&["o1", "o3", "o4"])
    );
    assert_eq!(id_set(b, "Observation?code=spo2").await, set(&["o2"]));
    assert_eq!(
        id_set(b, "Observation?code=http://loinc.org|spo2").await,
        set(&[])
    );
    assert_eq!(
        id_set(b, "Observation?code=http://loinc.org|8867-4&subject=p1").await,
        set(&["o1"])
    );
    // An update re-indexes.
    put(b, &json!({"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "none"}, "subject": {"reference": "Patient/p3"}}), None).await;
    assert_eq!(id_set(b, "Observation?subject=p1").await, set(&["o2"]));
    assert_eq!(id_set(b, "Observation?subject=p3").await, set(&["o1"]));
    // Unknown parameters and bad values are refused, not ignored.
    assert_outcome(
        &get(&format!("{b}/Observation?colour=red")).await,
        400,
        "unknown search parameter",
    );
    assert_outcome(
        &get(&format!("{b}/Observation?patient=Device/d1")).await,
        400,
        "references a Patient",
    );
    assert_outcome(
        &get(&format!("{b}/Observation?date=yesterday")).await,
        400,
        "not a FHIR date",
    );
}

#[tokio::test]
async fn search_by_date_with_prefixes() {
    let s = Running::start().await;
    let b = &s.base;
    seed_search_data(b).await;
    // o1: instant 10:15:00 (the whole second); o2: 10:00–10:59:59.999; o3: from 2024-03-01T23:00Z, open.
    assert_eq!(
        id_set(b, "Observation?date=2024-03-01").await,
        set(&["o1", "o2"])
    );
    assert_eq!(
        id_set(b, "Observation?date=eq2024-03-01T10:00Z").await,
        set(&[])
    );
    assert_eq!(
        id_set(b, "Observation?date=2024-03-01T10:15:00Z").await,
        set(&["o1"])
    );
    assert_eq!(
        id_set(b, "Observation?date=ge2024-03-01T10:30:00Z").await,
        set(&["o2", "o3"])
    );
    assert_eq!(
        id_set(b, "Observation?date=gt2024-03-01T10:59:59.999Z").await,
        set(&["o3"])
    );
    assert_eq!(
        id_set(b, "Observation?date=le2024-03-01T10:00:00Z").await,
        set(&["o2"])
    );
    assert_eq!(
        id_set(b, "Observation?date=lt2024-03-01T10:15:00Z").await,
        set(&["o2"])
    );
    assert_eq!(
        id_set(
            b,
            "Observation?date=ge2024-03-01T10:10:00Z&date=le2024-03-01T10:20:00Z"
        )
        .await,
        set(&["o1", "o2"])
    );
    assert_eq!(
        id_set(b, "Observation?date=ge2024-03-01T23:00:00%2B00:00").await,
        set(&["o3"])
    );
    assert_eq!(
        id_set(b, "Observation?date=sa2024-03-01T12:00:00Z").await,
        set(&["o3"])
    );
    assert_eq!(
        id_set(b, "Observation?date=eb2024-03-01T10:15:00Z").await,
        set(&[])
    );
    assert_eq!(
        id_set(b, "Observation?date=ne2024-03-01").await,
        set(&["o3"])
    );
    assert_eq!(id_set(b, "Observation?date=2024").await, set(&["o1", "o2"]));
    assert_eq!(
        id_set(
            b,
            "Observation?date=lt2024-03-01T10:15:00Z,sa2024-03-01T12:00:00Z"
        )
        .await,
        set(&["o2", "o3"])
    );
    // _lastUpdated.
    assert_eq!(
        id_set(b, "Observation?_lastUpdated=gt2000-01-01")
            .await
            .len(),
        4
    );
    assert_eq!(
        id_set(b, "Observation?_lastUpdated=lt2000-01-01")
            .await
            .len(),
        0
    );
}

#[tokio::test]
async fn paging_follows_next_links_and_sorts_by_date() {
    let s = Running::start().await;
    let b = &s.base;
    // Created in a shuffled order of their dates.
    for i in 0..25u32 {
        let minute = (i * 7) % 25;
        let o = json!({"resourceType": "Observation", "id": format!("m{minute:02}"), "status": "final",
                       "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                       "subject": {"reference": "Patient/p"},
                       "effectiveDateTime": format!("2024-03-01T10:{minute:02}:00Z")});
        put(b, &o, None).await;
    }
    put(b, &json!({"resourceType": "Observation", "id": "undated", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/p"}}), None).await;

    async fn walk(first: String) -> (Vec<String>, Vec<u64>, usize) {
        let mut url = first;
        let (mut out, mut totals, mut pages) = (Vec::new(), Vec::new(), 0);
        loop {
            let a = get(&url).await;
            assert_eq!(a.status, StatusCode::OK, "{}", a.body);
            pages += 1;
            totals.push(a.body["total"].as_u64().unwrap());
            for e in a.body["entry"].as_array().into_iter().flatten() {
                out.push(e["resource"]["id"].as_str().unwrap().to_string());
            }
            match a.body["link"]
                .as_array()
                .unwrap()
                .iter()
                .find(|l| l["relation"] == "next")
            {
                Some(l) => url = l["url"].as_str().unwrap().to_string(),
                None => return (out, totals, pages),
            }
        }
    }
    let (desc, totals, pages) = walk(format!(
        "{b}/Observation?subject=Patient/p&_sort=-date&_count=10"
    ))
    .await;
    assert_eq!(pages, 3);
    assert!(totals.iter().all(|t| *t == 26));
    let mut want: Vec<String> = (0..25).rev().map(|m| format!("m{m:02}")).collect();
    want.push("undated".into());
    assert_eq!(desc, want, "newest first, undated last");

    let (asc, _, _) = walk(format!(
        "{b}/Observation?_sort=date&_count=7&date=ge2024-03-01T10:05:00Z"
    ))
    .await;
    let want: Vec<String> = (5..25).map(|m| format!("m{m:02}")).collect();
    assert_eq!(asc, want);

    // The next link keeps the prefix and the parameters, and moves _offset.
    let a = get(&format!(
        "{b}/Observation?_count=10&code=http://loinc.org%7C8867-4"
    ))
    .await;
    let next = a.body["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "next")
        .unwrap()["url"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(next.starts_with(&format!("{b}/Observation?")), "{next}");
    assert!(
        next.contains("_offset=10") && next.contains("code=http"),
        "{next}"
    );
    // Default order is creation order; _count=0 and _summary=count give only the total.
    assert_eq!(ids(b, "Observation?_count=2").await, vec!["m00", "m07"]);
    let a = get(&format!("{b}/Observation?_summary=count")).await;
    assert_eq!(a.body["total"], 26);
    assert!(a.body["entry"].as_array().unwrap().is_empty());
    // Served at the root too.
    let root = b.trim_end_matches("/fhir/R4");
    assert_eq!(ids(root, "Observation?_id=m03").await, vec!["m03"]);
    assert_eq!(
        ids(&format!("{root}/fhir"), "Observation?_id=m04").await,
        vec!["m04"]
    );
}
