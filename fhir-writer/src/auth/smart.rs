//! SMART Backend Services (SMART App Launch 2.x, "Backend Services"): the OAuth2
//! client-credentials grant where the client authenticates with a signed JWT
//! (`private_key_jwt`, RFC 7523) instead of a secret. The client's public key is registered
//! with the authorization server as a JWKS ([`SigningKey::jwks`] prints it).
//!
//! Every token request carries a fresh assertion: `iss` = `sub` = the client id, `aud` = the
//! token endpoint, a unique `jti`, and `exp` five minutes ahead. Signing and the JWK are
//! `jsonwebtoken`'s (on aws-lc-rs, rustls's crypto); nothing here handles key bytes itself.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use serde_json::Value;

/// How long an assertion is valid (the SMART specification's maximum).
pub const ASSERTION_LIFETIME_SECS: u64 = 300;

/// The assertion type of RFC 7523 client authentication.
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// SMART Backend Services settings.
#[derive(Clone)]
pub struct SmartBackend {
    /// The client id registered with the authorization server.
    pub client_id: String,
    /// The token endpoint; `None`: discovered from the FHIR server's
    /// `.well-known/smart-configuration` (`token_endpoint`).
    pub token_url: Option<String>,
    /// The signing key.
    pub key: SigningKey,
    /// The scopes asked for, space-separated, e.g. `system/Observation.write system/Patient.read`.
    pub scope: String,
}

impl fmt::Debug for SmartBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmartBackend")
            .field("client_id", &self.client_id)
            .field("token_url", &self.token_url)
            .field("key", &self.key)
            .field("scope", &self.scope)
            .finish()
    }
}

/// A private key for client assertions, with its algorithm and key id. `Debug` shows the
/// algorithm and `kid` only.
#[derive(Clone)]
pub struct SigningKey {
    alg: Algorithm,
    kid: String,
    key: EncodingKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SigningKey({:?}, kid {:?}, <private key>)",
            self.alg, self.kid
        )
    }
}

/// Why a key cannot be used. The messages never hold key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Not one of the algorithms SMART Backend Services names.
    #[error("algorithm {0:?} is not supported: use RS384 or ES384")]
    Algorithm(String),
    /// The PEM did not hold a private key of the algorithm's kind.
    #[error("not a {want} private key in PEM ({detail}){hint}")]
    Pem {
        /// What was expected.
        want: &'static str,
        /// jsonwebtoken's reason.
        detail: String,
        /// How to convert, where that is the likely cause.
        hint: &'static str,
    },
    /// The key parsed but cannot sign with the algorithm (e.g. a P-256 key for ES384).
    #[error("the key cannot sign {alg:?} ({detail}); ES384 needs a P-384 key, RS384 an RSA key of at least 2048 bits")]
    Unusable {
        /// The algorithm.
        alg: Algorithm,
        /// jsonwebtoken's reason.
        detail: String,
    },
    /// An empty key id.
    #[error(
        "kid is empty: give the key id under which the public key is registered (its JWKS entry)"
    )]
    Kid,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: u64,
    iat: u64,
    jti: String,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

