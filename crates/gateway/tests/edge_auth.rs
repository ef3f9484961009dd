//! `[auth] require_credentials`: a request with no credential at all gets
//! 401 at the gateway and never reaches a node; one with a credential (any
//! `Authorization`, or a session cookie) goes on for the node to judge.
mod common;

use common::*;
use ragfleet_gateway::Config;

fn config(up: &Upstream, auth: &str) -> String {
    format!(
        r#"
{auth}

[[route]]
prefix = "/"
pool = "p"

[pool.p]
servers = [{{ addr = "{}" }}]
"#,
        up.addr
    )
}

#[tokio::test]
async fn requests_without_any_credential_stop_at_the_gateway() {
    let up = Upstream::start("node").await;
    let gw = TestGateway::start(&config(
        &up,
        r#"[auth]
require_credentials = true
open_paths = ["/health", "/api/v1/auth/login", "/assets/"]"#,
    ))
    .await;

    // Refused: nothing, an empty Authorization, an empty or foreign cookie.
    for headers in [
        vec![],
        vec![("authorization", "")],
        vec![("cookie", "ragfleet_session=")],
        vec![("cookie", "theme=dark; other_session=abc")],
    ] {
        let r = get(gw.addr, "/api/v1/chat", &headers).await;
        assert_eq!(r.status, 401, "{headers:?}: {}", r.body);
        assert_eq!(r.headers["www-authenticate"], "Bearer realm=\"ragfleet\"");
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    // An open path that only looks like one: exact entries match exactly.
    let r = get(gw.addr, "/api/v1/auth/login2", &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(up.hits(), 0, "no refused request reached the node");

    // Allowed: a bearer credential, a session cookie among others, the
    // open paths (exact and prefix).
    for (path, headers) in [
        ("/api/v1/chat", vec![("authorization", "Bearer rf_abc")]),
        (
            "/api/v1/chat",
            vec![("cookie", "theme=dark; ragfleet_session=tok")],
        ),
        ("/health", vec![]),
        ("/api/v1/auth/login", vec![]),
        ("/assets/app.js", vec![]),
    ] {
        let r = get(gw.addr, path, &headers).await;
        assert_eq!(r.status, 200, "{path} {headers:?}: {}", r.body);
    }
    assert_eq!(
        up.hits(),
        4,
        "/health is counted apart by the test upstream"
    );
    let text = gw.handle.metrics_text();
    assert!(
        text.contains("ragfleet_gateway_unauthenticated_total 5"),
        "{text}"
    );
}

#[tokio::test]
async fn without_the_setting_everything_goes_through() {
    let up = Upstream::start("node").await;
    let gw = TestGateway::start(&config(&up, "")).await;
    let r = get(gw.addr, "/api/v1/chat", &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(up.hits(), 1);
}

#[test]
fn bad_auth_settings_are_refused_with_the_key() {
    for (auth, key) in [
        ("open_paths = [\"health\"]", "auth.open_paths[0]"),
        (
            "credential_cookies = [\"a b\"]",
            "auth.credential_cookies[0]",
        ),
        ("require_credential = true", "require_credential"),
    ] {
        let text = format!(
            "[auth]\n{auth}\n\n[[route]]\nprefix = \"/\"\npool = \"p\"\n\n[pool.p]\nservers = [{{ addr = \"127.0.0.1:9\" }}]\n"
        );
        let err = Config::parse(&text, "gw.toml").unwrap_err().to_string();
        assert!(err.contains(key), "{auth}: {err}");
    }
}
