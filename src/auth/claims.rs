//! Claim rules, matching PyJWT as djangorestframework-simplejwt calls it: `exp <= now - leeway`
//! is expired, `nbf`/`iat` later than `now + leeway` are not yet valid, `iss`/`aud` checked only
//! when the policy sets them, required claims must be present and non-null, and the policy's
//! `claims` must match exactly. Times are whole seconds; numeric dates may be integers or
//! floats (truncated like Python's `int()`), anything else is a malformed token.

use serde_json::{Map, Value};

use super::reasons::{
    EXPIRED, MALFORMED, MISSING_CLAIM, NOT_YET_VALID, WRONG_AUDIENCE, WRONG_CLAIM, WRONG_ISSUER,
};
use super::Rejection;
use crate::config::jwt_policy::JwtPolicySettings;

/// The time-independent part of a policy's claim checks, plus its leeway.
#[derive(Debug, Clone)]
pub(crate) struct ClaimRules {
    /// Whole seconds.
    pub leeway: i64,
    issuer: Option<String>,
    audience: Option<String>,
    required: Vec<String>,
    exact: Vec<(String, Value)>,
}

/// True when a token with this `exp` must be refused at `now` (simplejwt's boundary).
pub(crate) fn is_expired(exp: i64, now: i64, leeway: i64) -> bool {
    exp <= now.saturating_sub(leeway)
}

/// A NumericDate: any JSON number (floats truncated toward zero), nothing else.
fn numeric_date(value: &Value) -> Option<i64> {
    let Value::Number(n) = value else {
        return None;
    };
    if let Some(i) = n.as_i64() {
        return Some(i);
    }
    if n.as_u64().is_some() {
        return Some(i64::MAX);
    }
    // `as` saturates, which is what a far-future or far-past date needs.
    n.as_f64().map(|f| f.trunc() as i64)
}

/// JSON equality, except that numbers compare by value (`2` matches `2.0`, as in Python).
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x == y || matches!((x.as_f64(), y.as_f64()), (Some(p), Some(q)) if p == q)
        }
        _ => a == b,
    }
}

const fn reject(reason: &'static str, description: &'static str) -> Rejection {
    Rejection::new(reason, description)
}

impl ClaimRules {
    pub(crate) fn new(settings: &JwtPolicySettings) -> Self {
        ClaimRules {
            leeway: i64::try_from(settings.leeway.as_secs()).unwrap_or(i64::MAX),
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            required: settings.required_claims.clone(),
            exact: settings.claims.clone(),
        }
    }

    /// Checks the claims of a token whose signature is already verified; returns its `exp`.
    pub(crate) fn check(
        &self,
        claims: &Map<String, Value>,
        now: i64,
    ) -> Result<Option<i64>, Rejection> {
        for name in &self.required {
            if matches!(claims.get(name), None | Some(Value::Null)) {
                return Err(reject(MISSING_CLAIM, "a required claim is missing"));
            }
        }
        let date = |name: &str, bad: &'static str| -> Result<Option<i64>, Rejection> {
            claims
                .get(name)
                .map(|v| numeric_date(v).ok_or(reject(MALFORMED, bad)))
                .transpose()
        };
        let leeway = self.leeway;
        if let Some(iat) = date("iat", "iat must be a number")? {
            if iat > now.saturating_add(leeway) {
                return Err(reject(NOT_YET_VALID, "token issued in the future"));
            }
        }
        if let Some(nbf) = date("nbf", "nbf must be a number")? {
            if nbf > now.saturating_add(leeway) {
                return Err(reject(NOT_YET_VALID, "token not yet valid"));
            }
        }
        let exp = date("exp", "exp must be a number")?;
        if exp.is_some_and(|exp| is_expired(exp, now, leeway)) {
            return Err(reject(EXPIRED, "token expired"));
        }
        if let Some(issuer) = &self.issuer {
            if claims.get("iss").and_then(Value::as_str) != Some(issuer.as_str()) {
                return Err(reject(WRONG_ISSUER, "wrong issuer"));
            }
        }
        if let Some(audience) = &self.audience {
            let ok = match claims.get("aud") {
                Some(Value::String(aud)) => aud == audience,
                Some(Value::Array(list)) => {
                    list.iter().all(Value::is_string)
                        && list.iter().any(|a| a.as_str() == Some(audience.as_str()))
                }
                _ => false,
            };
            if !ok {
                return Err(reject(WRONG_AUDIENCE, "wrong audience"));
            }
        }
        // PyJWT 2.10 refuses these when present with another type.
        for (name, bad) in [
            ("sub", "sub must be a string"),
            ("jti", "jti must be a string"),
        ] {
            if claims.get(name).is_some_and(|v| !v.is_string()) {
                return Err(reject(MALFORMED, bad));
            }
        }
        for (name, expected) in &self.exact {
            if !claims.get(name).is_some_and(|v| json_eq(v, expected)) {
                return Err(reject(WRONG_CLAIM, "wrong token type or claim"));
            }
        }
        Ok(exp)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn rules() -> ClaimRules {
        ClaimRules {
            leeway: 30,
            issuer: None,
            audience: None,
            required: vec!["exp".into()],
            exact: vec![("token_type".into(), json!("access"))],
        }
    }

