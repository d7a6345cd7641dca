//! Just enough JWT (RFC 7519) for the double: its own ES256 signing key
//! (access tokens, federated tokens, the JWKS), parsing, and verifying
//! client assertions against a registered X.509 certificate.

use anyhow::{Context, Result, anyhow};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};

pub(crate) fn b64url(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

/// A parsed (not yet verified) compact JWS.
#[derive(Debug, Clone)]
pub(crate) struct Jwt {
    pub header: Value,
    pub claims: Value,
    /// `base64url(header).base64url(claims)`.
    pub signing_input: String,
    pub signature: Vec<u8>,
}

impl Jwt {
    pub fn parse(token: &str) -> Result<Self> {
        let parts: Vec<&str> = token.trim().split('.').collect();
        let [h, c, s] = parts.as_slice() else {
            return Err(anyhow!("a JWT has three dot-separated parts, this has {}", parts.len()));
        };
        let decode = |part: &str, what: &str| {
            URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).with_context(|| format!("{what} is not base64url"))
        };
        let header: Value = serde_json::from_slice(&decode(h, "header")?).context("header is not JSON")?;
        let claims: Value = serde_json::from_slice(&decode(c, "payload")?).context("payload is not JSON")?;
        if !header.is_object() || !claims.is_object() {
            return Err(anyhow!("header and payload must be JSON objects"));
        }
        Ok(Self { header, claims, signing_input: format!("{h}.{c}"), signature: decode(s, "signature")? })
    }

    pub fn alg(&self) -> &str {
        self.header.get("alg").and_then(Value::as_str).unwrap_or("")
    }

    pub fn claim_str(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(Value::as_str)
    }

    pub fn claim_i64(&self, name: &str) -> Option<i64> {
        self.claims.get(name).and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)))
    }

    /// `aud` as a list (it may be a string or an array).
    pub fn audiences(&self) -> Vec<String> {
        match self.claims.get("aud") {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
            _ => Vec::new(),
        }
    }
}

/// The double's token-signing key.
pub(crate) struct Signer {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    pub kid: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl Signer {
    pub fn generate() -> Result<Self> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| anyhow!("generating the signing key"))?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|_| anyhow!("loading the signing key"))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, key.public_key().as_ref());
        let kid = b64url(&digest.as_ref()[..12]);
        Ok(Self { key, rng, kid })
    }

    /// Signs `claims` as an ES256 JWT.
    pub fn sign(&self, claims: &Value) -> Result<String> {
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": self.kid});
        let input = format!("{}.{}", b64url(header.to_string().as_bytes()), b64url(claims.to_string().as_bytes()));
        let sig = self.key.sign(&self.rng, input.as_bytes()).map_err(|_| anyhow!("signing a token"))?;
        Ok(format!("{input}.{}", b64url(sig.as_ref())))
    }

    /// Whether `jwt` carries this key's valid signature.
    pub fn verify(&self, jwt: &Jwt) -> bool {
        jwt.alg() == "ES256"
            && ring::signature::UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, self.key.public_key().as_ref())
                .verify(jwt.signing_input.as_bytes(), &jwt.signature)
                .is_ok()
    }

    /// The public key as a JWKS document.
    pub fn jwks(&self) -> Value {
        let point = self.key.public_key().as_ref();
        // Uncompressed SEC1 point: 0x04 || x (32) || y (32).
        let (x, y) = point[1..].split_at(32);
        json!({"keys": [{
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256",
            "kid": self.kid, "x": b64url(x), "y": b64url(y),
        }]})
    }
}

/// A signing key an external issuer publishes in its JWKS (RFC 7517): what
/// Entra fetches from the `jwks_uri` of the issuer's OpenID discovery
/// document to validate a federated token ("Workload identity federation",
/// Microsoft Learn: "the external IdP's ... signing keys are used to
/// validate the token"). RSA (`n`, `e`; a kube-apiserver signs
/// ServiceAccount tokens RS256) or EC P-256 (`x`, `y`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Jwk {
    pub kid: Option<String>,
    key: JwkKey,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum JwkKey {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// Uncompressed SEC1 point.
    EcP256(Vec<u8>),
}

