//! The ARM + Entra double against the real `azure_identity` 1.x credentials
//! and `azure_core` 1.x's HTTP pipeline over real TLS: token flows, ARM
//! reads and long-running writes, the account lock, throttling, limits,
//! validation, fault injection, the log, and the binary.

use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::credentials::{Secret, SecretBytes, TokenCredential};
use azure_core::http::headers::HeaderName;
use azure_core::http::policies::auth::BearerTokenAuthorizationPolicy;
use azure_core::http::{
    ClientOptions, Context, Method, Pipeline, PipelineSendOptions, Request, RetryOptions, Transport, Url,
};
use azure_identity::{
    ClientAssertionCredentialOptions, ClientCertificateCredential, ClientCertificateCredentialOptions,
    ClientSecretCredential, ClientSecretCredentialOptions, ManagedIdentityCredential, ManagedIdentityCredentialOptions,
    UserAssignedId, WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};
use dbgrant_doubles::arm::{
    ARM_SCOPE, Account, AccountRef, ArmAccess, ArmDouble, ArmDoubleConfig, DATA_CONTRIBUTOR_ID, DATA_READER_ID,
    DEFAULT_API_VERSION, DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, DEFAULT_MI_OBJECT_ID, DEFAULT_OBJECT_ID,
    DEFAULT_WORKLOAD_SUBJECT, FEDERATED_TOKEN_AUDIENCE, FaultTarget, FederatedCredential, OperationStatus, Principal,
    RequestKind, RoleAssignment, RoleDefinition, new_guid,
};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

// ----------------------------------------------------------------- helpers

async fn json_of(response: reqwest::Response) -> Value {
    serde_json::from_slice(&response.bytes().await.expect("body")).expect("JSON body")
}

fn http_client(ca_pem: &str) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("CA PEM")])
        .build()
        .expect("reqwest client")
}

/// Options every credential and pipeline gets: the double's CA as the only
/// root, the double as the authority host, and (by default) no retries so
/// tests see raw statuses.
fn client_options(double: &ArmDouble) -> ClientOptions {
    let mut cloud = CustomConfiguration::default();
    cloud.authority_host = double.authority_host();
    ClientOptions {
        transport: Some(Transport::new(Arc::new(http_client(double.ca_cert_pem())))),
        cloud: Some(Arc::new(CloudConfiguration::Custom(cloud))),
        retry: RetryOptions::none(),
        ..ClientOptions::default()
    }
}

fn secret_credential(double: &ArmDouble, client_id: &str, secret: &str) -> Arc<ClientSecretCredential> {
    ClientSecretCredential::new(
        &double.tenant_id(),
        client_id.to_string(),
        Secret::new(secret.to_string()),
        Some(ClientSecretCredentialOptions { client_options: client_options(double) }),
    )
    .expect("credential")
}

fn default_credential(double: &ArmDouble) -> Arc<dyn TokenCredential> {
    secret_credential(double, DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET)
}

struct Reply {
    status: u16,
    headers: azure_core::http::headers::Headers,
    body: Value,
}

impl Reply {
    fn header(&self, name: &'static str) -> Option<String> {
        self.headers.get_optional_string(&HeaderName::from_static(name))
    }

    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or("")
    }
}

/// A tiny ARM client on azure_core's pipeline with the bearer token policy.
struct Arm {
    pipeline: Pipeline,
    base: String,
}

impl Arm {
    fn new(double: &ArmDouble, credential: Arc<dyn TokenCredential>) -> Self {
        Self::with_retry(double, credential, RetryOptions::none())
    }

    fn with_retry(double: &ArmDouble, credential: Arc<dyn TokenCredential>, retry: RetryOptions) -> Self {
        let options = ClientOptions { retry, ..client_options(double) };
        let auth = Arc::new(BearerTokenAuthorizationPolicy::new(credential, [ARM_SCOPE]));
        let pipeline = Pipeline::new(Some("dbgrant-doubles-tests"), Some("0.1.0"), options, vec![], vec![auth], None);
        Self { pipeline, base: double.arm_endpoint() }
    }

    /// `path` may be absolute (an `Azure-AsyncOperation`/`Location` URL) or
    /// a path; a path without a query gets the pinned api-version.
    async fn send(&self, method: Method, path: &str, body: Option<Value>) -> azure_core::Result<Reply> {
        let url = if path.starts_with("https://") {
            path.to_string()
        } else if path.contains('?') {
            format!("{}{path}", self.base)
        } else {
            format!("{}{path}?api-version={DEFAULT_API_VERSION}", self.base)
        };
        let mut request = Request::new(Url::parse(&url).expect("url"), method);
        if let Some(body) = body {
            request.insert_header("content-type", "application/json");
            request.set_body(body.to_string());
        }
        let response = self
            .pipeline
            .send(&Context::new(), &mut request, Some(PipelineSendOptions { skip_checks: true, ..Default::default() }))
            .await?;
        let status = u16::from(response.status());
        let headers = response.headers().clone();
        let bytes = response.body().as_ref().to_vec();
        let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
        Ok(Reply { status, headers, body })
    }

    async fn get(&self, path: &str) -> Reply {
        self.send(Method::Get, path, None).await.expect("GET")
    }

    async fn put(&self, path: &str, body: Value) -> Reply {
        self.send(Method::Put, path, Some(body)).await.expect("PUT")
    }

    async fn delete(&self, path: &str) -> Reply {
        self.send(Method::Delete, path, None).await.expect("DELETE")
    }

    /// Polls `Azure-AsyncOperation` until the operation finishes; returns
    /// the statuses seen.
    async fn wait(&self, accepted: &Reply) -> Vec<String> {
        let url = accepted.header("azure-asyncoperation").expect("Azure-AsyncOperation header");
        let mut seen = Vec::new();
        for _ in 0..50 {
            let poll = self.get(&url).await;
            assert_eq!(poll.status, 200, "poll: {}", poll.body);
            let status = poll.body["status"].as_str().unwrap().to_string();
            seen.push(status.clone());
            if status == "Succeeded" || status == "Failed" {
                return seen;
            }
        }
        panic!("operation did not finish: {seen:?}");
    }
}

fn account() -> AccountRef {
    ArmDouble::default_account()
}

fn assignment_path(name: &str) -> String {
    format!("{}/sqlRoleAssignments/{name}", account().id())
}

fn definition_path(name: &str) -> String {
    format!("{}/sqlRoleDefinitions/{name}", account().id())
}

fn assignment_body(definition: &str, scope: &str, principal: &str) -> Value {
    json!({"properties": {
        "roleDefinitionId": account().role_definition_id(definition),
        "scope": scope,
        "principalId": principal,
    }})
}

fn definition_body(role_name: &str, scopes: &[String], actions: &[&str]) -> Value {
    json!({"properties": {
        "roleName": role_name,
        "type": "CustomRole",
        "assignableScopes": scopes,
        "permissions": [{"dataActions": actions}],
    }})
}

/// A group the directory knows, for assignments.
fn group(double: &ArmDouble) -> String {
    let id = new_guid();
    double.add_principal(Principal::group(id.clone()));
    id
}

