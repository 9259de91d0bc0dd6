//! Client tokens: HS256 JWTs whose `sub` is the user id and whose `exp` is honoured.

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The claims Kaiwa reads and writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    pub iat: u64,
}

/// Signs and checks tokens with the node's secret.
pub struct Auth {
    enc: EncodingKey,
    dec: DecodingKey,
    validation: Validation,
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Auth {
    /// Keys from the shared secret.
    pub fn new(secret: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Auth {
            enc: EncodingKey::from_secret(secret.as_bytes()),
            dec: DecodingKey::from_secret(secret.as_bytes()),
            validation,
        }
    }

    /// A token for `user`, valid for `ttl_s` seconds.
    pub fn mint(&self, user: &str, ttl_s: u64) -> anyhow::Result<String> {
        let now = now_s();
        let claims = Claims {
            sub: user.to_string(),
            iat: now,
            exp: now + ttl_s,
        };
        Ok(encode(&Header::new(Algorithm::HS256), &claims, &self.enc)?)
    }

    /// The claims of a valid, unexpired token.
    pub fn verify(&self, token: &str) -> Result<Claims, String> {
        decode::<Claims>(token, &self.dec, &self.validation)
            .map(|d| d.claims)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_other_secrets_fail() {
        let a = Auth::new("one");
        let t = a.mint("u_1", 60).unwrap();
        assert_eq!(a.verify(&t).unwrap().sub, "u_1");
        assert!(Auth::new("two").verify(&t).is_err());
        assert!(a.verify("not-a-token").is_err());
    }

    #[test]
    fn expired_tokens_fail() {
        let a = Auth::new("one");
        let now = now_s();
        let claims = Claims {
            sub: "u".into(),
            iat: now - 100,
            exp: now - 10,
        };
        let t = encode(&Header::new(Algorithm::HS256), &claims, &a.enc).unwrap();
        assert!(a.verify(&t).is_err());
    }
}