impl Jwk {
    /// The keys of a JWKS document (`{"keys": [...]}`); keys of other types
    /// are skipped, as a relying party does.
    pub fn parse_set(jwks: &Value) -> Result<Vec<Self>> {
        let keys = jwks.get("keys").and_then(Value::as_array).ok_or_else(|| anyhow!("a JWKS has a \"keys\" array"))?;
        let b64 = |k: &Value, f: &str| -> Result<Vec<u8>> {
            let v = k.get(f).and_then(Value::as_str).ok_or_else(|| anyhow!("JWK without {f:?}"))?;
            URL_SAFE_NO_PAD.decode(v.trim_end_matches('=')).with_context(|| format!("JWK {f:?} is not base64url"))
        };
        let mut out = Vec::new();
        for k in keys {
            let kid = k.get("kid").and_then(Value::as_str).map(str::to_string);
            let key = match (k.get("kty").and_then(Value::as_str), k.get("crv").and_then(Value::as_str)) {
                (Some("RSA"), _) => JwkKey::Rsa { n: b64(k, "n")?, e: b64(k, "e")? },
                (Some("EC"), Some("P-256")) => {
                    let mut point = vec![0x04];
                    point.extend(b64(k, "x")?);
                    point.extend(b64(k, "y")?);
                    JwkKey::EcP256(point)
                }
                _ => continue,
            };
            out.push(Self { kid, key });
        }
        if out.is_empty() {
            return Err(anyhow!("the JWKS holds no RSA or P-256 key"));
        }
        Ok(out)
    }

    fn verify(&self, jwt: &Jwt) -> Result<()> {
        let input = jwt.signing_input.as_bytes();
        let ok = match (&self.key, jwt.alg()) {
            (JwkKey::Rsa { n, e }, "RS256") => ring::signature::RsaPublicKeyComponents { n, e }
                .verify(&ring::signature::RSA_PKCS1_2048_8192_SHA256, input, &jwt.signature)
                .is_ok(),
            (JwkKey::EcP256(point), "ES256") => {
                ring::signature::UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
                    .verify(input, &jwt.signature)
                    .is_ok()
            }
            (_, alg) => return Err(anyhow!("alg {alg:?} does not fit key {:?}", self.kid)),
        };
        if ok { Ok(()) } else { Err(anyhow!("signature does not verify with key {:?}", self.kid)) }
    }

    /// Verifies `jwt` with the key its `kid` names (any key when it names
    /// none).
    pub fn verify_with_set(keys: &[Self], jwt: &Jwt) -> Result<()> {
        let kid = jwt.header.get("kid").and_then(Value::as_str);
        let candidates: Vec<&Self> = keys.iter().filter(|k| kid.is_none() || k.kid.as_deref() == kid).collect();
        if candidates.is_empty() {
            return Err(anyhow!("The key was not found (kid {kid:?})"));
        }
        let mut last = None;
        for k in candidates {
            match k.verify(jwt) {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("no key verified the signature")))
    }
}

/// A registered client certificate.
#[derive(Debug, Clone)]
pub(crate) struct ClientCert {
    der: Vec<u8>,
    /// SHA-1 of the DER, upper-case hex (the portal's "thumbprint").
    pub thumbprint_hex: String,
    sha1: Vec<u8>,
    sha256: Vec<u8>,
}

impl ClientCert {
    pub fn from_pem(pem: &str) -> Result<Self> {
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).context("parsing client certificate PEM")?;
        webpki::EndEntityCert::try_from(&der).map_err(|e| anyhow!("not a usable X.509 certificate: {e:?}"))?;
        let sha1 = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, der.as_ref()).as_ref().to_vec();
        let sha256 = ring::digest::digest(&ring::digest::SHA256, der.as_ref()).as_ref().to_vec();
        let thumbprint_hex = sha1.iter().map(|b| format!("{b:02X}")).collect();
        Ok(Self { der: der.as_ref().to_vec(), thumbprint_hex, sha1, sha256 })
    }

    /// Whether the JWT header names this certificate: `x5t` (SHA-1,
    /// base64url or — as azure_identity sends it — standard base64),
    /// `x5t#S256`, or a `kid` equal to the hex SHA-1 thumbprint.
    pub fn named_by(&self, header: &Value) -> bool {
        let decode = |s: &str| {
            URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok().or_else(|| STANDARD.decode(s).ok()).unwrap_or_default()
        };
        let field = |name: &str| header.get(name).and_then(Value::as_str);
        field("x5t").is_some_and(|t| decode(t) == self.sha1)
            || field("x5t#S256").is_some_and(|t| decode(t) == self.sha256)
            || field("kid").is_some_and(|k| k.eq_ignore_ascii_case(&self.thumbprint_hex))
    }

    /// Verifies the JWT's signature with this certificate's public key
    /// (RS256, PS256 or ES256).
    pub fn verify(&self, jwt: &Jwt) -> Result<()> {
        let der = CertificateDer::from(self.der.as_slice());
        let cert = webpki::EndEntityCert::try_from(&der).map_err(|e| anyhow!("certificate: {e:?}"))?;
        let (alg, signature) = match jwt.alg() {
            "RS256" => (webpki::ring::RSA_PKCS1_2048_8192_SHA256, jwt.signature.clone()),
            "PS256" => (webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY, jwt.signature.clone()),
            "ES256" => (webpki::ring::ECDSA_P256_SHA256, ecdsa_fixed_to_der(&jwt.signature)?),
            other => return Err(anyhow!("unsupported alg {other:?} (RS256, PS256 or ES256)")),
        };
        cert.verify_signature(alg, jwt.signing_input.as_bytes(), &signature)
            .map_err(|e| anyhow!("signature does not verify: {e:?}"))
    }
}