async fn start(config: ArmDoubleConfig) -> ArmDouble {
    ArmDouble::start(config).await.expect("start double")
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dbgrant-arm-{tag}-{}-{}", std::process::id(), &new_guid()[..8]));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// ---------------------------------------------------------------- identity

#[tokio::test]
async fn client_secret_credential_gets_a_token_over_tls_and_reads_arm() {
    let double = start(ArmDoubleConfig::default()).await;
    let credential = default_credential(&double);
    let token = credential.get_token(&[ARM_SCOPE], None).await.expect("token");
    let info = double.token_info(token.token.secret()).expect("the double issued it");
    assert_eq!(info.object_id, DEFAULT_OBJECT_ID);
    assert_eq!(info.client_id, DEFAULT_CLIENT_ID);
    assert_eq!(info.audience, "https://management.azure.com");
    assert_eq!(info.grant, "client_secret");
    assert!(token.expires_on > azure_core::time::OffsetDateTime::now_utc() + azure_core::time::Duration::minutes(50));

    let arm = Arm::new(&double, credential);
    let acct = arm.get(&account().id()).await;
    assert_eq!(acct.status, 200, "{}", acct.body);
    assert_eq!(acct.body["id"], account().id());
    assert_eq!(acct.body["type"], "Microsoft.DocumentDB/databaseAccounts");
    assert_eq!(acct.body["properties"]["provisioningState"], "Succeeded");
    assert!(acct.header("x-ms-request-id").is_some());
    assert!(acct.header("x-ms-ratelimit-remaining-subscription-reads").is_some());

    let defs = arm.get(&format!("{}/sqlRoleDefinitions", account().id())).await;
    assert_eq!(defs.status, 200);
    let value = defs.body["value"].as_array().expect("value array");
    assert_eq!(value.len(), 2);
    let reader = &value[0];
    assert_eq!(reader["name"], DATA_READER_ID);
    assert_eq!(reader["id"], account().role_definition_id(DATA_READER_ID));
    assert_eq!(reader["type"], "Microsoft.DocumentDB/databaseAccounts/sqlRoleDefinitions");
    assert_eq!(reader["properties"]["type"], "BuiltInRole");
    assert_eq!(reader["properties"]["roleName"], "Cosmos DB Built-in Data Reader");
    assert_eq!(reader["properties"]["assignableScopes"], json!([account().id()]));
    assert!(
        reader["properties"]["permissions"][0]["dataActions"]
            .as_array()
            .unwrap()
            .contains(&json!("Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers/items/read"))
    );
    assert_eq!(value[1]["name"], DATA_CONTRIBUTOR_ID);
    let one = arm.get(&definition_path(DATA_CONTRIBUTOR_ID)).await;
    assert_eq!(one.status, 200);
    assert_eq!(one.body["properties"]["roleName"], "Cosmos DB Built-in Data Contributor");

    let list = arm.get(&format!("{}/sqlRoleAssignments", account().id())).await;
    assert_eq!(list.body, json!({"value": []}));

    let log = double.requests();
    assert_eq!(log[0].kind, RequestKind::Token);
    assert_eq!(log[0].principal.as_deref(), Some(DEFAULT_CLIENT_ID));
    let arm_log = double.arm_requests();
    assert_eq!(arm_log.len(), 4);
    assert!(arm_log.iter().all(|r| r.principal.as_deref() == Some(DEFAULT_OBJECT_ID) && r.status == 200));
    assert_eq!(arm_log[0].account.as_deref(), Some(account().id().as_str()));
}

#[tokio::test]
async fn entra_refusals_look_like_entra() {
    let double = start(ArmDoubleConfig::default()).await;
    let wrong = secret_credential(&double, DEFAULT_CLIENT_ID, "not-the-secret");
    let err = wrong.get_token(&[ARM_SCOPE], None).await.expect_err("wrong secret");
    let text = err.to_string();
    assert!(text.contains("AADSTS7000215"), "{text}");
    assert!(!text.contains("not-the-secret"), "the secret must not be echoed: {text}");
    let rec = double.requests().pop().unwrap();
    assert_eq!((rec.status, rec.error_code.as_deref()), (401, Some("invalid_client")));

    let unknown = secret_credential(&double, &new_guid(), "x");
    let text = unknown.get_token(&[ARM_SCOPE], None).await.expect_err("unknown app").to_string();
    assert!(text.contains("AADSTS700016"), "{text}");

    let bad_scope = default_credential(&double);
    let text = bad_scope.get_token(&["https://management.azure.com/user_impersonation"], None).await.unwrap_err();
    assert!(text.to_string().contains("AADSTS1002012"), "{text}");
    let text = bad_scope.get_token(&["https://unknown.example/.default"], None).await.unwrap_err();
    assert!(text.to_string().contains("AADSTS500011"), "{text}");

    // The raw wire format, for clients that parse it themselves.
    let http = http_client(double.ca_cert_pem());
    let wrong_tenant = http
        .post(format!("{}/{}/oauth2/v2.0/token", double.authority_host(), new_guid()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("grant_type=client_credentials&client_id={DEFAULT_CLIENT_ID}&client_secret=x&scope=a%2F.default"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_tenant.status(), 400);
    let body = json_of(wrong_tenant).await;
    assert_eq!(body["error"], "invalid_request");
    assert_eq!(body["error_codes"], json!([90002]));
    assert!(body["error_description"].as_str().unwrap().starts_with("AADSTS90002: Tenant"));
    assert!(body["trace_id"].is_string() && body["correlation_id"].is_string() && body["timestamp"].is_string());

    // Discovery documents are served.
    let config = json_of(
        http.get(format!("{}/{}/v2.0/.well-known/openid-configuration", double.authority_host(), double.tenant_id()))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(config["issuer"], double.token_issuer());
    let keys = json_of(http.get(config["jwks_uri"].as_str().unwrap()).send().await.unwrap()).await;
    assert_eq!(keys["keys"][0]["kty"], "EC");
}

#[tokio::test]
async fn workload_identity_credential_exchanges_a_federated_token_file() {
    let double = start(ArmDoubleConfig::default()).await;
    let dir = temp_dir("wi");
    let token_file = dir.join("token");
    std::fs::write(&token_file, double.issue_federated_token(DEFAULT_WORKLOAD_SUBJECT)).unwrap();
    let credential = workload_credential(&double, DEFAULT_CLIENT_ID, token_file.clone());
    let token = credential.get_token(&[ARM_SCOPE], None).await.expect("token from a federated token");
    let info = double.token_info(token.token.secret()).unwrap();
    assert_eq!((info.object_id.as_str(), info.grant.as_str()), (DEFAULT_OBJECT_ID, "workload_identity"));
    let arm = Arm::new(&double, credential);
    assert_eq!(arm.get(&account().id()).await.status, 200);

    // Wrong subject: no matching federated identity record.
    std::fs::write(&token_file, double.issue_federated_token("system:serviceaccount:other:sa")).unwrap();
    let text = workload_credential(&double, DEFAULT_CLIENT_ID, token_file.clone())
        .get_token(&[ARM_SCOPE], None)
        .await
        .expect_err("wrong subject")
        .to_string();
    assert!(text.contains("AADSTS70021"), "{text}");

    // Wrong audience.
    let token = double.issue_federated_token_with(DEFAULT_WORKLOAD_SUBJECT, "api://other", Duration::from_secs(600));
    std::fs::write(&token_file, token).unwrap();
    let text = workload_credential(&double, DEFAULT_CLIENT_ID, token_file.clone())
        .get_token(&[ARM_SCOPE], None)
        .await
        .unwrap_err()
        .to_string();
    assert!(text.contains("AADSTS700212"), "{text}");

    // A tampered token fails signature validation.
    let good = double.issue_federated_token(DEFAULT_WORKLOAD_SUBJECT);
    let other = double.issue_federated_token("someone-else");
    let mut parts: Vec<&str> = good.split('.').collect();
    parts[2] = other.rsplit('.').next().unwrap();
    std::fs::write(&token_file, parts.join(".")).unwrap();
    let text = workload_credential(&double, DEFAULT_CLIENT_ID, token_file.clone())
        .get_token(&[ARM_SCOPE], None)
        .await
        .unwrap_err()
        .to_string();
    assert!(text.contains("AADSTS700027"), "{text}");

    // An external issuer (say, a kube-apiserver): a second double plays it,
    // signing with its own key and publishing its JWKS.
    let issuer_double = start(ArmDoubleConfig::default()).await;
    let issuer = issuer_double.oidc_issuer();
    let subject = "system:serviceaccount:ns:sa";
    let app = new_guid();
    double.add_principal(
        Principal::application(app.clone(), new_guid())
            .federated(FederatedCredential::new(issuer.clone(), subject))
            .arm_access(ArmAccess::Read),
    );
    let external =
        issuer_double.issue_federated_token_with(subject, FEDERATED_TOKEN_AUDIENCE, Duration::from_secs(600));
    std::fs::write(&token_file, &external).unwrap();
    let text = workload_credential(&double, &app, token_file.clone()).get_token(&[ARM_SCOPE], None).await.unwrap_err();
    assert!(text.to_string().contains("AADSTS700027"), "issuer whose keys are unknown: {text}");
    // Trusted with the wrong keys (this double's own): still refused.
    double.trust_issuer(&issuer, &double.jwks()).unwrap();
    let text = workload_credential(&double, &app, token_file.clone()).get_token(&[ARM_SCOPE], None).await.unwrap_err();
    assert!(text.to_string().contains("AADSTS700027"), "wrong keys: {text}");
    // With the issuer's published keys: accepted; an unsigned token from
    // the same issuer is not.
    double.trust_issuer(&issuer, &issuer_double.jwks()).unwrap();
    workload_credential(&double, &app, token_file.clone()).get_token(&[ARM_SCOPE], None).await.expect("trusted issuer");
    std::fs::write(
        &token_file,
        unsigned_jwt(&json!({
            "iss": issuer, "sub": subject, "aud": [FEDERATED_TOKEN_AUDIENCE], "exp": now() + 600, "iat": now(),
        })),
    )
    .unwrap();
    let text = workload_credential(&double, &app, token_file.clone()).get_token(&[ARM_SCOPE], None).await.unwrap_err();
    assert!(text.to_string().contains("AADSTS700027"), "unsigned token: {text}");
    std::fs::remove_dir_all(dir).unwrap();
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

fn unsigned_jwt(claims: &Value) -> String {
    use base64::Engine;
    let enc = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!("{}.{}.c2ln", enc(&json!({"alg": "RS256", "kid": "k"})), enc(claims))
}

fn workload_credential(double: &ArmDouble, client_id: &str, file: PathBuf) -> Arc<WorkloadIdentityCredential> {
    WorkloadIdentityCredential::new(Some(WorkloadIdentityCredentialOptions {
        credential_options: ClientAssertionCredentialOptions { client_options: client_options(double) },
        client_id: Some(client_id.to_string()),
        tenant_id: Some(double.tenant_id()),
        token_file_path: Some(file),
    }))
    .expect("workload identity credential")
}

/// An RSA certificate and its PKCS#12 bundle (what
/// `ClientCertificateCredential` takes).
fn rsa_certificate() -> (String, Vec<u8>) {
    let (pem, pfx, _) = rsa_certificate_and_key();
    (pem, pfx)
}

fn rsa_certificate_and_key() -> (String, Vec<u8>, openssl::pkey::PKey<openssl::pkey::Private>) {
    use openssl::asn1::Asn1Time;
    use openssl::bn::BigNum;
    use openssl::hash::MessageDigest;
    use openssl::pkcs12::Pkcs12;
    use openssl::pkey::PKey;
    use openssl::rsa::Rsa;
    use openssl::x509::{X509, X509NameBuilder};
    let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "dbgrant-test-app").unwrap();
    let name = name.build();
    let mut builder = X509::builder().unwrap();
    builder.set_version(2).unwrap();
    builder.set_serial_number(&BigNum::from_u32(7).unwrap().to_asn1_integer().unwrap()).unwrap();
    builder.set_subject_name(&name).unwrap();
    builder.set_issuer_name(&name).unwrap();
    builder.set_pubkey(&key).unwrap();
    builder.set_not_before(&Asn1Time::days_from_now(0).unwrap()).unwrap();
    builder.set_not_after(&Asn1Time::days_from_now(2).unwrap()).unwrap();
    builder.sign(&key, MessageDigest::sha256()).unwrap();
    let cert = builder.build();
    let pfx = Pkcs12::builder().name("dbgrant").pkey(&key).cert(&cert).build2("").unwrap().to_der().unwrap();
    (String::from_utf8(cert.to_pem().unwrap()).unwrap(), pfx, key)
}

/// A client assertion built by hand: header naming `cert_pem` by `x5t`,
/// signed (RS256) with `key`.
fn hand_made_assertion(
    double: &ArmDouble,
    client_id: &str,
    cert_pem: &str,
    key: &openssl::pkey::PKey<openssl::pkey::Private>,
) -> String {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    let cert = openssl::x509::X509::from_pem(cert_pem.as_bytes()).unwrap();
    let x5t = STANDARD.encode(cert.digest(openssl::hash::MessageDigest::sha1()).unwrap());
    let header = json!({"alg": "RS256", "typ": "JWT", "x5t": x5t});
    let claims = json!({
        "aud": double.token_endpoint(), "iss": client_id, "sub": client_id, "jti": new_guid(),
        "nbf": now(), "exp": now() + 300,
    });
    let input =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
    let mut signer = openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), key).unwrap();
    signer.update(input.as_bytes()).unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signer.sign_to_vec().unwrap()))
}

