//! Certificate-bound consent tokens (RFC 8705) and SPIFFE identities over a TLS listener
//! that requires client certificates (`consentry-mtls.yaml`), with a CA, a server
//! certificate and client certificates made here.
//!
//! Envoy hands the plugin only the FIRST URI SAN of a peer certificate; a certificate
//! with two identities must therefore not pass as the first one. The plugin reads the
//! SANs from the certificate itself.

use std::time::Duration;

use consentry_envoy::{HttpResponse, RunningEnvoy};
use serde_json::{Value, json};

use crate::support::*;
use crate::tls::{HttpsClient, Identity, Pki};

const INSURER_ID: &str = "spiffe://partner.example/ns/claims/sa/insurer";
const OTHER_ID: &str = "spiffe://partner.example/ns/claims/sa/other";
/// A second issuer, same keys, that requires the caller's one SPIFFE ID to be the grantee.
const MESH_ISSUER: &str = "https://mesh.consent.example.com";

/// The example policy, plus: a second issuer that requires the SPIFFE grantee; on the
/// record route a rule for callers whose SPIFFE ID is the grantee; on the billing route a
/// rule for one allow-listed SPIFFE ID.
fn mtls_policy() -> Value {
    let mut policy = example_policy();
    let mut mesh = policy["issuers"][0].clone();
    mesh["issuer"] = MESH_ISSUER.into();
    let inline = mesh["keys"]["inline"].clone();
    mesh["keys"] = json!({ "inline": inline });
    mesh.as_object_mut().unwrap().remove("revocation");
    mesh["binding"] = json!({ "require_spiffe_grantee": true });
    policy["issuers"].as_array_mut().unwrap().push(mesh);

    let mut add_rule = |route: &str, rule: Value| {
        let routes = policy["routes"].as_array_mut().unwrap();
        let route = routes.iter_mut().find(|r| r["name"] == route).unwrap();
        route["rules"].as_array_mut().unwrap().push(rule);
    };
    add_rule(
        "patient-record",
        json!({
            "name": "mesh-caller-is-grantee",
            "purposes": ["claims"],
            "caller_is_grantee": true,
            "subject": {"is": "id"},
            "consent_actions": ["read"],
            "release": ["billing", "identity"]
        }),
    );
    add_rule(
        "patient-billing",
        json!({
            "name": "mesh-spiffe-allow-list",
            "purposes": ["claims"],
            "spiffe_ids": [INSURER_ID],
            "subject": {"is": "id"},
            "consent_actions": ["read"],
            "release": ["billing"]
        }),
    );
    policy
}

/// The insurer's claims with `client_id` set.
fn grantee_claims(client_id: &str) -> serde_json::Map<String, Value> {
    let mut c = claims("insurer");
    c.insert("client_id".into(), client_id.into());
    c
}

/// RFC 8705 §3: a certificate-bound token presented with another certificate is an
/// invalid token, 401 with the `invalid_token` challenge, masked like any other.
fn assert_unbound(r: &HttpResponse, who: &str) {
    assert_problem(r, 401, "token_unbound");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer error=\"invalid_token\""),
        "{who}: {:?}",
        r.headers
    );
    assert!(!r.text().contains("Whitcombe"), "{who}: {}", r.text());
}

struct Callers {
    /// One URI SAN: INSURER_ID.
    one: HttpsClient,
    /// One URI SAN: OTHER_ID.
    other: HttpsClient,
    /// Two URI SANs: INSURER_ID first (what Envoy reports), then OTHER_ID.
    two: HttpsClient,
    one_identity: Identity,
}

fn status_and_code(r: &HttpResponse) -> (u16, String) {
    (r.status, outcome(r))
}

fn get(client: &HttpsClient, path: &str, token: &str) -> HttpResponse {
    client
        .get(path, &[("authorization", &bearer(token))])
        .unwrap_or_else(|e| panic!("GET {path} over mTLS: {e:#}"))
}

fn start_mtls(service: &consentry_example_service::RunningService, pki: &Pki) -> RunningEnvoy {
    let dir = tempfile::tempdir().unwrap();
    pki.write_server_files(dir.path()).unwrap();
    let envoy = start(
        envoy_for(service, &mtls_policy())
            .template("consentry-mtls.yaml")
            .var("TLS_DIR", dir.path().display()),
    );
    // Envoy has read its certificates; the directory can go.
    drop(dir);
    envoy
}

