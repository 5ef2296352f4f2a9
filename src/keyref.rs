//! Where a device's TLS private key lives (pure): a PEM file, or an object in a
//! PKCS#11 token named by an RFC 7512 URI (`pkcs11:token=facegate;object=device`).
//!
//! `mqtt.key_file` and the fleet tool's `--tls-key` take either. A value starting
//! with `pkcs11:` is a URI; anything else is a file path. The parser reads the
//! attributes facegate needs and refuses every other one by name, so a URI
//! copied from another tool never silently selects a different key:
//!
//! | attribute | where | meaning |
//! |---|---|---|
//! | `token` | path | the token's label (`CKA_LABEL` of the token) |
//! | `slot-id` | path | the slot number (instead of, or as well as, `token`) |
//! | `object` | path | the key's label (`CKA_LABEL`) |
//! | `id` | path | the key's `CKA_ID`, percent-encoded bytes |
//! | `type` | path | only `private` (the signing key) |
//! | `pin-source` | query | `file:/absolute/path` of a file holding the user PIN |
//! | `module-path` | query | the provider library (instead of `mqtt.pkcs11_module`) |
//!
//! `pin-value` is refused: a PIN never sits in the config text. Without
//! `pin-source` the PIN is the systemd credential [`PIN_CREDENTIAL`].
//! Values are percent-decoded (RFC 7512 section 2.3).

use std::fmt;
use std::path::{Path, PathBuf};

/// The prefix that makes a key reference a PKCS#11 URI.
pub const SCHEME: &str = "pkcs11:";

/// Name of the systemd credential holding the token's user PIN when the URI
/// has no `pin-source` (`LoadCredential=facegate-pkcs11-pin:…` or
/// `LoadCredentialEncrypted=`); read from `$CREDENTIALS_DIRECTORY`.
pub const PIN_CREDENTIAL: &str = "facegate-pkcs11-pin";

/// A PKCS#11 URI that cannot be used, naming the part at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("PKCS#11 URI {part}: {reason}")]
pub struct UriError {
    /// The attribute (`object`, `pin-source`, …) or part (`path`, `query`) at fault.
    pub part: String,
    /// What is wrong with it.
    pub reason: String,
}

impl UriError {
    fn new(part: impl Into<String>, reason: impl Into<String>) -> UriError {
        UriError {
            part: part.into(),
            reason: reason.into(),
        }
    }
}

/// A parsed RFC 7512 URI naming one private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkcs11Uri {
    /// The token's label (`token=`).
    pub token: Option<String>,
    /// The slot number (`slot-id=`).
    pub slot_id: Option<u64>,
    /// The key's label (`object=`).
    pub object: Option<String>,
    /// The key's `CKA_ID` (`id=`).
    pub id: Option<Vec<u8>>,
    /// The file holding the user PIN (`?pin-source=file:…`).
    pub pin_source: Option<PathBuf>,
    /// The provider library (`?module-path=…`).
    pub module_path: Option<PathBuf>,
    text: String,
}