fn certificate_credential(double: &ArmDouble, client_id: &str, pfx: Vec<u8>) -> Arc<ClientCertificateCredential> {
    ClientCertificateCredential::new(
        double.tenant_id(),
        client_id.to_string(),
        SecretBytes::new(pfx),
        Some(ClientCertificateCredentialOptions { client_options: client_options(double), ..Default::default() }),
    )
    .expect("certificate credential")
}

#[tokio::test]
async fn client_certificate_credential_signs_an_assertion_the_double_verifies() {
    let double = start(ArmDoubleConfig::default()).await;
    let (cert_pem, pfx) = rsa_certificate();
    let app = new_guid();
    let object_id = new_guid();
    double.add_principal(Principal::application(app.clone(), object_id.clone()).arm_access(ArmAccess::Read));

    let text = certificate_credential(&double, &app, pfx.clone())
        .get_token(&[ARM_SCOPE], None)
        .await
        .expect_err("certificate not registered yet")
        .to_string();
    assert!(text.contains("AADSTS700027"), "{text}");

    double.add_client_certificate(&app, &cert_pem).unwrap();
    let credential = certificate_credential(&double, &app, pfx);
    let token = credential.get_token(&[ARM_SCOPE], None).await.expect("token from a client assertion");
    let info = double.token_info(token.token.secret()).unwrap();
    assert_eq!((info.object_id.as_str(), info.grant.as_str()), (object_id.as_str(), "client_certificate"));
    let arm = Arm::new(&double, credential);
    assert_eq!(arm.get(&account().id()).await.status, 200);

    // Another key registered under the same app does not help a stranger.
    let (_, stranger) = rsa_certificate();
    let text = certificate_credential(&double, &app, stranger).get_token(&[ARM_SCOPE], None).await.unwrap_err();
    assert!(text.to_string().contains("AADSTS700027"), "{text}");

    // The signature is checked against the named certificate's key.
    let (registered_pem, _, registered_key) = rsa_certificate_and_key();
    let (_, _, other_key) = rsa_certificate_and_key();
    double.add_client_certificate(&app, &registered_pem).unwrap();
    let http = http_client(double.ca_cert_pem());
    let post = |assertion: String| {
        let form = format!(
            "grant_type=client_credentials&client_id={app}&scope=https%3A%2F%2Fmanagement.azure.com%2F.default\
             &client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer\
             &client_assertion={assertion}"
        );
        http.post(double.token_endpoint()).header("content-type", "application/x-www-form-urlencoded").body(form).send()
    };
    let forged = post(hand_made_assertion(&double, &app, &registered_pem, &other_key)).await.unwrap();
    assert_eq!(forged.status(), 401);
    let body = json_of(forged).await;
    assert_eq!(body["error_codes"], json!([700027]));
    assert!(body["error_description"].as_str().unwrap().contains("signature validation"), "{body}");
    let genuine = post(hand_made_assertion(&double, &app, &registered_pem, &registered_key)).await.unwrap();
    assert_eq!(genuine.status(), 200);
    assert_eq!(json_of(genuine).await["token_type"], "Bearer");
}