    fn check(rules: &ClaimRules, claims: Value, now: i64) -> Result<Option<i64>, &'static str> {
        let Value::Object(map) = claims else {
            panic!("object expected")
        };
        rules.check(&map, now).map_err(|r| r.reason)
    }

    #[test]
    fn time_boundaries_match_simplejwt() {
        let r = rules();
        let now = 1_000_000;
        let c = |exp: Value| json!({"exp": exp, "token_type": "access"});
        // exp <= now - leeway is expired; one second later is still fine.
        assert_eq!(check(&r, c(json!(now - 30)), now), Err(EXPIRED));
        assert_eq!(check(&r, c(json!(now - 29)), now), Ok(Some(now - 29)));
        assert_eq!(
            check(&r, c(json!(now as f64 - 28.5)), now),
            Ok(Some(now - 29))
        );
        assert_eq!(
            check(&r, c(json!(now as f64 - 29.5)), now),
            Err(EXPIRED),
            "int() truncation"
        );
        assert_eq!(check(&r, c(json!("soon")), now), Err(MALFORMED));
        assert_eq!(check(&r, c(json!(true)), now), Err(MALFORMED));
        assert_eq!(check(&r, c(Value::Null), now), Err(MISSING_CLAIM));
        assert_eq!(check(&r, c(json!(u64::MAX)), now), Ok(Some(i64::MAX)));
        let with = |k: &str, v: i64| json!({"exp": now + 60, "token_type": "access", k: v});
        assert!(check(&r, with("nbf", now + 30), now).is_ok());
        assert_eq!(check(&r, with("nbf", now + 31), now), Err(NOT_YET_VALID));
        assert!(check(&r, with("iat", now + 30), now).is_ok());
        assert_eq!(check(&r, with("iat", now + 31), now), Err(NOT_YET_VALID));
        assert_eq!(
            check(
                &r,
                json!({"exp": now + 60, "token_type": "access", "iat": "x"}),
                now
            ),
            Err(MALFORMED)
        );
    }

    #[test]
    fn required_and_exact_claims() {
        let r = rules();
        let now = 1_000;
        assert_eq!(
            check(&r, json!({"token_type": "access"}), now),
            Err(MISSING_CLAIM)
        );
        let mut no_exp = rules();
        no_exp.required.clear();
        assert_eq!(
            check(&no_exp, json!({"token_type": "access"}), now),
            Ok(None)
        );
        let t = |tt: Value| json!({"exp": now + 60, "token_type": tt});
        assert_eq!(check(&r, t(json!("refresh")), now), Err(WRONG_CLAIM));
        assert_eq!(check(&r, t(json!(["access"])), now), Err(WRONG_CLAIM));
        assert_eq!(check(&r, json!({"exp": now + 60}), now), Err(WRONG_CLAIM));
        let mut num = rules();
        num.exact = vec![("v".into(), json!(2))];
        assert!(check(&num, json!({"exp": now + 60, "v": 2.0}), now).is_ok());
        assert_eq!(
            check(&num, json!({"exp": now + 60, "v": "2"}), now),
            Err(WRONG_CLAIM)
        );
        assert_eq!(
            check(
                &r,
                json!({"exp": now + 60, "token_type": "access", "jti": 5}),
                now
            ),
            Err(MALFORMED)
        );
    }

    #[test]
    fn issuer_and_audience() {
        let now = 1_000;
        let mut r = rules();
        r.exact.clear();
        let base = |extra: Value| {
            let mut v = json!({"exp": now + 60});
            if let (Value::Object(m), Value::Object(e)) = (&mut v, extra) {
                m.extend(e);
            }
            v
        };
        // No audience configured: aud is not looked at (simplejwt's verify_aud=False).
        assert!(check(&r, base(json!({"aud": "anything"})), now).is_ok());
        r.issuer = Some("https://idp".into());
        r.audience = Some("api".into());
        let ok = json!({"iss": "https://idp", "aud": "api"});
        assert!(check(&r, base(ok), now).is_ok());
        let list = json!({"iss": "https://idp", "aud": ["web", "api"]});
        assert!(check(&r, base(list), now).is_ok());
        let cases = [
            (json!({"aud": "api"}), WRONG_ISSUER),
            (json!({"iss": "https://evil", "aud": "api"}), WRONG_ISSUER),
            (json!({"iss": ["https://idp"], "aud": "api"}), WRONG_ISSUER),
            (json!({"iss": "https://idp"}), WRONG_AUDIENCE),
            (json!({"iss": "https://idp", "aud": "web"}), WRONG_AUDIENCE),
            (
                json!({"iss": "https://idp", "aud": ["web"]}),
                WRONG_AUDIENCE,
            ),
            (
                json!({"iss": "https://idp", "aud": ["api", 1]}),
                WRONG_AUDIENCE,
            ),
        ];
        for (extra, want) in cases {
            assert_eq!(check(&r, base(extra.clone()), now), Err(want), "{extra}");
        }
    }
}