/// JWS ES256 signatures are `r || s`; X.509 verification wants DER.
fn ecdsa_fixed_to_der(sig: &[u8]) -> Result<Vec<u8>> {
    if sig.len() != 64 {
        return Err(anyhow!("ES256 signature must be 64 bytes, got {}", sig.len()));
    }
    fn integer(bytes: &[u8]) -> Vec<u8> {
        let mut v: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
        if v.is_empty() || v[0] & 0x80 != 0 {
            v.insert(0, 0);
        }
        let mut out = vec![0x02, v.len() as u8];
        out.extend(v);
        out
    }
    let mut body = integer(&sig[..32]);
    body.extend(integer(&sig[32..]));
    let mut out = vec![0x30, body.len() as u8];
    out.extend(body);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jwks_verifies_its_own_issuers_tokens_only() {
        let issuer = Signer::generate().unwrap();
        let other = Signer::generate().unwrap();
        let keys = Jwk::parse_set(&issuer.jwks()).unwrap();
        let token = Jwt::parse(&issuer.sign(&json!({"sub": "x"})).unwrap()).unwrap();
        Jwk::verify_with_set(&keys, &token).unwrap();
        // Signed by another key under the same kid: refused.
        let mut forged = Jwt::parse(&other.sign(&json!({"sub": "x"})).unwrap()).unwrap();
        forged.header["kid"] = json!(issuer.kid);
        assert!(Jwk::verify_with_set(&keys, &forged).is_err());
        // A kid the set does not hold: "the key was not found".
        let unknown = Jwt::parse(&other.sign(&json!({"sub": "x"})).unwrap()).unwrap();
        assert!(Jwk::verify_with_set(&keys, &unknown).unwrap_err().to_string().contains("not found"));
        // A tampered payload.
        let mut tampered = token.clone();
        tampered.signing_input.push('x');
        assert!(Jwk::verify_with_set(&keys, &tampered).is_err());
    }

    #[test]
    fn a_jwks_without_usable_keys_is_refused() {
        assert!(Jwk::parse_set(&json!({"keys": [{"kty": "oct", "k": "AA"}]})).is_err());
        assert!(Jwk::parse_set(&json!({})).is_err());
    }

    #[test]
    fn sign_parse_verify_roundtrip() {
        let signer = Signer::generate().unwrap();
        let token = signer.sign(&json!({"sub": "x", "aud": ["a", "b"], "exp": 5})).unwrap();
        let jwt = Jwt::parse(&token).unwrap();
        assert!(signer.verify(&jwt));
        assert_eq!(jwt.audiences(), vec!["a", "b"]);
        assert_eq!(jwt.claim_i64("exp"), Some(5));
        let other = Signer::generate().unwrap();
        assert!(!other.verify(&jwt));
        assert!(Jwt::parse("a.b").is_err());
        assert!(Jwt::parse("!!.??.**").is_err());
        assert_eq!(signer.jwks()["keys"][0]["kid"], signer.kid);
    }

    #[test]
    fn es256_client_assertion_verifies_against_its_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["client".to_string()]).unwrap().self_signed(&key).unwrap();
        let client = ClientCert::from_pem(&cert.pem()).unwrap();
        let header = json!({"alg": "ES256", "typ": "JWT", "x5t": STANDARD.encode(&client.sha1)});
        assert!(client.named_by(&header));
        assert!(client.named_by(&json!({"kid": client.thumbprint_hex.to_lowercase()})));
        assert!(!client.named_by(&json!({"x5t": "AAAA"})));

        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key.serialize_der(), &rng).unwrap();
        let input = format!("{}.{}", b64url(header.to_string().as_bytes()), b64url(b"{\"iss\":\"c\"}"));
        let sig = pair.sign(&rng, input.as_bytes()).unwrap();
        let jwt = Jwt::parse(&format!("{input}.{}", b64url(sig.as_ref()))).unwrap();
        client.verify(&jwt).unwrap();
        let mut tampered = jwt.clone();
        tampered.signing_input.push('x');
        assert!(client.verify(&tampered).is_err());
    }
}