const CHILD_ENV: &str = "DBGRANT_ARM_TEST_CHILD";

/// Runs [`managed_identity_child_process`] in a child process with the
/// App Service managed-identity variables pointing at the double (the
/// credential reads them from the process environment).
async fn run_managed_identity_child(double: &ArmDouble, header: &str, mode: &str) -> std::process::Output {
    tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["managed_identity_child_process", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, mode)
        .env("DBGRANT_ARM_TEST_CA", double.ca_cert_pem())
        .env("DBGRANT_ARM_TEST_ENDPOINT", double.arm_endpoint())
        .env("IDENTITY_ENDPOINT", double.managed_identity_endpoint())
        .env("IDENTITY_HEADER", header)
        .env_remove("IDENTITY_SERVER_THUMBPRINT")
        .env_remove("IMDS_ENDPOINT")
        .env_remove("MSI_ENDPOINT")
        .env_remove("MSI_SECRET")
        .output()
        .await
        .expect("run child test")
}

#[tokio::test]
async fn managed_identity_credential_uses_the_app_service_endpoint() {
    let double = start(ArmDoubleConfig::default()).await;
    let user_assigned_client = new_guid();
    let user_assigned_object = new_guid();
    double.add_principal(
        Principal::managed_identity(user_assigned_client.clone(), user_assigned_object.clone())
            .arm_access(ArmAccess::Read),
    );

    let out = run_managed_identity_child(&double, &double.managed_identity_header(), "system").await;
    assert!(
        out.status.success(),
        "child: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"), "the child test ran");
    let mi = double.requests().into_iter().find(|r| r.kind == RequestKind::ManagedIdentity).unwrap();
    assert_eq!((mi.status, mi.principal.as_deref()), (200, Some(DEFAULT_MI_OBJECT_ID)));
    assert!(mi.query.unwrap().contains("api-version=2019-08-01"));
    let read = double.arm_requests().pop().unwrap();
    assert_eq!((read.status, read.principal.as_deref()), (200, Some(DEFAULT_MI_OBJECT_ID)));

    double.clear_log();
    let out = run_managed_identity_child(
        &double,
        &double.managed_identity_header(),
        &format!("client:{user_assigned_client}"),
    )
    .await;
    assert!(out.status.success(), "child: {}", String::from_utf8_lossy(&out.stdout));
    let read = double.arm_requests().pop().unwrap();
    assert_eq!(read.principal.as_deref(), Some(user_assigned_object.as_str()));

    let out = run_managed_identity_child(&double, "wrong-header", "expect-failure").await;
    assert!(out.status.success(), "child: {}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(double.requests().pop().unwrap().status, 401);

    // The IMDS form (the credential hard-codes its address, other clients
    // may not): needs `Metadata: true`.
    let http = http_client(double.ca_cert_pem());
    let url = format!(
        "{}?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F&client_id={user_assigned_client}",
        double.imds_endpoint()
    );
    assert_eq!(http.get(&url).send().await.unwrap().status(), 400);
    let imds = json_of(http.get(&url).header("Metadata", "true").send().await.unwrap()).await;
    let info = double.token_info(imds["access_token"].as_str().unwrap()).unwrap();
    assert_eq!((info.object_id.as_str(), info.grant.as_str()), (user_assigned_object.as_str(), "managed_identity"));
    assert!(imds["expires_on"].as_str().unwrap().parse::<u64>().is_ok());
}

#[tokio::test]
#[ignore = "run as a child process by managed_identity_credential_uses_the_app_service_endpoint"]
async fn managed_identity_child_process() {
    let Ok(mode) = std::env::var(CHILD_ENV) else { return };
    let ca = std::env::var("DBGRANT_ARM_TEST_CA").unwrap();
    let endpoint = std::env::var("DBGRANT_ARM_TEST_ENDPOINT").unwrap();
    let options = ClientOptions {
        transport: Some(Transport::new(Arc::new(http_client(&ca)))),
        retry: RetryOptions::none(),
        ..ClientOptions::default()
    };
    let user_assigned_id = mode.strip_prefix("client:").map(|c| UserAssignedId::ClientId(c.to_string()));
    let credential = ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
        user_assigned_id,
        client_options: options.clone(),
    }))
    .expect("managed identity credential");
    let result = credential.get_token(&[ARM_SCOPE], None).await;
    if mode == "expect-failure" {
        let err = result.expect_err("wrong identity header");
        assert!(err.to_string().contains("X-IDENTITY-HEADER"), "{err}");
        return;
    }
    result.expect("managed identity token");
    let auth = Arc::new(BearerTokenAuthorizationPolicy::new(credential, [ARM_SCOPE]));
    let pipeline = Pipeline::new(None, None, options, vec![], vec![auth], None);
    let url = format!("{endpoint}{}?api-version={DEFAULT_API_VERSION}", account().id());
    let mut request = Request::new(Url::parse(&url).unwrap(), Method::Get);
    let response = pipeline
        .send(&Context::new(), &mut request, Some(PipelineSendOptions { skip_checks: true, ..Default::default() }))
        .await
        .unwrap();
    assert_eq!(u16::from(response.status()), 200);
}

// -------------------------------------------------------- ARM: auth checks

#[tokio::test]
async fn arm_rejects_missing_expired_and_wrong_audience_tokens() {
    let double = start(ArmDoubleConfig::default()).await;
    let http = http_client(double.ca_cert_pem());
    let url = format!("{}{}?api-version={DEFAULT_API_VERSION}", double.arm_endpoint(), account().id());

    let none = http.get(&url).send().await.unwrap();
    assert_eq!(none.status(), 401);
    let challenge = none.headers()["www-authenticate"].to_str().unwrap().to_string();
    assert!(challenge.starts_with("Bearer authorization_uri="), "{challenge}");
    let body = json_of(none).await;
    assert_eq!(body["error"]["code"], "AuthenticationFailed");

    let bogus = http.get(&url).bearer_auth("made-up").send().await.unwrap();
    assert_eq!(bogus.status(), 401);
    assert_eq!(json_of(bogus).await["error"]["code"], "InvalidAuthenticationToken");

    let cosmos = double.issue_access_token(DEFAULT_OBJECT_ID, "https://cosmos.azure.com").unwrap();
    let wrong = http.get(&url).bearer_auth(&cosmos).send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().contains_key("www-authenticate"));
    assert_eq!(json_of(wrong).await["error"]["code"], "InvalidAuthenticationTokenAudience");

    let good = double.issue_access_token(DEFAULT_OBJECT_ID, "https://management.core.windows.net/").unwrap();
    assert_eq!(http.get(&url).bearer_auth(&good).send().await.unwrap().status(), 200);
    double.expire_tokens();
    let expired = http.get(&url).bearer_auth(&good).send().await.unwrap();
    assert_eq!(expired.status(), 401);
    assert_eq!(json_of(expired).await["error"]["code"], "ExpiredAuthenticationToken");

    // The credential caches its token; azure_core's policy surfaces the 401.
    let credential = default_credential(&double);
    let arm = Arm::new(&double, credential.clone());
    assert_eq!(arm.get(&account().id()).await.status, 200);
    double.revoke_tokens();
    assert_eq!(arm.get(&account().id()).await.status, 401);
}