impl SigningKey {
    /// A key from a PEM private key (PKCS#8 `PRIVATE KEY`, or PKCS#1 `RSA PRIVATE KEY` for RSA)
    /// for `alg` (`RS384` or `ES384`) and key id `kid`. Signs once to check the key fits.
    pub fn from_pem(pem: &[u8], alg: &str, kid: &str) -> Result<SigningKey, KeyError> {
        let alg = match alg.trim().to_ascii_uppercase().as_str() {
            "RS384" => Algorithm::RS384,
            "ES384" => Algorithm::ES384,
            other => return Err(KeyError::Algorithm(other.to_string())),
        };
        if kid.trim().is_empty() {
            return Err(KeyError::Kid);
        }
        let key = match alg {
            Algorithm::RS384 => EncodingKey::from_rsa_pem(pem).map_err(|e| KeyError::Pem {
                want: "RSA",
                detail: e.to_string(),
                hint: "",
            })?,
            _ => EncodingKey::from_ec_pem(pem).map_err(|e| KeyError::Pem {
                want: "EC (PKCS#8)",
                detail: e.to_string(),
                hint: if String::from_utf8_lossy(pem).contains("BEGIN EC PRIVATE KEY") {
                    "; a SEC1 'EC PRIVATE KEY' converts with `openssl pkcs8 -topk8 -nocrypt`"
                } else {
                    ""
                },
            })?,
        };
        let k = SigningKey {
            alg,
            kid: kid.trim().to_string(),
            key,
        };
        k.assertion("check", "https://check.invalid/token")
            .map_err(|detail| KeyError::Unusable { alg, detail })?;
        Ok(k)
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// A signed client assertion for `client_id` at token endpoint `aud`.
    pub fn assertion(&self, client_id: &str, aud: &str) -> Result<String, String> {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        header.typ = Some("JWT".into());
        let iat = now_secs();
        let jti: String = {
            let bytes: [u8; 16] = rand::random();
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        };
        let claims = Claims {
            iss: client_id,
            sub: client_id,
            aud,
            exp: iat + ASSERTION_LIFETIME_SECS,
            iat,
            jti,
        };
        jsonwebtoken::encode(&header, &claims, &self.key).map_err(|e| e.to_string())
    }

    /// The public key as a JWKS (`{"keys": [...]}`), to register with the authorization server.
    pub fn jwks(&self) -> Result<Value, String> {
        let mut jwk = Jwk::from_encoding_key(&self.key, self.alg).map_err(|e| e.to_string())?;
        jwk.common.key_id = Some(self.kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        serde_json::to_value(JwkSet { keys: vec![jwk] }).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    // Throw-away test keys, made for these tests with
    // `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048` and
    // `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384`.
    const RSA: &str = include_str!("testdata/rs384.pem");
    const EC384: &str = include_str!("testdata/es384.pem");
    const EC256: &str = include_str!("testdata/es256.pem");

    fn claims(jwt: &str) -> (Value, Value) {
        let part = |i: usize| -> Value {
            let b = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(jwt.split('.').nth(i).unwrap())
                .unwrap();
            serde_json::from_slice(&b).unwrap()
        };
        (part(0), part(1))
    }

    #[test]
    fn assertions_carry_what_smart_asks_for() {
        for (pem, alg) in [(RSA, "RS384"), (EC384, "ES384")] {
            let k = SigningKey::from_pem(pem.as_bytes(), alg, "k1").unwrap();
            let a = k.assertion("iomt", "https://auth.example/token").unwrap();
            let b = k.assertion("iomt", "https://auth.example/token").unwrap();
            let (h, c) = claims(&a);
            assert_eq!(h["alg"], alg);
            assert_eq!(h["kid"], "k1");
            assert_eq!(h["typ"], "JWT");
            assert_eq!(c["iss"], "iomt");
            assert_eq!(c["sub"], "iomt");
            assert_eq!(c["aud"], "https://auth.example/token");
            let exp = c["exp"].as_u64().unwrap();
            assert_eq!(exp - c["iat"].as_u64().unwrap(), ASSERTION_LIFETIME_SECS);
            assert_ne!(c["jti"], claims(&b).1["jti"], "a fresh jti per assertion");
        }
    }

    #[test]
    fn jwks_holds_the_public_key_only() {
        let k = SigningKey::from_pem(RSA.as_bytes(), "RS384", "k1").unwrap();
        let j = k.jwks().unwrap();
        let key = &j["keys"][0];
        assert_eq!(key["kty"], "RSA");
        assert_eq!(key["alg"], "RS384");
        assert_eq!(key["kid"], "k1");
        assert_eq!(key["use"], "sig");
        assert!(key.get("d").is_none(), "no private part: {key}");
        let k = SigningKey::from_pem(EC384.as_bytes(), "ES384", "k2").unwrap();
        let key = &k.jwks().unwrap()["keys"][0];
        assert_eq!(
            (key["kty"].as_str(), key["crv"].as_str()),
            (Some("EC"), Some("P-384"))
        );
        assert!(key.get("d").is_none(), "no private part: {key}");
    }

    #[test]
    fn wrong_keys_are_refused_without_showing_them() {
        let cases = [
            (EC384, "RS384", "not a RSA private key"),
            (RSA, "ES384", "not a EC (PKCS#8) private key"),
            (EC256, "ES384", "cannot sign ES384"),
            (RSA, "HS256", "RS384 or ES384"),
            ("not a key", "RS384", "not a RSA private key"),
        ];
        for (pem, alg, want) in cases {
            let e = SigningKey::from_pem(pem.as_bytes(), alg, "k")
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{alg}: {e}");
            assert!(!e.contains("MII"), "key material in {e}");
        }
        assert!(matches!(
            SigningKey::from_pem(RSA.as_bytes(), "RS384", " "),
            Err(KeyError::Kid)
        ));
        let shown = format!(
            "{:?}",
            SigningKey::from_pem(RSA.as_bytes(), "RS384", "k").unwrap()
        );
        assert!(!shown.contains("MII"), "{shown}");
    }
}