#[test]
fn certificate_bound_tokens_and_spiffe_identities_over_mtls() {
    let _watchdog = watchdog("mtls", Duration::from_secs(60));
    let pki = Pki::generate("Consentry test CA").unwrap();
    let one_identity = pki.client("insurer", &[INSURER_ID]).unwrap();
    let other_identity = pki.client("other", &[OTHER_ID]).unwrap();
    let two_identity = pki.client("both", &[INSURER_ID, OTHER_ID]).unwrap();
    let service = example_service(60);
    let envoy = start_mtls(&service, &pki);
    let addr = envoy.listen_addr();
    let callers = Callers {
        one: HttpsClient::new(addr, &pki.ca, Some(&one_identity)).unwrap(),
        other: HttpsClient::new(addr, &pki.ca, Some(&other_identity)).unwrap(),
        two: HttpsClient::new(addr, &pki.ca, Some(&two_identity)).unwrap(),
        one_identity,
    };

    // Without a client certificate there is no connection: the filter never runs.
    let anonymous = HttpsClient::new(addr, &pki.ca, None).unwrap();
    let err = anonymous.get("/patients/p-1", &[]);
    assert!(
        err.is_err(),
        "a client without a certificate was answered: {:?}",
        err.map(|r| (r.status, r.text()))
    );

    // (1) cnf.x5t#S256 of client one's certificate: it passes from client one only.
    let mut bound = claims("insurer");
    bound.insert(
        "cnf".into(),
        json!({ "x5t#S256": callers.one_identity.x5t_s256() }),
    );
    let bound = sign(&bound);
    let r = get(&callers.one, "/patients/p-1", &bound);
    assert_eq!(r.status, 200, "{}", r.text());
    let record = r.json().unwrap();
    assert!(record["identity"].get("national_id").is_none(), "{record}");
    assert!(record.get("clinical").is_none(), "{record}");
    for (who, client) in [("other", &callers.other), ("two-SAN", &callers.two)] {
        assert_unbound(&get(client, "/patients/p-1", &bound), who);
    }
    // An unbound token of the same consent still passes from any certificate.
    let unbound = sign(&claims("insurer"));
    assert_eq!(get(&callers.other, "/patients/p-1", &unbound).status, 200);

    // (2) No cnf; the rule requires the caller's SPIFFE ID to be the grantee.
    let token = sign(&grantee_claims(INSURER_ID));
    assert_eq!(
        status_and_code(&get(&callers.one, "/patients/p-1", &token)),
        (200, "ok".to_owned())
    );
    assert_problem(
        &get(&callers.other, "/patients/p-1", &token),
        403,
        "access_denied",
    );
    // Envoy reports INSURER_ID as this certificate's URI SAN (its first); with two
    // identities it is nobody's.
    assert_problem(
        &get(&callers.two, "/patients/p-1", &token),
        403,
        "access_denied",
    );

    // (3) No cnf; the rule allow-lists one SPIFFE ID (the grantee is not a partner).
    let token = sign(&grantee_claims("mesh-partner"));
    let r = get(&callers.one, "/patients/p-1/billing", &token);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json().unwrap()["billing"].is_object());
    assert_problem(
        &get(&callers.other, "/patients/p-1/billing", &token),
        403,
        "access_denied",
    );
    assert_problem(
        &get(&callers.two, "/patients/p-1/billing", &token),
        403,
        "access_denied",
    );

    // (4) The issuer requires the SPIFFE grantee: another identity, or two of them, is
    // refused before any rule is looked at.
    // That issuer publishes no status list.
    let mut mesh = grantee_claims(INSURER_ID);
    mesh.insert("iss".into(), MESH_ISSUER.into());
    mesh.remove("status");
    let mesh = sign(&mesh);
    let r = get(&callers.one, "/patients/p-1", &mesh);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_unbound(&get(&callers.other, "/patients/p-1", &mesh), "mesh, other");
    assert_unbound(&get(&callers.two, "/patients/p-1", &mesh), "mesh, two-SAN");

    // The audit names callers by their grantee, never by a certificate's contents.
    let records = wait_for_decisions(&envoy, 13);
    assert!(
        records.iter().all(|r| !r.to_string().contains("BEGIN")),
        "a certificate reached the audit trail"
    );
    assert!(!envoy.log().contains("Uncaught RuntimeError"));
}

/// The development certificates the mTLS template uses by default
/// (`envoy/configs/dev-tls/`) serve a TLS handshake with a client certificate from the
/// development CA.
#[test]
fn the_mtls_template_works_with_its_development_certificates() {
    let _watchdog = watchdog("dev-tls", Duration::from_secs(60));
    let dir = consentry_envoy::dev_tls_dir();
    if std::env::var_os("CONSENTRY_REGENERATE_DEV_TLS").is_some() {
        crate::tls::write_dev_tls(&dir).unwrap();
    }
    let pki = crate::tls::load_dev_tls(&dir).unwrap_or_else(|e| {
        panic!(
            "{e:#}\nregenerate them with CONSENTRY_REGENERATE_DEV_TLS=1 cargo test -p \
             consentry-envoy --test e2e the_mtls_template_works"
        )
    });
    let client = pki.client("dev-client", &[INSURER_ID]).unwrap();
    let service = example_service(60);
    let envoy = start(envoy_for(&service, &example_policy()).template("consentry-mtls.yaml"));
    let https = HttpsClient::new(envoy.listen_addr(), &pki.ca, Some(&client)).unwrap();
    let r = https
        .get(
            "/patients/p-1",
            &[("authorization", &bearer(&sign(&claims("insurer"))))],
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}
