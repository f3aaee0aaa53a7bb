//! SCRAM-SHA-256 verifiers (RFC 5802, RFC 7677): what a node keeps of a
//! password instead of the password.
//!
//! ```text
//! SaltedPassword := PBKDF2-HMAC-SHA-256(SASLprep(password), salt, i)
//! ClientKey      := HMAC(SaltedPassword, "Client Key")
//! StoredKey      := SHA-256(ClientKey)
//! ServerKey      := HMAC(SaltedPassword, "Server Key")
//! ```
//! A verifier is `(salt, i, StoredKey, ServerKey)`, written as PostgreSQL
//! writes it in `pg_authid.rolpassword`:
//! `SCRAM-SHA-256$<i>:<base64 salt>$<base64 StoredKey>:<base64 ServerKey>`.
//!
//! It proves a client's knowledge of the password (the client sends
//! `ClientKey XOR HMAC(StoredKey, AuthMessage)`; the server recovers
//! `ClientKey` and checks its hash against `StoredKey`) and lets the server
//! prove it knew the verifier (`HMAC(ServerKey, AuthMessage)`), but it does
//! not give the password back, nor let its holder log in: logging in needs
//! `ClientKey`, which only the password yields. Someone who reads a
//! verifier can still guess passwords offline against it, as against any
//! salted hash: the iteration count (4096, PostgreSQL's default) slows
//! each guess down.
//!
//! The exchange itself is pgwire's ([`ScramSecret::Verifier`]); this module
//! makes, parses and prints verifiers.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use pgwire::api::auth::sasl::scram::{gen_salted_password, ScramSecret};

/// PBKDF2 iterations of new verifiers (PostgreSQL's default).
pub const ITERATIONS: u32 = 4096;

/// Length of a new verifier's salt, in bytes (PostgreSQL's).
const SALT_LEN: usize = 16;

/// The prefix that marks a verifier, as PostgreSQL writes it.
const PREFIX: &str = "SCRAM-SHA-256$";

