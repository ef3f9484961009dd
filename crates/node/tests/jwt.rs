//! Single sign-on (issue 14): bearer JWTs of an identity provider whose key
//! set is served over real HTTP, with keys made at test time (an ES256 key
//! by rcgen, an RS256 key by the openssl command). Only the valid tokens
//! pass: expired, not yet valid, wrong issuer, wrong audience, unknown key,
//! `alg: none`, HS256 signed with the public key and a tampered payload are
//! all 401. An unknown key id becomes valid once the provider publishes it
//! (rotation). A verified token's roles and collections are enforced.
mod common;

use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use ragfleet_node::config::JwtConfig;
use serde_json::{json, Value};

const ISSUER: &str = "https://idp.example.test";
const AUDIENCE: &str = "ragfleet";

/// An ES256 key: its signing key and its public JWK.
fn es256_key(kid: &str) -> (EncodingKey, Value) {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = kp.public_key_raw(); // 0x04 || x || y
    assert_eq!(raw.len(), 65);
    let jwk = json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
        "x": B64.encode(&raw[1..33]), "y": B64.encode(&raw[33..])});
    (
        EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap(),
        jwk,
    )
}

/// An RS256 key made by `openssl genrsa`: its signing key, its public JWK
/// and its public key in PEM (for the HS256 confusion attack).
fn rs256_key(kid: &str, dir: &std::path::Path) -> (EncodingKey, Value, Vec<u8>) {
    let key = dir.join(format!("{kid}.pem"));
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl runs (scripts/setup.sh installs it)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let key_s = key.to_str().unwrap();
    run(&["genrsa", "-out", key_s, "2048"]);
    let modulus = String::from_utf8(run(&["rsa", "-in", key_s, "-noout", "-modulus"])).unwrap();
    let hex_n = modulus.trim().trim_start_matches("Modulus=");
    let n: Vec<u8> = (0..hex_n.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex_n[i..i + 2], 16).unwrap())
        .collect();
    let public_pem = run(&["rsa", "-in", key_s, "-pubout"]);
    let jwk = json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
        "n": B64.encode(&n), "e": "AQAB"});
    let pem = std::fs::read(&key).unwrap();
    (EncodingKey::from_rsa_pem(&pem).unwrap(), jwk, public_pem)
}

