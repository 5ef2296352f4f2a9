//! Consent tokens: verification of the JWS (pure, a function of the token,
//! the trusted keys, this device's identity and `now`).

/// A consent token that passed verification; what the ledger stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consent {
    /// The token's `jti`: the consent id quoted in every upload envelope.
    pub id: String,
    /// The subject (`sub`) the consent is about.
    pub subject: String,
    /// Who issued it (`iss`), for audit and listing.
    pub issuer: String,
    /// `iat`, unix seconds: compared against the subject's latest revocation.
    pub issued_at: i64,
    /// `exp`, unix seconds: the consent stops working at this instant.
    pub expires_at: i64,
    /// `aud` entries (site ids or `site/device`), kept so the gate can re-check them.
    pub audience: Vec<String>,
    /// `scope` split on spaces; uploading needs [`UPLOAD_SCOPE`].
    pub scopes: Vec<String>,
    /// Header `kid` of the signing key, so a key removed from config stops the consent.
    pub kid: String,
    /// The compact JWS as received, kept for listing and re-verification.
    pub token: String,
}

/// The scope a consent must include for captures to be uploaded.
pub const UPLOAD_SCOPE: &str = "capture:upload";
