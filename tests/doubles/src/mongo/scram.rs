//! SCRAM-SHA-256 server side (RFC 5802 / RFC 7677), as MongoDB runs it over
//! `saslStart` / `saslContinue`.
//!
//! Credentials are derived once when a user is configured; the 4,096
//! iterations (the driver's minimum, below the server's default of 15,000)
//! keep the client's PBKDF2 fast in debug builds.

use super::error::{CommandError, codes};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::rand::{SecureRandom, SystemRandom};
use ring::{digest, hmac, pbkdf2};
use std::num::NonZeroU32;

/// The only mechanism the double speaks.
pub const MECHANISM: &str = "SCRAM-SHA-256";
const ITERATIONS: u32 = 4096;
const SALT_LEN: usize = 28;
const NONCE_LEN: usize = 24;

/// Stored SCRAM secrets for one user.
#[derive(Clone)]
pub(crate) struct ScramCredential {
    salt: Vec<u8>,
    iterations: u32,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

impl std::fmt::Debug for ScramCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramCredential(..)")
    }
}

fn random_bytes(len: usize) -> Result<Vec<u8>, CommandError> {
    let mut out = vec![0u8; len];
    SystemRandom::new().fill(&mut out).map_err(|_| CommandError::new(1, "no randomness available"))?;
    Ok(out)
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data).as_ref().to_vec()
}

fn auth_failed() -> CommandError {
    CommandError::new(codes::AUTHENTICATION_FAILED, "Authentication failed.")
}

impl ScramCredential {
    /// Derives the secrets for `password` with a fresh salt.
    pub(crate) fn derive(password: &str) -> Result<Self, CommandError> {
        let prepared =
            stringprep::saslprep(password).map_err(|_| CommandError::bad_value("password fails SASLprep"))?;
        let salt = random_bytes(SALT_LEN)?;
        let iterations = NonZeroU32::new(ITERATIONS).unwrap_or(NonZeroU32::MIN);
        let mut salted = [0u8; 32];
        pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA256, iterations, &salt, prepared.as_bytes(), &mut salted);
        let client_key = hmac_sha256(&salted, b"Client Key");
        let stored_key = digest::digest(&digest::SHA256, &client_key).as_ref().to_vec();
        let server_key = hmac_sha256(&salted, b"Server Key");
        Ok(Self { salt, iterations: ITERATIONS, stored_key, server_key })
    }
}

/// The parsed `client-first-message`.
#[derive(Debug)]
pub(crate) struct ClientFirst {
    /// The (unescaped) user name.
    pub(crate) username: String,
    nonce: String,
    bare: String,
    gs2_header: String,
}

/// Parses `n,,n=<user>,r=<nonce>`. Channel binding is refused.
pub(crate) fn parse_client_first(payload: &[u8]) -> Result<ClientFirst, CommandError> {
    let text = std::str::from_utf8(payload).map_err(|_| bad_payload())?;
    let mut parts = text.splitn(3, ',');
    let cbind = parts.next().ok_or_else(bad_payload)?;
    let authzid = parts.next().ok_or_else(bad_payload)?;
    let bare = parts.next().ok_or_else(bad_payload)?;
    if !matches!(cbind, "n" | "y") {
        return Err(CommandError::bad_value("SCRAM channel binding is not supported"));
    }
    if !authzid.is_empty() && !authzid.starts_with("a=") {
        return Err(bad_payload());
    }
    let mut username = None;
    let mut nonce = None;
    for attr in bare.split(',') {
        if let Some(v) = attr.strip_prefix("n=") {
            username = Some(unescape_saslname(v)?);
        } else if let Some(v) = attr.strip_prefix("r=") {
            nonce = Some(v.to_string());
        } else if attr.starts_with("m=") {
            return Err(bad_payload());
        }
    }
    let (Some(username), Some(nonce)) = (username, nonce) else {
        return Err(bad_payload());
    };
    if nonce.is_empty() {
        return Err(bad_payload());
    }
    Ok(ClientFirst { username, nonce, bare: bare.to_string(), gs2_header: format!("{cbind},{authzid},") })
}

fn bad_payload() -> CommandError {
    CommandError::bad_value("Invalid SCRAM message")
}

fn unescape_saslname(name: &str) -> Result<String, CommandError> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        let esc = rest.get(i..i + 3).ok_or_else(bad_payload)?;
        match esc {
            "=2C" => out.push(','),
            "=3D" => out.push('='),
            _ => return Err(bad_payload()),
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Where a conversation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Server-first sent; waiting for the client proof.
    AwaitingProof,
    /// Server-final sent without `done`; waiting for the empty message.
    AwaitingEmpty,
}

/// One SCRAM conversation on one connection.
#[derive(Debug)]
pub(crate) struct Conversation {
    /// The user being authenticated.
    pub(crate) username: String,
    /// Their database.
    pub(crate) db: String,
    credential: ScramCredential,
    client_first_bare: String,
    gs2_header: String,
    server_first: String,
    nonce: String,
    skip_empty_exchange: bool,
    step: Step,
}

/// What a `saslContinue` step produced.
#[derive(Debug)]
pub(crate) struct StepReply {
    /// Payload to send back.
    pub(crate) payload: Vec<u8>,
    /// Whether authentication is complete.
    pub(crate) done: bool,
}

