//! Signing keys of a test site: consent tokens and fleet commands, made with the
//! product's own signing code.

use facegate::cmd::Command;
use facegate::command::Stamp;
use facegate::consent_log::{self, Head};
use facegate::ids::{Jti, Seq};
use facegate::{clock, consent, keys};
use serde_json::Value;

use crate::SITE;

/// An Ed25519 signing key (PKCS#8 DER) with its `kid`.
pub struct Signer {
    /// Key id named in the JWS header and in the daemon's `[[trust]]`.
    pub kid: String,
    /// Private key for signing tokens and commands.
    pub pkcs8: Vec<u8>,
    /// Public key as it goes into the config (base64url).
    pub public_b64: String,
}

impl Signer {
    /// A fresh key named `kid`.
    pub fn new(kid: &str) -> Signer {
        let (pkcs8, public) = keys::generate().expect("generate an Ed25519 key");
        Signer {
            kid: kid.into(),
            pkcs8,
            public_b64: keys::public_key_b64(&public),
        }
    }

    /// A consent token for `subject` on site `lobby`, valid for `lifetime_s` from now.
    pub fn consent(&self, subject: &str, lifetime_s: i64) -> String {
        self.consent_at(subject, lifetime_s, clock::now())
    }

    /// A consent token for `subject` issued at `now`.
    pub fn consent_at(&self, subject: &str, lifetime_s: i64, now: i64) -> String {
        let req = consent::ConsentRequest {
            issuer: "test".into(),
            subject: subject.into(),
            audience: vec![SITE.into()],
            scopes: vec![consent::UPLOAD_SCOPE.into()],
            lifetime_s,
            jti: None,
        };
        consent::sign_consent(&req, &self.kid, &self.pkcs8, now)
            .unwrap_or_else(|e| panic!("signing a consent for {subject}: {e}"))
    }

    /// A fleet command `cmd` with `args` (which must fit it) for audience
    /// `aud` (a site or `site/device`), issued at `now`: `(jti, compact JWS)`.
    pub fn command(
        &self,
        cmd: &str,
        args: Value,
        aud: &str,
        lifetime_s: i64,
        now: i64,
    ) -> (Jti, String) {
        let command =
            Command::from_parts(cmd, &args).unwrap_or_else(|e| panic!("command {cmd} {args}: {e}"));
        self.sign(&command, aud, lifetime_s, now)
    }

    /// `command` signed for audience `aud`, issued at `now`: `(jti, compact JWS)`.
    pub fn sign(&self, command: &Command, aud: &str, lifetime_s: i64, now: i64) -> (Jti, String) {
        command
            .sign(aud, lifetime_s, &self.kid, &self.pkcs8, now)
            .unwrap_or_else(|e| panic!("signing command {}: {e}", command.name()))
    }

    /// A site consent-log entry: `cmd` with `args` for the whole site
    /// (`lobby`) carrying `seq`, issued at `iat`, valid for an hour.
    pub fn entry(&self, cmd: &str, args: Value, seq: u64, iat: i64) -> (Jti, String) {
        let command =
            Command::from_parts(cmd, &args).unwrap_or_else(|e| panic!("command {cmd} {args}: {e}"));
        let stamp = Stamp {
            iat,
            exp: iat + 3600,
            seq: Some(Seq::new(seq)),
        };
        command
            .sign_as(SITE, stamp, &self.kid, &self.pkcs8)
            .unwrap_or_else(|e| panic!("signing entry {seq}: {e}"))
    }

    /// A consent-log head for `site`: `seq`, `base`, issued at `iat`, valid
    /// for a day.
    pub fn head_for(&self, site: &str, seq: u64, base: u64, iat: i64) -> String {
        let head = Head {
            seq: Seq::new(seq),
            base: Seq::new(base),
            iat,
            exp: iat + 86_400,
        };
        consent_log::sign_head(site, &head, &self.kid, &self.pkcs8)
            .unwrap_or_else(|e| panic!("signing a head: {e}"))
    }

    /// A consent-log head for the test site, issued now.
    pub fn head(&self, seq: u64, base: u64) -> String {
        self.head_for(SITE, seq, base, clock::now())
    }
}