impl Pkcs11Uri {
    /// Parses `text`, which must start with `pkcs11:`.
    pub fn parse(text: &str) -> Result<Pkcs11Uri, UriError> {
        let rest = text
            .strip_prefix(SCHEME)
            .ok_or_else(|| UriError::new("scheme", "must start with \"pkcs11:\""))?;
        if rest.contains('#') {
            return Err(UriError::new("fragment", "a PKCS#11 URI has no '#' part"));
        }
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let mut uri = Pkcs11Uri {
            token: None,
            slot_id: None,
            object: None,
            id: None,
            pin_source: None,
            module_path: None,
            text: text.to_string(),
        };
        for attr in path.split(';').filter(|a| !a.is_empty()) {
            let (name, value) = attr
                .split_once('=')
                .ok_or_else(|| UriError::new(attr, "expected name=value in the path"))?;
            let raw = decode(name, value)?;
            match name {
                "token" => set(&mut uri.token, name, text_value(name, raw)?)?,
                "object" => set(&mut uri.object, name, text_value(name, raw)?)?,
                "id" => set(&mut uri.id, name, non_empty(name, raw)?)?,
                "slot-id" => {
                    let s = text_value(name, raw)?;
                    let n = s
                        .parse::<u64>()
                        .map_err(|_| UriError::new(name, format!("{s:?} is not a number")))?;
                    set(&mut uri.slot_id, name, n)?
                }
                "type" => {
                    let t = text_value(name, raw)?;
                    if t != "private" {
                        return Err(UriError::new(
                            name,
                            format!("{t:?}: only \"private\" (the signing key) can be used"),
                        ));
                    }
                }
                "pin-value" => return Err(pin_value()),
                "manufacturer"
                | "model"
                | "serial"
                | "library-manufacturer"
                | "library-description"
                | "library-version"
                | "slot-manufacturer"
                | "slot-description" => {
                    return Err(UriError::new(
                        name,
                        "not supported: name the token by token= or slot-id=",
                    ))
                }
                other => {
                    return Err(UriError::new(
                        other,
                        "unknown attribute (supported: token, slot-id, object, id, type)",
                    ))
                }
            }
        }
        for attr in query.into_iter().flat_map(|q| q.split('&')) {
            if attr.is_empty() {
                continue;
            }
            let (name, value) = attr
                .split_once('=')
                .ok_or_else(|| UriError::new(attr, "expected name=value in the query"))?;
            let raw = decode(name, value)?;
            match name {
                "pin-source" => {
                    let s = text_value(name, raw)?;
                    let file = s.strip_prefix("file://").or(s.strip_prefix("file:"));
                    let file = file.unwrap_or(&s);
                    set(&mut uri.pin_source, name, absolute(name, file)?)?
                }
                "module-path" => {
                    let s = text_value(name, raw)?;
                    set(&mut uri.module_path, name, absolute(name, &s)?)?
                }
                "pin-value" => return Err(pin_value()),
                "module-name" => return Err(UriError::new(
                    name,
                    "not supported: give the library's path (module-path= or mqtt.pkcs11_module)",
                )),
                other => {
                    return Err(UriError::new(
                        other,
                        "unknown query attribute (supported: pin-source, module-path)",
                    ))
                }
            }
        }
        if uri.object.is_none() && uri.id.is_none() {
            return Err(UriError::new(
                "object",
                "missing: name the key by object= (its label) or id=",
            ));
        }
        if uri.token.is_none() && uri.slot_id.is_none() {
            return Err(UriError::new(
                "token",
                "missing: name the token by token= (its label) or slot-id=",
            ));
        }
        Ok(uri)
    }

    /// The URI as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Pkcs11Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A key in a PKCS#11 token and the provider library that reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkcs11Key {
    /// Which token and object.
    pub uri: Pkcs11Uri,
    /// The provider library (`module-path` of the URI, else `mqtt.pkcs11_module`).
    pub module: PathBuf,
}

/// Where a device's TLS private key lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRef {
    /// A PEM file (PKCS#8, SEC1 or RSA), not accessible by group or others.
    File(PathBuf),
    /// A non-extractable key in a PKCS#11 token.
    Pkcs11(Pkcs11Key),
}

/// Why a key reference cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyRefError {
    /// The URI is malformed or uses what facegate does not support.
    #[error(transparent)]
    Uri(#[from] UriError),
    /// A URI without `module-path` and no module configured.
    #[error("no PKCS#11 provider library: set mqtt.pkcs11_module (or --pkcs11-module) or module-path= in the URI")]
    NoModule,
    /// The URI's `module-path` and the configured module disagree.
    #[error("PKCS#11 URI module-path: {uri} differs from the configured module {configured}")]
    ModuleConflict {
        /// `module-path` of the URI.
        uri: PathBuf,
        /// `mqtt.pkcs11_module`.
        configured: PathBuf,
    },
    /// A module is configured but the key is a file.
    #[error("a PKCS#11 module is set but the key is a file, not a pkcs11: URI")]
    ModuleWithoutUri,
}