impl Conversation {
    /// Starts a conversation for a parsed client-first message; returns the
    /// server-first payload alongside.
    pub(crate) fn start(
        client_first: ClientFirst,
        db: &str,
        credential: ScramCredential,
        skip_empty_exchange: bool,
    ) -> Result<(Self, Vec<u8>), CommandError> {
        let server_nonce = B64.encode(random_bytes(NONCE_LEN)?);
        let nonce = format!("{}{}", client_first.nonce, server_nonce);
        let server_first = format!("r={nonce},s={},i={}", B64.encode(&credential.salt), credential.iterations);
        let payload = server_first.clone().into_bytes();
        Ok((
            Self {
                username: client_first.username,
                db: db.to_string(),
                credential,
                client_first_bare: client_first.bare,
                gs2_header: client_first.gs2_header,
                server_first,
                nonce,
                skip_empty_exchange,
                step: Step::AwaitingProof,
            },
            payload,
        ))
    }

    /// Handles the next client message.
    pub(crate) fn step(&mut self, payload: &[u8]) -> Result<StepReply, CommandError> {
        match self.step {
            Step::AwaitingProof => self.verify_proof(payload),
            Step::AwaitingEmpty => Ok(StepReply { payload: Vec::new(), done: true }),
        }
    }

    fn verify_proof(&mut self, payload: &[u8]) -> Result<StepReply, CommandError> {
        let text = std::str::from_utf8(payload).map_err(|_| bad_payload())?;
        let (without_proof, proof) = text.rsplit_once(",p=").ok_or_else(bad_payload)?;
        let mut channel_binding = None;
        let mut nonce = None;
        for attr in without_proof.split(',') {
            if let Some(v) = attr.strip_prefix("c=") {
                channel_binding = Some(v);
            } else if let Some(v) = attr.strip_prefix("r=") {
                nonce = Some(v);
            }
        }
        if channel_binding != Some(B64.encode(&self.gs2_header).as_str()) || nonce != Some(self.nonce.as_str()) {
            return Err(auth_failed());
        }
        let proof = B64.decode(proof).map_err(|_| auth_failed())?;
        let auth_message = format!("{},{},{}", self.client_first_bare, self.server_first, without_proof);
        let client_signature = hmac_sha256(&self.credential.stored_key, auth_message.as_bytes());
        if proof.len() != client_signature.len() {
            return Err(auth_failed());
        }
        let client_key: Vec<u8> = proof.iter().zip(&client_signature).map(|(a, b)| a ^ b).collect();
        let stored_key = digest::digest(&digest::SHA256, &client_key);
        if stored_key.as_ref() != self.credential.stored_key.as_slice() {
            return Err(auth_failed());
        }
        let server_signature = hmac_sha256(&self.credential.server_key, auth_message.as_bytes());
        self.step = Step::AwaitingEmpty;
        Ok(StepReply {
            payload: format!("v={}", B64.encode(server_signature)).into_bytes(),
            done: self.skip_empty_exchange,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the client side of the exchange with ring, independently.
    fn client_final(password: &str, client_first_bare: &str, server_first: &str, gs2: &str) -> String {
        let mut parts = server_first.split(',');
        let nonce = parts.next().unwrap().strip_prefix("r=").unwrap();
        let salt = B64.decode(parts.next().unwrap().strip_prefix("s=").unwrap()).unwrap();
        let i: u32 = parts.next().unwrap().strip_prefix("i=").unwrap().parse().unwrap();
        let mut salted = [0u8; 32];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            NonZeroU32::new(i).unwrap(),
            &salt,
            password.as_bytes(),
            &mut salted,
        );
        let client_key = hmac_sha256(&salted, b"Client Key");
        let stored_key = digest::digest(&digest::SHA256, &client_key);
        let without_proof = format!("c={},r={nonce}", B64.encode(gs2));
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let signature = hmac_sha256(stored_key.as_ref(), auth_message.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(&signature).map(|(a, b)| a ^ b).collect();
        format!("{without_proof},p={}", B64.encode(proof))
    }

    fn exchange(password: &str, skip_empty: bool) -> Result<Vec<StepReply>, CommandError> {
        let credential = ScramCredential::derive("s3cret").unwrap();
        let first = parse_client_first(b"n,,n=ad=3Dmin=2C,r=abcdef").unwrap();
        assert_eq!(first.username, "ad=min,");
        let bare = first.bare.clone();
        let (mut conv, server_first) = Conversation::start(first, "admin", credential, skip_empty).unwrap();
        let server_first = String::from_utf8(server_first).unwrap();
        let fin = client_final(password, &bare, &server_first, "n,,");
        let mut replies = vec![conv.step(fin.as_bytes())?];
        if !skip_empty {
            replies.push(conv.step(b"")?);
        }
        Ok(replies)
    }

    #[test]
    fn right_password_authenticates() {
        let replies = exchange("s3cret", true).unwrap();
        assert!(replies[0].done);
        assert!(replies[0].payload.starts_with(b"v="));
        let replies = exchange("s3cret", false).unwrap();
        assert!(!replies[0].done && replies[1].done);
    }

    #[test]
    fn wrong_password_fails_with_18() {
        let err = exchange("nope", true).unwrap_err();
        assert_eq!(err.code, codes::AUTHENTICATION_FAILED);
    }

    #[test]
    fn malformed_client_first_is_rejected() {
        for bad in [&b""[..], b"n,,", b"p=tls,,n=a,r=b", b"n,,n=a=ZZ,r=b", b"n,,n=a", &[0xff, 0xfe]] {
            assert!(parse_client_first(bad).is_err());
        }
    }
}
