//! In-process tests of the defences against hostile clients: non-JSON bodies (415), the
//! `WWW-Authenticate` challenge on 401, `--metrics-api-key`, and the WebSocket `Origin`
//! check. Socket-level ones (slow bodies, big frames, idle sockets) are black-box, in
//! `tests/tests/hostile_clients.rs`.

use salvo::http::header::{CONTENT_TYPE, WWW_AUTHENTICATE};

use super::*;

#[tokio::test]
async fn non_json_bodies_are_415_on_every_json_route() {
    let app = app(&[]).await;
    let json_routes = [routes::CHAT_COMPLETIONS, routes::COMPLETIONS, routes::RESPONSES, routes::TOKENIZE, routes::DETOKENIZE];
    let body = serde_json::to_vec(&json!({"model": MODEL, "prompt": "hi"})).unwrap();
    for route in json_routes {
        for content_type in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"] {
            let mut res = TestClient::post(url(route))
                .add_header(CONTENT_TYPE, content_type, true)
                .body(body.clone())
                .send(&app.service)
                .await;
            assert_error(&mut res, 415, Some("unsupported_media_type"), None).await;
        }
        // No Content-Type at all is refused too.
        let mut res = TestClient::post(url(route)).body(body.clone()).send(&app.service).await;
        assert_error(&mut res, 415, Some("unsupported_media_type"), None).await;
    }
    // Parameters and case do not matter.
    let res = TestClient::post(url(routes::TOKENIZE))
        .add_header(CONTENT_TYPE, "Application/JSON; charset=UTF-8", true)
        .body(body)
        .send(&app.service)
        .await;
    assert_eq!(res.status_code, Some(StatusCode::OK));
}

#[tokio::test]
async fn unauthorized_answers_carry_a_bearer_challenge() {
    let app = app(&["--api-key", "sk-a"]).await;
    for bearer in [None, Some("sk-wrong")] {
        let mut request = TestClient::get(url(routes::MODELS));
        if let Some(key) = bearer {
            request = request.bearer_auth(key);
        }
        let mut res = request.send(&app.service).await;
        assert_eq!(res.headers().get(WWW_AUTHENTICATE).map(|v| v.as_bytes()), Some(&b"Bearer"[..]));
        assert_error(&mut res, 401, Some("invalid_api_key"), None).await;
    }
    // Auth comes before the content-type check: a keyless client learns nothing else.
    let mut res = TestClient::post(url(routes::CHAT_COMPLETIONS)).text("x").send(&app.service).await;
    assert_error(&mut res, 401, Some("invalid_api_key"), None).await;
}

#[tokio::test]
async fn metrics_need_the_key_only_with_the_flag() {
    let open = app(&["--api-key", "sk-a"]).await;
    let res = TestClient::get(url(routes::METRICS)).send(&open.service).await;
    assert_eq!(res.status_code, Some(StatusCode::OK));

    let guarded = app(&["--api-key", "sk-a", "--metrics-api-key"]).await;
    let mut res = TestClient::get(url(routes::METRICS)).send(&guarded.service).await;
    assert_error(&mut res, 401, Some("invalid_api_key"), None).await;
    let mut res = TestClient::get(url(routes::METRICS)).bearer_auth("sk-a").send(&guarded.service).await;
    assert_eq!(res.status_code, Some(StatusCode::OK));
    assert!(res.take_string().await.unwrap().contains("stellarchat"));
    // Health and readiness stay open for probes.
    let res = TestClient::get(url(routes::HEALTH)).send(&guarded.service).await;
    assert_eq!(res.status_code, Some(StatusCode::OK));
}

/// A WebSocket handshake request, with an optional `Origin`.
async fn ws_handshake(service: &Service, origin: Option<&str>) -> Response {
    let mut request = TestClient::get(url(routes::CHAT_WS))
        .add_header("host", "127.0.0.1:8080", true)
        .add_header("connection", "upgrade", true)
        .add_header("upgrade", "websocket", true)
        .add_header("sec-websocket-version", "13", true)
        .add_header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==", true);
    if let Some(origin) = origin {
        request = request.add_header("origin", origin, true);
    }
    request.send(service).await
}

/// In process there is no connection to upgrade: a handshake that passed the origin check
/// fails one step later, on the missing upgrade state (the black-box suite upgrades for real).
async fn assert_passes_origin_check(mut res: Response, origin: Option<&str>) {
    let body = res.take_string().await.unwrap_or_default();
    assert_eq!(res.status_code, Some(StatusCode::BAD_REQUEST), "origin {origin:?}: {body}");
    assert!(body.contains("no upgrade state"), "origin {origin:?}: {body}");
}

#[tokio::test]
async fn websocket_origins_are_checked_before_the_upgrade() {
    let listed = app(&["--cors-origin", "https://app.example"]).await;
    let mut res = ws_handshake(&listed.service, Some("https://evil.example")).await;
    let body = assert_error(&mut res, 403, None, None).await;
    assert_eq!(body["error"]["type"], "invalid_request_error");
    for allowed in [None, Some("http://127.0.0.1:8080"), Some("https://app.example")] {
        assert_passes_origin_check(ws_handshake(&listed.service, allowed).await, allowed).await;
    }

    // Without --cors-origin only the same origin (and non-browsers) may connect.
    let plain = app(&[]).await;
    let mut res = ws_handshake(&plain.service, Some("https://app.example")).await;
    assert_error(&mut res, 403, None, None).await;
    let same = Some("http://127.0.0.1:8080");
    assert_passes_origin_check(ws_handshake(&plain.service, same).await, same).await;
}