impl KeyRef {
    /// Reads `value`: a `pkcs11:` URI (with `module`, the configured provider
    /// library, unless the URI names one), else a file path taken relative to
    /// `base_dir`.
    pub fn parse(
        value: &str,
        base_dir: &Path,
        module: Option<PathBuf>,
    ) -> Result<KeyRef, KeyRefError> {
        if !value.starts_with(SCHEME) {
            if module.is_some() {
                return Err(KeyRefError::ModuleWithoutUri);
            }
            return Ok(KeyRef::File(base_dir.join(value)));
        }
        let uri = Pkcs11Uri::parse(value)?;
        let module = match (uri.module_path.clone(), module) {
            (Some(u), Some(c)) if u != c => {
                return Err(KeyRefError::ModuleConflict {
                    uri: u,
                    configured: c,
                })
            }
            (Some(m), _) | (None, Some(m)) => m,
            (None, None) => return Err(KeyRefError::NoModule),
        };
        Ok(KeyRef::Pkcs11(Pkcs11Key { uri, module }))
    }

    /// The key file, when the key is a file.
    pub fn file(&self) -> Option<&Path> {
        match self {
            KeyRef::File(p) => Some(p),
            KeyRef::Pkcs11(_) => None,
        }
    }

    /// The token key, when the key is in a token.
    pub fn pkcs11(&self) -> Option<&Pkcs11Key> {
        match self {
            KeyRef::File(_) => None,
            KeyRef::Pkcs11(k) => Some(k),
        }
    }
}

impl fmt::Display for KeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyRef::File(p) => write!(f, "{}", p.display()),
            KeyRef::Pkcs11(k) => write!(f, "{}", k.uri),
        }
    }
}

fn set<T>(slot: &mut Option<T>, name: &str, value: T) -> Result<(), UriError> {
    if slot.is_some() {
        return Err(UriError::new(name, "given twice"));
    }
    *slot = Some(value);
    Ok(())
}

fn pin_value() -> UriError {
    UriError::new(
        "pin-value",
        "a PIN must not be written in the configuration: use pin-source=file:/path (mode 0600 or 0400) or the systemd credential facegate-pkcs11-pin",
    )
}

fn non_empty(name: &str, raw: Vec<u8>) -> Result<Vec<u8>, UriError> {
    if raw.is_empty() {
        return Err(UriError::new(name, "empty"));
    }
    Ok(raw)
}

fn text_value(name: &str, raw: Vec<u8>) -> Result<String, UriError> {
    let raw = non_empty(name, raw)?;
    String::from_utf8(raw).map_err(|_| UriError::new(name, "not UTF-8 after percent-decoding"))
}

fn absolute(name: &str, path: &str) -> Result<PathBuf, UriError> {
    let p = PathBuf::from(path);
    if !p.is_absolute() {
        return Err(UriError::new(
            name,
            format!("{path:?} must be an absolute path"),
        ));
    }
    Ok(p)
}