#[tokio::test]
async fn arm_authorizes_by_principal_and_checks_api_version_and_paths() {
    let double = start(ArmDoubleConfig::default()).await;
    let reader_app = new_guid();
    let reader = new_guid();
    double.add_principal(
        Principal::application(reader_app.clone(), reader.clone()).secret("s").arm_access(ArmAccess::Read),
    );
    let arm = Arm::new(&double, secret_credential(&double, &reader_app, "s"));
    assert_eq!(arm.get(&account().id()).await.status, 200);
    let denied =
        arm.put(&assignment_path(&new_guid()), assignment_body(DATA_READER_ID, &account().id(), &reader)).await;
    assert_eq!((denied.status, denied.code()), (403, "AuthorizationFailed"));
    assert!(denied.message().contains("sqlRoleAssignments/write"), "{}", denied.message());
    double.set_arm_access(&reader, ArmAccess::None).unwrap();
    assert_eq!(arm.get(&account().id()).await.status, 403);

    let arm = Arm::new(&double, default_credential(&double));
    let missing = arm.get(&format!("{}?", account().id())).await;
    assert_eq!((missing.status, missing.code()), (400, "MissingApiVersionParameter"));
    let old = arm.get(&format!("{}?api-version=2021-04-15", account().id())).await;
    assert_eq!((old.status, old.code()), (400, "NoRegisteredProviderFound"));
    assert!(old.message().contains("2024-11-15"));
    let newer = arm.get(&format!("{}?api-version=2025-04-15", account().id())).await;
    assert_eq!(newer.status, 200);

    let other = AccountRef::new(account().subscription_id, account().resource_group, "nope");
    assert_eq!(arm.get(&other.id()).await.code(), "ResourceNotFound");
    let rg = AccountRef::new(account().subscription_id, "rg-nope", "x");
    assert_eq!(arm.get(&rg.id()).await.code(), "ResourceGroupNotFound");
    let sub = AccountRef::new(new_guid(), "rg", "x");
    assert_eq!(arm.get(&sub.id()).await.code(), "SubscriptionNotFound");
    // ARM paths are case-insensitive.
    let lower = arm.get(&account().id().to_lowercase()).await;
    assert_eq!((lower.status, lower.body["name"].as_str()), (200, Some(account().name.as_str())));
    let missing = arm.get(&assignment_path(&new_guid())).await;
    assert_eq!((missing.status, missing.code()), (404, "NotFound"));
}

// ------------------------------------------------------------ ARM: LROs

#[tokio::test]
async fn put_assignment_is_long_running_and_applies_on_success() {
    let double = start(ArmDoubleConfig::default()).await;
    let arm = Arm::new(&double, default_credential(&double));
    let principal = group(&double);
    let name = new_guid();
    let scope = account().database_scope("orders");

    let accepted = arm.put(&assignment_path(&name), assignment_body(DATA_READER_ID, &scope, &principal)).await;
    assert_eq!(accepted.status, 202, "{}", accepted.body);
    assert_eq!(accepted.body, json!({"status": "Enqueued"}));
    let status_url = accepted.header("azure-asyncoperation").unwrap();
    assert!(status_url.starts_with(&double.arm_endpoint()), "{status_url}");
    assert!(status_url.contains("/providers/Microsoft.DocumentDB/locations/westus/operationsStatus/"));
    assert!(status_url.ends_with(&format!("api-version={DEFAULT_API_VERSION}")));
    let location = accepted.header("location").unwrap();
    assert!(location.contains(&format!("/sqlRoleAssignments/{name}/operationResults/")), "{location}");

    // Not visible until the operation succeeds.
    assert_eq!(arm.get(&assignment_path(&name)).await.status, 404);
    assert_eq!(double.pending_operations().len(), 1);
    assert_eq!(arm.wait(&accepted).await, ["Dequeued", "Succeeded"]);
    let done = arm.get(&status_url).await;
    assert_eq!(done.body["status"], "Succeeded");
    assert!(done.body["startTime"].is_string() && done.body["endTime"].is_string());

    let got = arm.get(&assignment_path(&name)).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body["id"], account().role_assignment_id(&name));
    assert_eq!(got.body["name"], name);
    assert_eq!(got.body["type"], "Microsoft.DocumentDB/databaseAccounts/sqlRoleAssignments");
    assert_eq!(got.body["properties"]["scope"], scope);
    assert_eq!(got.body["properties"]["principalId"], principal);
    assert_eq!(got.body["properties"]["roleDefinitionId"], account().role_definition_id(DATA_READER_ID));
    let result = arm.get(&location).await;
    assert_eq!((result.status, &result.body["name"]), (201, &json!(name)));
    let list = arm.get(&format!("{}/sqlRoleAssignments", account().id())).await;
    assert_eq!(list.body["value"].as_array().unwrap().len(), 1);
    assert_eq!(double.role_assignment(&account(), &name).unwrap().principal_id, principal);

    // DELETE is long-running too; a missing assignment is 204.
    let deleting = arm.delete(&assignment_path(&name)).await;
    assert_eq!(deleting.status, 202);
    assert!(double.role_assignment(&account(), &name).is_some());
    let location = deleting.header("location").unwrap();
    assert_eq!(arm.get(&location).await.status, 202);
    assert_eq!(arm.get(&location).await.status, 204);
    assert!(double.role_assignment(&account(), &name).is_none());
    assert_eq!(arm.delete(&assignment_path(&name)).await.status, 204);
    assert_eq!(arm.delete(&assignment_path(&new_guid())).await.status, 204);
}

#[tokio::test]
async fn synchronous_mode_answers_201_and_200() {
    let double = start(ArmDoubleConfig::default().lro_polls(0)).await;
    let arm = Arm::new(&double, default_credential(&double));
    let principal = group(&double);
    let name = new_guid();
    let created = arm.put(&assignment_path(&name), assignment_body(DATA_READER_ID, &account().id(), &principal)).await;
    assert_eq!(created.status, 201);
    assert_eq!(created.body["properties"]["principalId"], principal);
    let updated =
        arm.put(&assignment_path(&name), assignment_body(DATA_CONTRIBUTOR_ID, &account().id(), &principal)).await;
    assert_eq!(updated.status, 200);
    assert_eq!(arm.delete(&assignment_path(&name)).await.status, 200);
    assert!(double.role_assignments(&account()).is_empty());
}

#[tokio::test]
async fn the_account_lock_gives_412_while_an_operation_runs() {
    let double = start(ArmDoubleConfig::default()).await;
    let arm = Arm::new(&double, default_credential(&double));
    let principal = group(&double);
    let first =
        arm.put(&assignment_path(&new_guid()), assignment_body(DATA_READER_ID, &account().id(), &principal)).await;
    assert_eq!(first.status, 202);
    let busy =
        arm.put(&assignment_path(&new_guid()), assignment_body(DATA_CONTRIBUTOR_ID, &account().id(), &principal)).await;
    assert_eq!((busy.status, busy.code()), (412, "PreconditionFailed"));
    assert!(
        busy.message().contains("another operation") || busy.message().contains("already an operation in progress")
    );
    assert_eq!(arm.delete(&assignment_path(&new_guid())).await.status, 204, "nothing to delete needs no lock");
    // Reads are not blocked; another account is not locked.
    assert_eq!(arm.get(&format!("{}/sqlRoleAssignments", account().id())).await.status, 200);
    let other = AccountRef::new(account().subscription_id, account().resource_group, "second");
    double.add_account(Account::new(other.clone(), "eastus"));
    let elsewhere = arm
        .put(
            &format!("{}/sqlRoleAssignments/{}", other.id(), new_guid()),
            json!({"properties": {"roleDefinitionId": other.role_definition_id(DATA_READER_ID), "scope": other.id(), "principalId": principal}}),
        )
        .await;
    assert_eq!(elsewhere.status, 202, "{}", elsewhere.body);
    assert!(elsewhere.header("azure-asyncoperation").unwrap().contains("/locations/eastus/"));

    arm.wait(&first).await;
    let now_ok =
        arm.put(&assignment_path(&new_guid()), assignment_body(DATA_CONTRIBUTOR_ID, &account().id(), &principal)).await;
    assert_eq!(now_ok.status, 202);

    // Stuck operations hold the lock until released.
    double.stick_operations(true);
    for _ in 0..3 {
        assert_eq!(arm.get(&now_ok.header("azure-asyncoperation").unwrap()).await.body["status"], "Enqueued");
    }
    assert_eq!(
        arm.put(
            &assignment_path(&new_guid()),
            assignment_body(DATA_READER_ID, &account().database_scope("d"), &principal)
        )
        .await
        .status,
        412
    );
    double.stick_operations(false);
    double.complete_operations();
    assert!(double.pending_operations().is_empty());
    assert_eq!(arm.get(&now_ok.header("azure-asyncoperation").unwrap()).await.body["status"], "Succeeded");
    assert_eq!(double.account_counters(&account()).conflicts, 2);
}

