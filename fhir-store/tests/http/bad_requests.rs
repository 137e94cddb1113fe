//! Bad requests get an `OperationOutcome`, never a crash; oversized bodies a 413.

use super::*;

#[tokio::test]
async fn bad_requests_get_an_operation_outcome_never_a_crash() {
    let s = Running::start().await;
    let b = &s.base;
    let raw = |method: Method, url: String, body: Vec<u8>| async move {
        let r = Client::new()
            .request(method, url)
            .body(body)
            .send()
            .await
            .expect("request");
        let status = r.status();
        let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap_or(Value::Null);
        (status.as_u16(), v)
    };
    let cases: Vec<(Method, String, Vec<u8>, u16)> = vec![
        (
            Method::PUT,
            format!("{b}/Patient/p1"),
            b"{not json".to_vec(),
            400,
        ),
        (Method::PUT, format!("{b}/Patient/p1"), Vec::new(), 400),
        (
            Method::PUT,
            format!("{b}/Patient/p1"),
            b"[1,2]".to_vec(),
            400,
        ),
        (
            Method::PUT,
            format!("{b}/Patient/p1"),
            br#"{"resourceType":"Device","id":"p1"}"#.to_vec(),
            400,
        ),
        (
            Method::PUT,
            format!("{b}/Patient/p1"),
            br#"{"resourceType":"Patient","id":"p2"}"#.to_vec(),
            400,
        ),
        (
            Method::PUT,
            format!("{b}/Patient/p1"),
            br#"{"resourceType":"Patient","id":7}"#.to_vec(),
            400,
        ),
        (
            Method::PUT,
            format!("{b}/Patient/bad%20id"),
            br#"{"resourceType":"Patient"}"#.to_vec(),
            400,
        ),
        (
            Method::PUT,
            format!("{b}/Patient/{}", "x".repeat(65)),
            br#"{"resourceType":"Patient"}"#.to_vec(),
            400,
        ),
        (
            Method::PUT,
            format!("{b}/Patient/p1"),
            br#"{"resourceType":"Patient","meta":"odd"}"#.to_vec(),
            201,
        ),
        (
            Method::PUT,
            format!("{b}/Patient/p1"),
            "[".repeat(100_000).into_bytes(),
            400,
        ),
        (
            Method::POST,
            format!("{b}/Patient"),
            br#"{"resourceType":"Observation"}"#.to_vec(),
            400,
        ),
        (Method::DELETE, format!("{b}/Patient/p1"), Vec::new(), 405),
        (Method::GET, format!("{b}/patient"), Vec::new(), 404),
        (
            Method::GET,
            format!("{b}/Patient/p1/_history/x"),
            Vec::new(),
            404,
        ),
        (
            Method::GET,
            format!("{b}/Patient/p1/a/b/c"),
            Vec::new(),
            404,
        ),
        (
            Method::GET,
            format!("{b}/Patient?_count=abc"),
            Vec::new(),
            400,
        ),
        (
            Method::GET,
            format!("{b}/Patient?_offset=99999999999999999999"),
            Vec::new(),
            400,
        ),
        (
            Method::GET,
            format!("{b}/Patient?_offset=9223372036854775807"),
            Vec::new(),
            200,
        ),
        (
            Method::GET,
            format!("{b}/Patient?identifier=%FF%FE"),
            Vec::new(),
            200,
        ),
        (
            Method::GET,
            format!("{b}/Patient?identifier=%7C"),
            Vec::new(),
            400,
        ),
        (
            Method::GET,
            format!("{b}/Patient?date=ge99999-01-01"),
            Vec::new(),
            400,
        ),
        (
            Method::GET,
            format!("{b}/Patient?identifier={}", vec!["v"; 5000].join(",")),
            Vec::new(),
            400,
        ),
        (
            Method::GET,
            format!("{b}/Patient?_id={}", vec!["a"; 100].join(",")),
            Vec::new(),
            200,
        ),
        (Method::GET, format!("{b}/metadata"), Vec::new(), 200),
    ];
    for (method, url, body, want) in cases {
        let (status, v) = raw(method.clone(), url.clone(), body).await;
        assert_eq!(status, want, "{method} {url}: {v}");
        if status >= 400 {
            assert_eq!(v["resourceType"], "OperationOutcome", "{method} {url}");
        }
    }
    // The store still works.
    assert_eq!(get(&format!("{b}/Patient/p1")).await.status, StatusCode::OK);
}

#[tokio::test]
async fn oversized_bodies_are_answered_413() {
    // The default limit: 16 MiB.
    let s = Running::start().await;
    let big = json!({"resourceType": "Basic", "id": "big", "code": {"text": "x".repeat(17 * 1024 * 1024)}});
    let a = put(&s.base, &big, None).await;
    assert_outcome(&a, 413, "exceeds");
    let fits =
        json!({"resourceType": "Basic", "id": "fits", "code": {"text": "x".repeat(1024 * 1024)}});
    assert_eq!(put(&s.base, &fits, None).await.status, StatusCode::CREATED);

    // A configured limit, also when the body is chunked (no Content-Length).
    let dir = tempfile::tempdir().unwrap();
    let small = Running::at(
        &dir.path().join("s.sqlite"),
        ServeConfig {
            max_body_bytes: 1000,
            ..Default::default()
        },
    )
    .await;
    let body =
        json!({"resourceType": "Basic", "id": "b", "code": {"text": "y".repeat(2000)}}).to_string();
    let addr = small
        .base
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut req = format!("PUT /fhir/R4/Basic/b HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
    for c in body.as_bytes().chunks(100) {
        req.push_str(&format!(
            "{:x}\r\n{}\r\n",
            c.len(),
            String::from_utf8_lossy(c)
        ));
    }
    req.push_str("0\r\n\r\n");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The server may answer and close before reading everything; a failed write is fine.
    let _ = tcp.write_all(req.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}