/// A SCRAM-SHA-256 verifier.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    /// The salt (sent to the client in the clear).
    pub salt: Vec<u8>,
    /// PBKDF2 iterations (sent to the client in the clear).
    pub iterations: u32,
    /// `SHA-256(ClientKey)`: checks the client's proof.
    pub stored_key: [u8; 32],
    /// `HMAC(SaltedPassword, "Server Key")`: signs the server's answer.
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The keys are secrets (a guess at the password can be tested
        // against them): never in logs.
        f.debug_struct("Verifier")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// Why a string is not a verifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a SCRAM-SHA-256 verifier ({0}): write it as SCRAM-SHA-256$<iterations>:<base64 salt>$<base64 StoredKey>:<base64 ServerKey>")]
pub struct NotAVerifier(&'static str);

impl Verifier {
    /// A verifier of `password` with a new random salt.
    pub fn new(password: &str) -> Verifier {
        let mut salt = [0u8; SALT_LEN];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
            .expect("the operating system's random source failed");
        Verifier::derive(password, &salt, ITERATIONS)
    }

    /// The verifier of `password` with `salt` and `iterations`.
    pub fn derive(password: &str, salt: &[u8], iterations: u32) -> Verifier {
        let salted = gen_salted_password(password, salt, iterations as usize);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key = ring::digest::digest(&ring::digest::SHA256, &client_key);
        let mut verifier = Verifier {
            salt: salt.to_vec(),
            iterations,
            stored_key: [0; 32],
            server_key: hmac(&salted, b"Server Key"),
        };
        verifier.stored_key.copy_from_slice(stored_key.as_ref());
        verifier
    }

    /// A verifier no password matches, for a user name that has none:
    /// its salt is stable for `key` and `user` (a client asking twice sees
    /// the same one, as for a real role), its keys are unguessable.
    pub fn mock(key: &[u8], user: &str) -> Verifier {
        let salt = hmac(key, format!("salt {user}").as_bytes());
        Verifier {
            salt: salt[..SALT_LEN].to_vec(),
            iterations: ITERATIONS,
            stored_key: hmac(key, format!("stored {user}").as_bytes()),
            server_key: hmac(key, format!("server {user}").as_bytes()),
        }
    }

    /// The verifier of a configured password (the administrator's): the
    /// text is a verifier already (`SCRAM-SHA-256$…`, checked when the
    /// configuration was read) or the password itself.
    pub fn of_configured(password: &str) -> Verifier {
        Verifier::parse(password).unwrap_or_else(|_| Verifier::new(password))
    }

    /// Whether `s` looks like a verifier (starts with `SCRAM-SHA-256$`),
    /// so that it is parsed rather than taken for a password.
    pub fn is_verifier_text(s: &str) -> bool {
        s.starts_with(PREFIX)
    }

    /// Parses PostgreSQL's text form.
    pub fn parse(s: &str) -> Result<Verifier, NotAVerifier> {
        let rest = s
            .strip_prefix(PREFIX)
            .ok_or(NotAVerifier("no SCRAM-SHA-256$ prefix"))?;
        let (params, keys) = rest
            .split_once('$')
            .ok_or(NotAVerifier("no $ before the keys"))?;
        let (iterations, salt) = params
            .split_once(':')
            .ok_or(NotAVerifier("no : between iterations and salt"))?;
        let (stored, server) = keys
            .split_once(':')
            .ok_or(NotAVerifier("no : between StoredKey and ServerKey"))?;
        let iterations: u32 = iterations
            .parse()
            .map_err(|_| NotAVerifier("iterations are not a number"))?;
        if iterations == 0 {
            return Err(NotAVerifier("iterations must be at least 1"));
        }
        let salt = STANDARD
            .decode(salt)
            .map_err(|_| NotAVerifier("salt is not base64"))?;
        if salt.is_empty() {
            return Err(NotAVerifier("empty salt"));
        }
        let key = |text: &str| -> Result<[u8; 32], NotAVerifier> {
            STANDARD
                .decode(text)
                .ok()
                .and_then(|k| <[u8; 32]>::try_from(k).ok())
                .ok_or(NotAVerifier("a key is not 32 bytes of base64"))
        };
        Ok(Verifier {
            salt,
            iterations,
            stored_key: key(stored)?,
            server_key: key(server)?,
        })
    }

    /// The secret pgwire's SCRAM exchange checks a client against.
    pub fn secret(&self) -> ScramSecret {
        ScramSecret::Verifier {
            salt: self.salt.clone(),
            iterations: self.iterations as usize,
            stored_key: self.stored_key.to_vec(),
            server_key: self.server_key.to_vec(),
        }
    }

    /// Whether `password` is the password of this verifier (for the HTTP
    /// bearer token, which is the password itself).
    pub fn matches(&self, password: &str) -> bool {
        let candidate = Verifier::derive(password, &self.salt, self.iterations);
        // Every byte compared, whatever differs first: the time taken says
        // nothing about how much of a guess was right.
        candidate
            .stored_key
            .iter()
            .zip(self.stored_key)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl std::fmt::Display for Verifier {
    /// PostgreSQL's text form.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{PREFIX}{}:{}${}:{}",
            self.iterations,
            STANDARD.encode(&self.salt),
            STANDARD.encode(self.stored_key),
            STANDARD.encode(self.server_key)
        )
    }
}

fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let tag = ring::hmac::sign(&key, message);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677 section 3: user `user`, password `pencil`.
    const RFC_SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
    const CLIENT_FIRST_BARE: &str = "n=user,r=rOprNGfwEbeRWgbNEkqO";
    const SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const CLIENT_FINAL_WITHOUT_PROOF: &str =
        "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const CLIENT_PROOF: &str = "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_SIGNATURE: &str = "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn rfc_verifier() -> Verifier {
        Verifier::derive("pencil", &STANDARD.decode(RFC_SALT).unwrap(), 4096)
    }

    fn auth_message() -> String {
        format!("{CLIENT_FIRST_BARE},{SERVER_FIRST},{CLIENT_FINAL_WITHOUT_PROOF}")
    }

    #[test]
    fn the_rfc_7677_client_proof_checks_out_against_the_verifier_alone() {
        let v = rfc_verifier();
        let proof = STANDARD.decode(CLIENT_PROOF).unwrap();
        let signature = hmac(&v.stored_key, auth_message().as_bytes());
        let client_key: Vec<u8> = proof.iter().zip(signature).map(|(p, s)| p ^ s).collect();
        let hashed = ring::digest::digest(&ring::digest::SHA256, &client_key);
        assert_eq!(hashed.as_ref(), v.stored_key);
    }

    #[test]
    fn the_rfc_7677_server_signature_comes_from_the_server_key() {
        let v = rfc_verifier();
        let signature = hmac(&v.server_key, auth_message().as_bytes());
        assert_eq!(STANDARD.encode(signature), SERVER_SIGNATURE);
    }

    #[test]
    fn a_wrong_password_yields_another_stored_key() {
        let v = rfc_verifier();
        assert!(v.matches("pencil"));
        assert!(!v.matches("pencil "));
        assert!(!v.matches(""));
    }

    #[test]
    fn a_verifier_reads_back_from_its_postgresql_text_form() {
        let v = Verifier::new("secret");
        let text = v.to_string();
        assert!(Verifier::is_verifier_text(&text));
        assert!(!text.contains("secret"));
        assert_eq!(Verifier::parse(&text).unwrap(), v);
        assert!(Verifier::parse(&text).unwrap().matches("secret"));
    }

    #[test]
    fn the_text_form_is_postgresql_s_header_then_the_keys() {
        let text = rfc_verifier().to_string();
        assert!(text.starts_with("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$"));
        assert_eq!(Verifier::parse(&text).unwrap(), rfc_verifier());
    }

    #[test]
    fn malformed_verifiers_are_refused_with_what_is_wrong() {
        for (text, why) in [
            ("pencil", "no SCRAM-SHA-256$ prefix"),
            ("SCRAM-SHA-256$4096:c2FsdA==", "no $ before the keys"),
            ("SCRAM-SHA-256$4096$a:b", "no : between iterations and salt"),
            (
                "SCRAM-SHA-256$x:c2FsdA==$a:b",
                "iterations are not a number",
            ),
            (
                "SCRAM-SHA-256$0:c2FsdA==$a:b",
                "iterations must be at least 1",
            ),
            ("SCRAM-SHA-256$4096:!!$a:b", "salt is not base64"),
            (
                "SCRAM-SHA-256$4096:c2FsdA==$YQ==:YQ==",
                "a key is not 32 bytes of base64",
            ),
            (
                "SCRAM-SHA-256$4096:c2FsdA==$ab",
                "no : between StoredKey and ServerKey",
            ),
        ] {
            assert_eq!(Verifier::parse(text), Err(NotAVerifier(why)), "{text}");
        }
    }

    #[test]
    fn two_verifiers_of_one_password_have_different_salts() {
        assert_ne!(Verifier::new("x").salt, Verifier::new("x").salt);
    }

    #[test]
    fn the_debug_form_shows_no_key() {
        let shown = format!("{:?}", rfc_verifier());
        assert!(!shown.contains(&STANDARD.encode(rfc_verifier().stored_key)));
    }
}