#[tokio::test]
async fn failed_operations_change_nothing() {
    let double = start(ArmDoubleConfig::default()).await;
    let arm = Arm::new(&double, default_credential(&double));
    let principal = group(&double);
    double.fail_next_operations(1, "InternalServerError", "the resource provider fell over");
    let name = new_guid();
    let accepted = arm.put(&assignment_path(&name), assignment_body(DATA_READER_ID, &account().id(), &principal)).await;
    assert_eq!(arm.wait(&accepted).await.last().unwrap(), "Failed");
    let status = arm.get(&accepted.header("azure-asyncoperation").unwrap()).await;
    assert_eq!(status.body["error"]["code"], "InternalServerError");
    assert_eq!(status.body["error"]["message"], "the resource provider fell over");
    assert_eq!(arm.get(&accepted.header("location").unwrap()).await.status, 500);
    assert!(double.role_assignment(&account(), &name).is_none());
    let ops = double.operations();
    assert_eq!(ops[0].status, OperationStatus::Failed);
    // The lock is released.
    let again = arm.put(&assignment_path(&name), assignment_body(DATA_READER_ID, &account().id(), &principal)).await;
    assert_eq!(again.status, 202);
}

#[tokio::test]
async fn operations_can_complete_by_time_and_polls_are_configurable() {
    let mut config = ArmDoubleConfig::default().lro_polls(4);
    config.lro_complete_after = Some(Duration::from_millis(300));
    config.lro_retry_after = Some(1);
    let double = start(config).await;
    let arm = Arm::new(&double, default_credential(&double));
    let principal = group(&double);
    let name = new_guid();
    let accepted = arm.put(&assignment_path(&name), assignment_body(DATA_READER_ID, &account().id(), &principal)).await;
    assert_eq!(accepted.header("retry-after").as_deref(), Some("1"));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(double.role_assignment(&account(), &name).is_some(), "completed without polls");

    double.set_lro_complete_after(None);
    double.set_lro_retry_after(None);
    double.set_lro_polls(3);
    let second =
        arm.put(&assignment_path(&new_guid()), assignment_body(DATA_CONTRIBUTOR_ID, &account().id(), &principal)).await;
    assert_eq!(arm.wait(&second).await, ["Dequeued", "Dequeued", "Succeeded"]);
}

// ------------------------------------------------- ARM: semantics & limits

#[tokio::test]
async fn assignments_change_only_their_definition_in_place_and_duplicates_conflict() {
    let double = start(ArmDoubleConfig::default().lro_polls(0)).await;
    let arm = Arm::new(&double, default_credential(&double));
    let principal = group(&double);
    let other = group(&double);
    let name = new_guid();
    let scope = account().container_scope("db", "c");
    assert_eq!(arm.put(&assignment_path(&name), assignment_body(DATA_READER_ID, &scope, &principal)).await.status, 201);

    let moved = arm.put(&assignment_path(&name), assignment_body(DATA_READER_ID, &account().id(), &principal)).await;
    assert_eq!((moved.status, moved.code()), (400, "BadRequest"));
    assert!(moved.message().contains("only roleDefinitionId can be updated in place"), "{}", moved.message());
    let repointed = arm.put(&assignment_path(&name), assignment_body(DATA_READER_ID, &scope, &other)).await;
    assert_eq!(repointed.status, 400);
    let redefined = arm.put(&assignment_path(&name), assignment_body(DATA_CONTRIBUTOR_ID, &scope, &principal)).await;
    assert_eq!(redefined.status, 200);
    assert_eq!(
        double.role_assignment(&account(), &name).unwrap().role_definition_id,
        account().role_definition_id(DATA_CONTRIBUTOR_ID)
    );

    let dup = arm.put(&assignment_path(&new_guid()), assignment_body(DATA_CONTRIBUTOR_ID, &scope, &principal)).await;
    assert_eq!((dup.status, dup.code()), (409, "Conflict"));
    assert!(dup.message().contains(&name), "{}", dup.message());
}

#[tokio::test]
async fn assignment_validation() {
    let double = start(ArmDoubleConfig::default().lro_polls(0)).await;
    let arm = Arm::new(&double, default_credential(&double));
    let principal = group(&double);
    let put = |body: Value| {
        let arm = &arm;
        async move { arm.put(&assignment_path(&new_guid()), body).await }
    };

    let outside = put(assignment_body(DATA_READER_ID, &AccountRef::new("s", "rg", "other").id(), &principal)).await;
    assert_eq!(outside.status, 400);
    assert!(outside.message().contains("is not valid for database account"), "{}", outside.message());
    let relative = put(assignment_body(DATA_READER_ID, "/dbs/db1", &principal)).await;
    assert_eq!(relative.status, 400);
    let no_def = put(assignment_body(&new_guid(), &account().id(), &principal)).await;
    assert!(no_def.status == 400 && no_def.message().contains("does not exist"), "{}", no_def.body);
    let stranger = put(assignment_body(DATA_READER_ID, &account().id(), &new_guid())).await;
    assert_eq!((stranger.status, stranger.code()), (400, "BadRequest"));
    assert!(stranger.message().contains("was not found in the AAD tenant"), "{}", stranger.message());
    let not_json = arm.send(Method::Put, &assignment_path(&new_guid()), None).await.unwrap();
    assert_eq!((not_json.status, not_json.code()), (400, "InvalidRequestContent"));
    let no_props = put(json!({"roleDefinitionId": "x"})).await;
    assert_eq!(no_props.status, 400);
    let bad_name =
        arm.put(&assignment_path("not-a-guid"), assignment_body(DATA_READER_ID, &account().id(), &principal)).await;
    assert!(bad_name.status == 400 && bad_name.message().contains("GUID"));
    let ok = put(assignment_body(DATA_READER_ID, &format!("{}/", account().database_scope("db1")), &principal)).await;
    assert_eq!(ok.status, 201, "{}", ok.body);
    assert_eq!(ok.body["properties"]["scope"], account().database_scope("db1"), "trailing slash dropped");
}

#[tokio::test]
async fn principals_can_take_time_to_replicate() {
    let double = start(ArmDoubleConfig::default().lro_polls(0)).await;
    let arm = Arm::new(&double, default_credential(&double));
    let fresh = new_guid();
    double.add_principal_replicating(Principal::group(fresh.clone()), 2);
    let name = new_guid();
    for _ in 0..2 {
        let r = arm.put(&assignment_path(&name), assignment_body(DATA_READER_ID, &account().id(), &fresh)).await;
        assert_eq!(r.status, 400);
        assert!(r.message().contains(&format!("principal ID [{fresh}] was not found")), "{}", r.message());
    }
    assert_eq!(
        arm.put(&assignment_path(&name), assignment_body(DATA_READER_ID, &account().id(), &fresh)).await.status,
        201
    );
}