/// Serves `{"keys": [...]}` at `/jwks.json`; the keys can change.
async fn jwks_server(keys: Arc<Mutex<Vec<Value>>>) -> String {
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let keys = keys.clone();
            async move { axum::Json(json!({"keys": keys.lock().unwrap().clone()})) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/jwks.json")
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn claims(over: Value) -> Value {
    let mut c = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "alice",
        "exp": now() + 600, "iat": now(), "roles": ["reader"], "collections": ["alpha"]});
    for (k, v) in over.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

fn sign(alg: Algorithm, kid: &str, key: &EncodingKey, claims: &Value) -> String {
    let mut h = Header::new(alg);
    h.kid = Some(kid.into());
    encode(&h, claims, key).unwrap()
}

async fn me(node: &TestNode, token: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .get(node.url("/api/v1/me"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    let www = r
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    let body: Value = r.json().await.unwrap_or(Value::Null);
    if s == 401 {
        assert!(
            www.is_some_and(|w| w.starts_with("Bearer")),
            "401 without WWW-Authenticate"
        );
        assert!(
            !body.to_string().contains(token),
            "the error echoes the token"
        );
    }
    (s, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_valid_tokens_of_the_identity_provider_pass() {
    let dir = tempfile::tempdir().unwrap();
    let (es_key, es_jwk) = es256_key("ec-1");
    let (rs_key, rs_jwk, rs_public_pem) = rs256_key("rsa-1", dir.path());
    let (rotated_key, rotated_jwk) = es256_key("ec-2");
    let published = Arc::new(Mutex::new(vec![es_jwk, rs_jwk]));
    let jwks_url = jwks_server(published.clone()).await;
    let node = TestNode::start(|c| {
        c.auth.jwt = Some(JwtConfig {
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
            jwks_url: jwks_url.clone(),
            leeway_s: 5,
            // Tests rotate at once; the default rate limit is 30 s.
            jwks_refetch_s: 0,
            ..JwtConfig::default()
        })
    })
    .await;

    for (c, text) in [
        ("alpha", "The aurora is green over the alpha station."),
        ("beta", "Beta minutes: the aurora budget is confidential."),
    ] {
        let (s, b) = node
            .post_json("/api/v1/documents", &json!({"text": text, "collection": c}))
            .await;
        assert_eq!(s, 201, "{b}");
    }

    // Valid, ES256 and RS256: the identity, role and collections of the claims.
    let valid_es = sign(Algorithm::ES256, "ec-1", &es_key, &claims(json!({})));
    let (s, b) = me(&node, &valid_es).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        b,
        json!({"name": "sso:alice", "role": "reader", "collections": ["alpha"], "via": "jwt"})
    );
    let valid_rs = sign(
        Algorithm::RS256,
        "rsa-1",
        &rs_key,
        &claims(json!({"sub": "bob", "roles": "editor reader", "collections": "alpha beta"})),
    );
    let (s, b) = me(&node, &valid_rs).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["name"], "sso:bob");
    assert_eq!(b["role"], "editor");
    assert_eq!(b["collections"], json!(["alpha", "beta"]));

    // Everything else is refused.
    let bad: Vec<(&str, String)> = vec![
        (
            "expired",
            sign(
                Algorithm::ES256,
                "ec-1",
                &es_key,
                &claims(json!({"exp": now() - 3600})),
            ),
        ),
        (
            "nbf in the future",
            sign(
                Algorithm::ES256,
                "ec-1",
                &es_key,
                &claims(json!({"nbf": now() + 3600})),
            ),
        ),
        (
            "wrong issuer",
            sign(
                Algorithm::ES256,
                "ec-1",
                &es_key,
                &claims(json!({"iss": "https://evil.example.test"})),
            ),
        ),
        (
            "wrong audience",
            sign(
                Algorithm::ES256,
                "ec-1",
                &es_key,
                &claims(json!({"aud": "another-service"})),
            ),
        ),
        (
            "no exp",
            sign(
                Algorithm::ES256,
                "ec-1",
                &es_key,
                &claims(json!({"exp": null})),
            ),
        ),
        (
            "no user claim",
            sign(
                Algorithm::ES256,
                "ec-1",
                &es_key,
                &claims(json!({"sub": null})),
            ),
        ),
        (
            "signed by the RSA key under the EC key's id",
            sign(Algorithm::RS256, "ec-1", &rs_key, &claims(json!({}))),
        ),
        ("alg none", {
            let h = B64.encode(br#"{"alg":"none","typ":"JWT","kid":"ec-1"}"#);
            let p = B64.encode(claims(json!({"roles": ["admin"]})).to_string());
            format!("{h}.{p}.")
        }),
        (
            "HS256 signed with the RSA public key",
            sign(
                Algorithm::HS256,
                "rsa-1",
                &EncodingKey::from_secret(&rs_public_pem),
                &claims(json!({"roles": ["admin"]})),
            ),
        ),
        ("tampered payload", {
            let parts: Vec<&str> = valid_es.split('.').collect();
            let p = B64.encode(claims(json!({"roles": ["admin"]})).to_string());
            format!("{}.{p}.{}", parts[0], parts[2])
        }),
        (
            "signed by a key the provider does not publish",
            sign(Algorithm::ES256, "ec-2", &rotated_key, &claims(json!({}))),
        ),
    ];
    let mut wrong = Vec::new();
    for (what, token) in &bad {
        let (s, b) = me(&node, token).await;
        if s != 401 {
            wrong.push(format!("{what}: {s} {b}"));
        }
    }
    assert!(wrong.is_empty(), "accepted:\n{}", wrong.join("\n"));

    // Rotation: the provider publishes the new key; its tokens now pass.
    published.lock().unwrap().push(rotated_jwk);
    let rotated = sign(Algorithm::ES256, "ec-2", &rotated_key, &claims(json!({})));
    let (s, b) = me(&node, &rotated).await;
    assert_eq!(s, 200, "after rotation: {b}");

    // Roles and collections are enforced: a reader of alpha searches alpha,
    // not beta, and may not ingest; the OpenAI API takes the token too.
    let http = reqwest::Client::new();
    let search = |c: &str| {
        http.get(node.url(&format!("/api/v1/search?query=aurora&collection={c}")))
            .bearer_auth(&valid_es)
            .send()
    };
    assert_eq!(search("alpha").await.unwrap().status(), 200);
    assert_eq!(search("beta").await.unwrap().status(), 403);
    let ingest = http
        .post(node.url("/api/v1/documents"))
        .bearer_auth(&valid_es)
        .json(&json!({"text": "planted", "collection": "alpha"}))
        .send()
        .await
        .unwrap();
    assert_eq!(ingest.status(), 403);
    let models: Value = http
        .get(node.url("/v1/models"))
        .bearer_auth(&valid_es)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert!(ids.contains(&"ragfleet/alpha"), "{models}");
    assert!(!ids.contains(&"ragfleet/beta"), "{models}");
    // An API key still works beside SSO.
    let (s, b) = node.get("/api/v1/me").await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["via"], "key");
    node.stop().await.unwrap();
}

/// Config refuses what would open a hole: HMAC or `none` algorithms, a
/// missing issuer, audience or key set.
#[test]
fn jwt_config_refuses_unsafe_settings() {
    use ragfleet_node::config::NodeConfig;
    let with = |jwt: JwtConfig| {
        let mut c = NodeConfig::default();
        c.auth.jwt = Some(jwt);
        c.validate().map_err(|e| e.to_string())
    };
    let ok = JwtConfig {
        issuer: ISSUER.into(),
        audience: AUDIENCE.into(),
        jwks_url: "https://idp.example.test/jwks.json".into(),
        ..JwtConfig::default()
    };
    assert!(with(ok.clone()).is_ok());
    for alg in ["HS256", "none", "hs512"] {
        let e = with(JwtConfig {
            algorithms: vec![alg.into()],
            ..ok.clone()
        })
        .unwrap_err();
        assert!(e.contains("never none or HMAC"), "{alg}: {e}");
    }
    let e = with(JwtConfig {
        issuer: String::new(),
        ..ok.clone()
    })
    .unwrap_err();
    assert!(e.contains("auth.jwt.issuer is required"), "{e}");
    let e = with(JwtConfig {
        jwks_url: "file:///etc/keys".into(),
        ..ok
    })
    .unwrap_err();
    assert!(e.contains("jwks_url must be an http(s) URL"), "{e}");
}