/// Percent-decodes an attribute value (RFC 3986 `%XX`); a `%` not followed
/// by two hex digits is an error naming the attribute.
fn decode(name: &str, value: &str) -> Result<Vec<u8>, UriError> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    UriError::new(name, "bad percent-encoding ('%' needs two hex digits)")
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_attributes_facegate_uses_are_read_and_decoded() {
        let u = Pkcs11Uri::parse(
            "pkcs11:token=face%20gate;object=device;id=%01%02%ff;slot-id=7;type=private\
             ?pin-source=file:/run/pin&module-path=/usr/lib/softhsm/libsofthsm2.so",
        )
        .unwrap();
        assert_eq!(u.token.as_deref(), Some("face gate"));
        assert_eq!(u.object.as_deref(), Some("device"));
        assert_eq!(u.id.as_deref(), Some(&[1u8, 2, 0xff][..]));
        assert_eq!(u.slot_id, Some(7));
        assert_eq!(u.pin_source, Some(PathBuf::from("/run/pin")));
        assert_eq!(
            u.module_path,
            Some(PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"))
        );

        let minimal = Pkcs11Uri::parse("pkcs11:token=facegate;object=device").unwrap();
        assert_eq!(minimal.id, None);
        assert_eq!(minimal.pin_source, None);
        assert_eq!(minimal.to_string(), "pkcs11:token=facegate;object=device");
        // file:///abs and a bare absolute path are the same PIN file.
        for q in ["file:///etc/pin", "/etc/pin", "file%3A%2Fetc%2Fpin"] {
            let u = Pkcs11Uri::parse(&format!("pkcs11:slot-id=0;id=%aa?pin-source={q}")).unwrap();
            assert_eq!(u.pin_source, Some(PathBuf::from("/etc/pin")), "{q}");
        }
    }

    #[test]
    fn bad_uris_are_refused_naming_the_part() {
        // (uri, part named in the error)
        let cases = [
            ("pkcs12:token=a;object=b", "scheme"),
            ("pkcs11:token=a;object=b#x", "fragment"),
            ("pkcs11:token=a;object=b;pin-value=1234", "pin-value"),
            ("pkcs11:token=a;object=b?pin-value=1234", "pin-value"),
            ("pkcs11:token=a;object=b;serial=42", "serial"),
            ("pkcs11:token=a;object=b;colour=red", "colour"),
            (
                "pkcs11:token=a;object=b?module-name=softhsm2",
                "module-name",
            ),
            ("pkcs11:token=a;object=b?flavour=x", "flavour"),
            ("pkcs11:token=a;object=b;type=cert", "type"),
            ("pkcs11:token=a;object=b;slot-id=x", "slot-id"),
            ("pkcs11:token=a;object=b;token=c", "token"),
            ("pkcs11:token=a;object=%zz", "object"),
            ("pkcs11:token=a;object=%4", "object"),
            ("pkcs11:token=a;object=", "object"),
            ("pkcs11:token=a;object=%ff", "object"),
            ("pkcs11:token=a;object=b;bare", "bare"),
            (
                "pkcs11:token=a;object=b?pin-source=file:relative/pin",
                "pin-source",
            ),
            ("pkcs11:token=a;object=b?module-path=lib.so", "module-path"),
            ("pkcs11:token=a", "object"),
            ("pkcs11:object=b", "token"),
            ("pkcs11:", "object"),
        ];
        for (text, part) in cases {
            let err = Pkcs11Uri::parse(text).expect_err(text);
            assert_eq!(err.part, part, "{text}: {err}");
            assert!(
                err.to_string()
                    .starts_with(&format!("PKCS#11 URI {part}: ")),
                "{err}"
            );
        }
        // The PIN itself never appears in the message.
        let err = Pkcs11Uri::parse("pkcs11:token=a;object=b;pin-value=987654").unwrap_err();
        assert!(!err.to_string().contains("987654"), "{err}");
    }

    #[test]
    fn a_key_reference_is_a_file_or_a_uri_with_a_module() {
        let base = Path::new("/etc/facegate");
        let lib = PathBuf::from("/usr/lib/p11.so");
        assert_eq!(
            KeyRef::parse("device.key", base, None),
            Ok(KeyRef::File(base.join("device.key")))
        );
        let k = KeyRef::parse("pkcs11:token=t;object=o", base, Some(lib.clone())).unwrap();
        let key = k.pkcs11().unwrap();
        assert_eq!(key.module, lib);
        assert_eq!(k.file(), None);
        assert_eq!(k.to_string(), "pkcs11:token=t;object=o");
        let in_uri = KeyRef::parse("pkcs11:token=t;object=o?module-path=/l.so", base, None);
        assert_eq!(in_uri.unwrap().pkcs11().unwrap().module, Path::new("/l.so"));
        assert_eq!(
            KeyRef::parse("pkcs11:token=t;object=o", base, None),
            Err(KeyRefError::NoModule)
        );
        assert!(matches!(
            KeyRef::parse(
                "pkcs11:token=t;object=o?module-path=/l.so",
                base,
                Some(lib.clone())
            ),
            Err(KeyRefError::ModuleConflict { .. })
        ));
        assert_eq!(
            KeyRef::parse("device.key", base, Some(lib)),
            Err(KeyRefError::ModuleWithoutUri)
        );
    }
}