#[tokio::test]
async fn custom_role_definitions_are_validated() {
    let double = start(ArmDoubleConfig::default()).await;
    let arm = Arm::new(&double, default_credential(&double));
    let db_scope = account().database_scope("orders");
    let items = "Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers/items/*";
    let meta = "Microsoft.DocumentDB/databaseAccounts/readMetadata";
    let name = new_guid();

    let accepted = arm
        .put(&definition_path(&name), definition_body("orders-writer", std::slice::from_ref(&db_scope), &[meta, items]))
        .await;
    assert_eq!(accepted.status, 202, "{}", accepted.body);
    assert_eq!(arm.wait(&accepted).await.last().unwrap(), "Succeeded");
    let got = arm.get(&definition_path(&name)).await;
    assert_eq!(got.body["properties"]["type"], "CustomRole");
    assert_eq!(got.body["properties"]["assignableScopes"], json!([db_scope]));
    assert_eq!(got.body["properties"]["permissions"][0]["dataActions"], json!([meta, items]));
    assert_eq!(
        arm.get(&format!("{}/sqlRoleDefinitions", account().id())).await.body["value"].as_array().unwrap().len(),
        3
    );

    // Assignable only within its scopes.
    let principal = group(&double);
    let wide = arm.put(&assignment_path(&new_guid()), assignment_body(&name, &account().id(), &principal)).await;
    assert!(wide.status == 400 && wide.message().contains("assignable scopes"), "{}", wide.body);
    let narrow = arm
        .put(
            &assignment_path(&new_guid()),
            assignment_body(&name, &account().container_scope("orders", "c"), &principal),
        )
        .await;
    assert_eq!(narrow.status, 202, "{}", narrow.body);
    arm.wait(&narrow).await;

    for (body, expect) in [
        (
            definition_body("x", &[account().id()], &["Microsoft.DocumentDB/databaseAccounts/listKeys/action"]),
            "is not valid",
        ),
        (
            definition_body("x", &[account().id()], &["Microsoft.DocumentDB/databaseAccounts/sqlDatabases/*"]),
            "is not valid",
        ),
        (definition_body("x", &["/subscriptions/s/resourceGroups/r".to_string()], &[meta]), "assignable scope"),
        (definition_body("x", &[], &[meta]), "assignableScopes"),
        (definition_body("x", &[account().id()], &[]), "at least one data action"),
        (
            json!({"properties": {"roleName": "x", "assignableScopes": [account().id()], "permissions": [{"dataActions": [meta], "notDataActions": [items]}]}}),
            "notDataActions",
        ),
        (
            json!({"properties": {"roleName": "x", "type": "BuiltInRole", "assignableScopes": [account().id()], "permissions": [{"dataActions": [meta]}]}}),
            "CustomRole",
        ),
    ] {
        let r = arm.put(&definition_path(&new_guid()), body).await;
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(r.message().contains(expect), "{expect}: {}", r.message());
    }
    let same_name =
        arm.put(&definition_path(&new_guid()), definition_body("orders-writer", &[account().id()], &[meta])).await;
    assert_eq!((same_name.status, same_name.code()), (409, "Conflict"));
    let builtin = arm.put(&definition_path(DATA_READER_ID), definition_body("mine", &[account().id()], &[meta])).await;
    assert_eq!(builtin.status, 400);
    assert_eq!(arm.delete(&definition_path(DATA_CONTRIBUTOR_ID)).await.status, 400);
    let in_use = arm.delete(&definition_path(&name)).await;
    assert!(in_use.status == 400 && in_use.message().contains("still reference it"), "{}", in_use.body);
    assert_eq!(arm.delete(&definition_path(&new_guid())).await.status, 204);
}

#[tokio::test]
async fn per_account_limits_on_assignments_and_definitions() {
    let double = start(ArmDoubleConfig::default().lro_polls(0)).await;
    let arm = Arm::new(&double, default_credential(&double));
    let principal = group(&double);
    for i in 0..2000 {
        double
            .insert_role_assignment(
                &account(),
                RoleAssignment::new(
                    new_guid(),
                    account().role_definition_id(DATA_READER_ID),
                    account().database_scope(&format!("db{i}")),
                    principal.clone(),
                ),
            )
            .unwrap();
    }
    let full =
        arm.put(&assignment_path(&new_guid()), assignment_body(DATA_READER_ID, &account().id(), &principal)).await;
    assert_eq!(full.status, 400);
    assert!(full.message().contains("maximum allowed (2000)"), "{}", full.message());
    let listed = arm.get(&format!("{}/sqlRoleAssignments", account().id())).await;
    assert_eq!(listed.body["value"].as_array().unwrap().len(), 2000, "no paging");

    for i in 0..100 {
        double
            .insert_role_definition(
                &account(),
                RoleDefinition::custom(
                    new_guid(),
                    format!("r{i}"),
                    vec![account().id()],
                    vec!["Microsoft.DocumentDB/databaseAccounts/readMetadata".into()],
                ),
            )
            .unwrap();
    }
    let meta = "Microsoft.DocumentDB/databaseAccounts/readMetadata";
    let too_many =
        arm.put(&definition_path(&new_guid()), definition_body("one more", &[account().id()], &[meta])).await;
    assert_eq!(too_many.status, 400);
    assert!(too_many.message().contains("maximum allowed (100)"), "{}", too_many.message());
}

// -------------------------------------------------------------- throttling

#[tokio::test]
async fn the_write_bucket_throttles_per_principal_with_retry_after() {
    // Refills a token every 2 s: slow enough that test latency cannot
    // change the counts below.
    let double = start(ArmDoubleConfig::default().lro_polls(0).write_bucket(3, 0.5)).await;
    let arm = Arm::new(&double, default_credential(&double));
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let r = arm.delete(&assignment_path(&new_guid())).await;
        assert_eq!(r.status, 204);
        remaining.push(r.header("x-ms-ratelimit-remaining-subscription-writes").unwrap());
    }
    assert_eq!(remaining, ["2", "1", "0"]);
    let throttled = arm.delete(&assignment_path(&new_guid())).await;
    assert_eq!((throttled.status, throttled.code()), (429, "SubscriptionRequestsThrottled"));
    assert_eq!(throttled.header("retry-after").as_deref(), Some("2"));
    assert_eq!(throttled.header("x-ms-ratelimit-remaining-subscription-writes").as_deref(), Some("0"));
    // Reads have their own bucket; other principals have their own.
    assert_eq!(arm.get(&account().id()).await.status, 200);
    let mi = Arm::new(&double, {
        let app = new_guid();
        double.add_principal(Principal::application(app.clone(), new_guid()).secret("s").arm_access(ArmAccess::Write));
        secret_credential(&double, &app, "s")
    });
    assert_eq!(mi.delete(&assignment_path(&new_guid())).await.status, 204);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(arm.delete(&assignment_path(&new_guid())).await.status, 204, "refilled");
    assert_eq!(double.account_counters(&account()).throttled, 1);
}

#[tokio::test]
async fn the_account_write_budget_throttles_everyone() {
    let double = start(ArmDoubleConfig::default().lro_polls(0).account_writes(2, Duration::from_secs(60))).await;
    let arm = Arm::new(&double, default_credential(&double));
    assert_eq!(arm.delete(&assignment_path(&new_guid())).await.status, 204);
    assert_eq!(arm.delete(&assignment_path(&new_guid())).await.status, 204);
    let throttled = arm.delete(&assignment_path(&new_guid())).await;
    assert_eq!((throttled.status, throttled.code()), (429, "TooManyRequests"));
    let retry: u64 = throttled.header("retry-after").unwrap().parse().unwrap();
    assert!((55..=60).contains(&retry), "{retry}");
    assert!(throttled.message().contains("limit of 2 per 60 seconds"));
    double.reset_throttling();
    assert_eq!(arm.delete(&assignment_path(&new_guid())).await.status, 204);
}

// ---------------------------------------------------------------- faults

