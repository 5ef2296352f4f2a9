//! [`super`] in a build without the cargo feature `pkcs11`: no token can be
//! opened, and configuration refuses a `pkcs11:` key before anything gets
//! here (`mqtt.key_file`), so these paths only name the missing feature.

use std::fmt;
use std::sync::Arc;

use super::{KeyKind, Location, Pkcs11Error};
use crate::keyref::Pkcs11Key;

/// A key in a token; there is none in this build.
pub enum TokenKey {}

impl fmt::Debug for TokenKey {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {}
    }
}

fn disabled(key: &Pkcs11Key) -> Pkcs11Error {
    Pkcs11Error {
        uri: key.uri.as_str().to_string(),
        part: "module",
        reason: "this facegate was built without PKCS#11 support (cargo feature \"pkcs11\")"
            .to_string(),
    }
}

impl TokenKey {
    /// Always refused: built without PKCS#11 support.
    pub fn open(key: &Pkcs11Key) -> Result<Arc<TokenKey>, Pkcs11Error> {
        Err(disabled(key))
    }

    /// Always refused: built without PKCS#11 support.
    pub fn open_or_generate(key: &Pkcs11Key) -> Result<(Arc<TokenKey>, bool), Pkcs11Error> {
        Err(disabled(key))
    }

    /// Never called (no value exists).
    pub fn uri(&self) -> &str {
        match *self {}
    }

    /// Never called (no value exists).
    pub fn public_key_bytes(&self) -> &[u8] {
        match *self {}
    }

    /// Never called (no value exists).
    pub fn kind(&self) -> KeyKind {
        match *self {}
    }

    /// Never called (no value exists).
    pub fn location(&self) -> &Location {
        match *self {}
    }

    /// Never called (no value exists).
    pub fn spki(&self) -> Vec<u8> {
        match *self {}
    }

    /// Never called (no value exists).
    pub fn sign(&self, _message: &[u8]) -> Result<Vec<u8>, Pkcs11Error> {
        match *self {}
    }
}
