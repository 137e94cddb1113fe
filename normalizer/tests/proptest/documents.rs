//! Arbitrary documents, bytes and envelopes never panic the normalizer.

use super::*;

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn arbitrary_documents_never_panic(body in document_body(), props in properties(), sys in properties()) {
        normalize_everywhere(body.to_string().as_bytes(), &props, &sys);
        // The document as the templates see it, and every other root as a document.
        let doc = normalizer::envelope(body.clone(), props, sys);
        for (_, n) in mappings() {
            let _ = n.normalize_document(&doc, None);
            let _ = n.normalize_document(&body, None);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(body in raw_body(), props in properties()) {
        normalize_everywhere(&body, &props, &Map::new());
    }

    /// `normalize` reads the event's property maps in place (a virtual envelope); it must
    /// give exactly what the envelope built as a value gives.
    #[test]
    fn virtual_envelope_normalizes_as_the_built_one(body in document_body(), props in properties(), sys in properties()) {
        let bytes = body.to_string();
        let parsed: Value = serde_json::from_str(&bytes).expect("serialized JSON parses");
        let doc = normalizer::envelope(parsed, props.clone(), sys.clone());
        let ingestion = Some(Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap());
        for (name, n) in mappings() {
            prop_assert_eq!(
                n.normalize(bytes.as_bytes(), &props, &sys, ingestion),
                n.normalize_document(&doc, ingestion),
                "{}", name
            );
        }
    }
}

proptest! {
    #![proptest_config(config(24))]

    /// Documents built in memory are not limited by the parser: nest far past 128.
    #[test]
    fn deep_documents_never_panic(depth in 120usize..400, object in any::<bool>(), msg in shaped_message()) {
        let mut v = msg;
        for _ in 0..depth {
            v = if object { json!({"x": v}) } else { json!([v]) };
        }
        for (_, n) in mappings() {
            let _ = n.normalize_document(&v, None);
            let _ = n.normalize_document(&normalizer::envelope(v.clone(), Map::new(), Map::new()), None);
        }
    }
}

/// serde_json refuses more than 128 levels: that is an invalid event, not a panic.
#[test]
fn nesting_past_the_parser_limit_is_invalid_data_format() {
    for object in [false, true] {
        let ok = nested_text(100, object);
        let too_deep = nested_text(200, object);
        for (name, n) in mappings() {
            // 100 levels parse; what the templates make of them is another matter.
            let r = n.normalize(ok.as_bytes(), &Map::new(), &Map::new(), None);
            if let Err(e) = r {
                assert_ne!(
                    e.error_type,
                    ErrorType::InvalidDataFormatException,
                    "{name}: 100 levels: {e}"
                );
            }
            let e = n
                .normalize(too_deep.as_bytes(), &Map::new(), &Map::new(), None)
                .unwrap_err();
            assert_eq!(
                e.error_type,
                ErrorType::InvalidDataFormatException,
                "{name}: {e}"
            );
        }
    }
}

/// Huge numbers parse to doubles and render as .NET does; one past `f64::MAX` is invalid.
#[test]
fn huge_numbers() {
    let (_, n) = &mappings()[0];
    let body = br#"{"heartRate": 123456789012345678901234567890, "deviceId": "d", "endDate": "2020-01-01T00:00:00Z"}"#;
    let ms = n.normalize(body, &Map::new(), &Map::new(), None).unwrap();
    assert_eq!(ms[0].properties[0].value, "1.2345678901234568E+29");
    let body = br#"{"heartRate": 1e308, "deviceId": "d", "endDate": "2020-01-01T00:00:00Z"}"#;
    let ms = n.normalize(body, &Map::new(), &Map::new(), None).unwrap();
    assert_eq!(ms[0].properties[0].value, "1E+308");
    let body = br#"{"heartRate": 1e309, "deviceId": "d", "endDate": "2020-01-01T00:00:00Z"}"#;
    let e = n
        .normalize(body, &Map::new(), &Map::new(), None)
        .unwrap_err();
    assert_eq!(e.error_type, ErrorType::InvalidDataFormatException);
}

/// NUL survives; a lone surrogate escape is rejected by the parser as invalid data.
#[test]
fn odd_unicode() {
    let (_, n) = &mappings()[0];
    let body = br#"{"heartRate": "\u0000", "deviceId": "\ud83d\ude00", "endDate": "2020-01-01T00:00:00Z"}"#;
    let ms = n.normalize(body, &Map::new(), &Map::new(), None).unwrap();
    assert_eq!(ms[0].properties[0].value, "\u{0}");
    assert_eq!(ms[0].device_id, "\u{1f600}".into());
    for lone in [r#""\ud800""#, r#""\udc00""#, r#""\ud800\u0041""#] {
        let body = format!(
            r#"{{"heartRate": {lone}, "deviceId": "d", "endDate": "2020-01-01T00:00:00Z"}}"#
        );
        let e = n
            .normalize(body.as_bytes(), &Map::new(), &Map::new(), None)
            .unwrap_err();
        assert_eq!(
            e.error_type,
            ErrorType::InvalidDataFormatException,
            "{lone}: {e}"
        );
    }
}