#[tokio::test]
async fn injected_faults_and_the_pipelines_retry() {
    let double = start(ArmDoubleConfig::default()).await;
    let credential = default_credential(&double);

    // azure_core's default retry policy honours Retry-After and succeeds.
    double.fail_next(1, 503, "ServiceUnavailable", Some(1));
    let retrying = Arm::with_retry(&double, credential.clone(), RetryOptions::default());
    let started = std::time::Instant::now();
    assert_eq!(retrying.get(&account().id()).await.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(900), "waited for Retry-After");
    let arm_log = double.arm_requests();
    assert_eq!(arm_log.iter().map(|r| (r.status, r.injected)).collect::<Vec<_>>(), [(503, true), (200, false)]);

    let arm = Arm::new(&double, credential.clone());
    double.fail_next(2, 429, "TooManyRequests", Some(3));
    let r = arm.get(&account().id()).await;
    assert_eq!((r.status, r.code(), r.header("retry-after").as_deref()), (429, "TooManyRequests", Some("3")));
    assert_eq!(arm.get(&account().id()).await.status, 429);
    assert_eq!(arm.get(&account().id()).await.status, 200);

    double.inject(dbgrant_doubles::arm::Fault::respond(FaultTarget::ArmWrites, 1, 412, "PreconditionFailed"));
    assert_eq!(arm.delete(&assignment_path(&new_guid())).await.status, 412);
    assert_eq!(arm.delete(&assignment_path(&new_guid())).await.status, 204);

    double.inject(dbgrant_doubles::arm::Fault::respond(FaultTarget::Token, 1, 500, "temporarily_unavailable"));
    let fresh = secret_credential(&double, DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET);
    assert!(fresh.get_token(&[ARM_SCOPE], None).await.is_err());
    assert!(fresh.get_token(&[ARM_SCOPE], None).await.is_ok());

    double.drop_next(1, FaultTarget::ArmReads);
    assert!(arm.send(Method::Get, &account().id(), None).await.is_err(), "connection dropped");
    assert!(double.requests().iter().any(|r| r.status == 0 && r.injected));

    double.set_latency(Duration::from_millis(150));
    let started = std::time::Instant::now();
    assert_eq!(arm.get(&account().id()).await.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(150));
    double.set_latency(Duration::ZERO);

    double.refuse_connections(true);
    double.close_all_connections();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let fresh_arm = Arm::new(&double, credential.clone());
    assert!(fresh_arm.send(Method::Get, &account().id(), None).await.is_err(), "refused");
    double.refuse_connections(false);
    assert_eq!(fresh_arm.get(&account().id()).await.status, 200);
}

#[tokio::test]
async fn the_log_counts_reads_writes_and_polls_per_account() {
    let double = start(ArmDoubleConfig::default()).await;
    let arm = Arm::new(&double, default_credential(&double));
    let principal = group(&double);
    arm.get(&account().id()).await;
    let accepted =
        arm.put(&assignment_path(&new_guid()), assignment_body(DATA_READER_ID, &account().id(), &principal)).await;
    arm.wait(&accepted).await;
    arm.get(&format!("{}/sqlRoleAssignments", account().id())).await;
    let c = double.account_counters(&account());
    assert_eq!((c.reads, c.writes, c.accepted_writes, c.polls), (2, 1, 1, 2));
    let all = double.counters();
    assert_eq!((all.polls, all.token_requests), (2, 1));
    let write = double.arm_requests().into_iter().find(|r| r.kind == RequestKind::ArmWrite).unwrap();
    assert_eq!(write.method, "PUT");
    assert_eq!(write.status, 202);
    assert_eq!(write.principal.as_deref(), Some(DEFAULT_OBJECT_ID));
    assert!(write.path.contains("/sqlRoleAssignments/"));
    assert!(write.query.as_deref().unwrap().contains("api-version="));
    assert!(write.at <= std::time::SystemTime::now());
    double.clear_log();
    assert!(double.requests().is_empty());
}

#[tokio::test]
async fn seeded_state_is_served_and_inspectable() {
    let double = start(ArmDoubleConfig::default()).await;
    let arm = Arm::new(&double, default_credential(&double));
    let foreign =
        RoleAssignment::new(new_guid(), account().role_definition_id(DATA_CONTRIBUTOR_ID), account().id(), new_guid());
    double.insert_role_assignment(&account(), foreign.clone()).unwrap();
    let got = arm.get(&assignment_path(&foreign.name)).await;
    assert_eq!(got.body["properties"]["principalId"], foreign.principal_id);
    assert_eq!(double.role_assignments(&account()), vec![foreign.clone()]);
    assert_eq!(double.role_definitions(&account()).len(), 2);
    assert!(double.remove_role_assignment(&account(), &foreign.name).is_some());
    assert_eq!(arm.get(&assignment_path(&foreign.name)).await.status, 404);
}

// ---------------------------------------------------------------- binary

#[tokio::test]
async fn binary_prints_endpoints_and_credentials_and_serves() {
    use tokio::io::AsyncBufReadExt;
    let dir = temp_dir("cli");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_dbgrant-doubles"))
        .args(["arm", "--listen", "127.0.0.1:0", "--lro-polls", "1", "--write-bucket", "50", "--refill-per-sec", "5"])
        .arg("--tls-dir")
        .arg(&dir)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn binary");
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("ready in time")
        .unwrap()
        .expect("a line");
    let ready: Value = serde_json::from_str(&line).expect("JSON");
    assert_eq!(ready["double"], "arm");
    let ca = std::fs::read_to_string(ready["tls_ca_file"].as_str().unwrap()).unwrap();

    let mut cloud = CustomConfiguration::default();
    cloud.authority_host = ready["authority_host"].as_str().unwrap().to_string();
    let options = ClientOptions {
        transport: Some(Transport::new(Arc::new(http_client(&ca)))),
        cloud: Some(Arc::new(CloudConfiguration::Custom(cloud))),
        retry: RetryOptions::none(),
        ..ClientOptions::default()
    };
    let credential = ClientSecretCredential::new(
        ready["tenant_id"].as_str().unwrap(),
        ready["client_id"].as_str().unwrap().to_string(),
        Secret::new(ready["client_secret"].as_str().unwrap().to_string()),
        Some(ClientSecretCredentialOptions { client_options: options.clone() }),
    )
    .unwrap();
    let auth = Arc::new(BearerTokenAuthorizationPolicy::new(credential, [ready["arm_scope"].as_str().unwrap()]));
    let pipeline = Pipeline::new(None, None, options.clone(), vec![], vec![auth], None);
    let url = format!(
        "{}{}?api-version={}",
        ready["arm_endpoint"].as_str().unwrap(),
        ready["account_id"].as_str().unwrap(),
        ready["api_version"].as_str().unwrap()
    );
    let mut request = Request::new(Url::parse(&url).unwrap(), Method::Get);
    let response = pipeline
        .send(&Context::new(), &mut request, Some(PipelineSendOptions { skip_checks: true, ..Default::default() }))
        .await
        .unwrap();
    assert_eq!(u16::from(response.status()), 200);
    assert_eq!(
        response.headers().get_optional_str(&HeaderName::from_static("x-ms-ratelimit-remaining-subscription-reads")),
        Some("249")
    );

    // The federated token file works with the workload identity credential.
    let wi = WorkloadIdentityCredential::new(Some(WorkloadIdentityCredentialOptions {
        credential_options: ClientAssertionCredentialOptions { client_options: options },
        client_id: Some(ready["client_id"].as_str().unwrap().to_string()),
        tenant_id: Some(ready["tenant_id"].as_str().unwrap().to_string()),
        token_file_path: Some(PathBuf::from(ready["federated_token_file"].as_str().unwrap())),
    }))
    .unwrap();
    wi.get_token(&[ARM_SCOPE], None).await.expect("workload identity against the binary");
    for field in [
        "managed_identity_endpoint",
        "managed_identity_header",
        "token_endpoint",
        "subscription_id",
        "resource_group",
        "account_name",
    ] {
        assert!(ready[field].is_string(), "{field}");
    }
    child.kill().await.unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}
