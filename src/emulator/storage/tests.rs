//! The Storage handlers called directly, as the TLS listener calls them.

use http::HeaderMap;

use super::*;

const WHO: &str = "writer@emulator-project.iam.gserviceaccount.com";
const HOST: &str = "storage.googleapis.com";

fn state() -> State {
    State::new("vm@emulator-project.iam.gserviceaccount.com".into(), None).unwrap()
}

fn call(
    state: &State,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (StatusCode, HeaderMap, Bytes) {
    use http_body_util::BodyExt;
    let mut req = http::Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let (parts, ()) = req.body(()).unwrap().into_parts();
    let reply = handle(
        state,
        HOST,
        &parts,
        Bytes::copy_from_slice(body),
        Some(WHO.into()),
        true,
        None,
    );
    let status = reply.status();
    let headers = reply.headers().clone();
    let Ok(body) = ready(reply.into_body().collect());
    let body = body.to_bytes();
    (status, headers, body)
}

/// `Full` is ready at once: poll it to completion without a runtime.
fn ready<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => panic!("a Full body is always ready"),
    }
}

#[test]
fn crc32c_is_written_as_storage_writes_it() {
    // As google-crc32c (the Python client's checker) encodes it.
    assert_eq!(crc32c_b64(crc32c(b"hello\n")), "NT3Yvg==");
}

#[test]
fn media_upload_then_download_whole_and_ranged() {
    let s = state();
    let (st, _, body) = call(
        &s,
        "POST",
        "/upload/storage/v1/b/bk/o?uploadType=media&name=dir%2Fa.bin",
        &[("content-type", "application/x-test")],
        b"0123456789",
    );
    assert_eq!(st, StatusCode::OK, "{body:?}");
    let o: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(o["name"], "dir/a.bin");
    assert_eq!(o["size"], "10");
    assert_eq!(o["contentType"], "application/x-test");

    let (st, h, body) = call(
        &s,
        "GET",
        "/storage/v1/b/bk/o/dir%2Fa.bin?alt=media",
        &[],
        b"",
    );
    assert_eq!((st, &body[..]), (StatusCode::OK, &b"0123456789"[..]));
    assert_eq!(
        h["x-goog-hash"],
        format!("crc32c={}", o["crc32c"].as_str().unwrap())
    );

    let (st, h, body) = call(
        &s,
        "GET",
        "/download/storage/v1/b/bk/o/dir%2Fa.bin?alt=media",
        &[("range", "bytes=2-4")],
        b"",
    );
    assert_eq!((st, &body[..]), (StatusCode::PARTIAL_CONTENT, &b"234"[..]));
    assert_eq!(h["content-range"], "bytes 2-4/10");
    assert!(h.get("x-goog-hash").is_none());

    let calls = s.lock().data_calls.clone();
    assert_eq!(calls.len(), 3);
    assert_eq!(
        (calls[0].endpoint, calls[0].bytes, calls[0].upload_type),
        ("storage.upload", 10, "media")
    );
    assert_eq!((calls[2].endpoint, calls[2].bytes), ("storage.download", 3));
    assert!(calls
        .iter()
        .all(|c| c.principal == WHO && c.resource == "bk/dir/a.bin"));
}

#[test]
fn multipart_upload_checks_the_claimed_crc32c() {
    let s = state();
    let body = |crc: &str| {
        format!("--b\r\ncontent-type: application/json\r\n\r\n{{\"name\":\"m\",\"crc32c\":\"{crc}\"}}\r\n--b\r\ncontent-type: text/plain\r\n\r\nhello\n\r\n--b--")
    };
    let ct = [("content-type", "multipart/related; boundary=b")];
    let uri = "/upload/storage/v1/b/bk/o?uploadType=multipart";
    let (st, _, err) = call(&s, "POST", uri, &ct, body("AAAAAA==").as_bytes());
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&err).contains("doesn't match calculated CRC32C"));
    let (st, _, ok) = call(&s, "POST", uri, &ct, body("NT3Yvg==").as_bytes());
    assert_eq!(st, StatusCode::OK, "{ok:?}");
    assert_eq!(lookup(&s, "bk", "m").unwrap().content_type, "text/plain");
}

#[test]
fn resumable_upload_in_chunks_with_a_status_query() {
    let s = state();
    let (st, h, _) = call(
        &s,
        "POST",
        "/upload/storage/v1/b/bk/o?uploadType=resumable",
        &[("x-upload-content-type", "text/plain")],
        br#"{"name":"r.txt"}"#,
    );
    assert_eq!(st, StatusCode::OK);
    let location = h["location"].to_str().unwrap();
    let uri = location
        .strip_prefix("https://storage.googleapis.com")
        .unwrap();

    let put = |range: &str, body: &[u8]| call(&s, "PUT", uri, &[("content-range", range)], body);
    let (st, h, _) = put("bytes 0-3/*", b"abcd");
    assert_eq!(
        (st, h["range"].to_str().unwrap()),
        (StatusCode::PERMANENT_REDIRECT, "bytes=0-3")
    );
    // A repeated chunk is not appended twice.
    let (st, h, _) = put("bytes 0-3/*", b"abcd");
    assert_eq!(
        (st, h["range"].to_str().unwrap()),
        (StatusCode::PERMANENT_REDIRECT, "bytes=0-3")
    );
    let (st, _, _) = put("bytes */10", b"");
    assert_eq!(st, StatusCode::PERMANENT_REDIRECT);
    let (st, _, body) = put("bytes 4-9/10", b"efghij");
    assert_eq!(st, StatusCode::OK, "{:?}", &body[..]);
    let o: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (o["size"].as_str(), o["contentType"].as_str()),
        (Some("10"), Some("text/plain"))
    );
    assert_eq!(&lookup(&s, "bk", "r.txt").unwrap().data[..], b"abcdefghij");
    let (st, _, _) = put("bytes */10", b"");
    assert_eq!(
        st,
        StatusCode::NOT_FOUND,
        "the session is gone once complete"
    );
    let up = s.lock().data_calls.clone();
    assert_eq!(
        (up.len(), up[0].bytes, up[0].upload_type),
        (1, 10, "resumable")
    );
}

#[test]
fn listing_applies_prefix_and_delimiter_and_keeps_hello() {
    let s = state();
    s.put_object("bk", "a/1", "text/plain", Bytes::from_static(b"1"));
    s.put_object("bk", "a/2", "text/plain", Bytes::from_static(b"22"));
    s.put_object("other", "x", "text/plain", Bytes::from_static(b"x"));
    let (_, _, body) = call(&s, "GET", "/storage/v1/b/bk/o", &[], b"");
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let names: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a/1", "a/2", "hello.txt"]);
    assert_eq!(v["emulator"]["principal"], WHO);
    let (_, _, body) = call(&s, "GET", "/storage/v1/b/bk/o?delimiter=%2F", &[], b"");
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["prefixes"], serde_json::json!(["a/"]));
    assert_eq!(v["items"].as_array().unwrap().len(), 1);
}
