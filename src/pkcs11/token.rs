//! The token side of [`super`] through cryptoki (cargo feature `pkcs11`, on
//! by default): the provider library, slot, login and objects, signing and
//! key generation.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use zeroize::Zeroizing;

use super::{check_pin_file, ecdsa_der, KeyKind, Location, Pkcs11Error};
use crate::keyref::{Pkcs11Key, PIN_CREDENTIAL};

/// DER of the `namedCurve` OID of P-256 (1.2.840.10045.3.1.7), as `CKA_EC_PARAMS`.
pub(super) const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// DER of the Ed25519 OID (1.3.101.112), one form of `CKA_EC_PARAMS` for Ed25519.
pub(super) const ED25519_OID: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
/// DER of PrintableString "edwards25519", the other form (PKCS#11 3.0).
pub(super) const ED25519_NAME: &[u8] = b"\x13\x0cedwards25519";
/// SubjectPublicKeyInfo up to the point, for an uncompressed P-256 point.
pub(super) const P256_SPKI_PREFIX: &[u8] = &[
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
/// SubjectPublicKeyInfo up to the key, for Ed25519.
pub(super) const ED25519_SPKI_PREFIX: &[u8] = &[
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// A private key in a token, usable as a rustls [`rustls::sign::SigningKey`]
/// and an rcgen [`rcgen::SigningKey`].
pub struct TokenKey {
    ctx: Pkcs11,
    key: Pkcs11Key,
    slot: Slot,
    kind: KeyKind,
    /// The public key: the uncompressed P-256 point or the 32 Ed25519 bytes.
    public: Vec<u8>,
    location: Location,
    session: Mutex<Option<(Session, ObjectHandle)>>,
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenKey")
            .field("uri", &self.key.uri.as_str())
            .field("kind", &self.kind)
            .finish()
    }
}

impl TokenKey {
    /// Finds the key `key` names: loads the module, finds the token, logs in
    /// with the PIN and finds the private key and its public half.
    pub fn open(key: &Pkcs11Key) -> Result<Arc<TokenKey>, Pkcs11Error> {
        let ctx = context(key)?;
        let (slot, token) = find_slot(&ctx, key)?;
        let session = login(&ctx, key, slot, &token, false)?;
        let private = find_one(&session, key, ObjectClass::PRIVATE_KEY)?
            .ok_or_else(|| no_object(key, &token))?;
        Self::assemble(ctx, key, slot, token, session, private)
    }

    /// Generates an EC P-256 key pair in the token (private key: token object,
    /// private, sensitive, not extractable; label `object`, `CKA_ID` `id` or
    /// else the label's bytes), unless the private key already exists.
    /// Returns the key and whether it was created now.
    pub fn open_or_generate(key: &Pkcs11Key) -> Result<(Arc<TokenKey>, bool), Pkcs11Error> {
        let ctx = context(key)?;
        let (slot, token) = find_slot(&ctx, key)?;
        let session = login(&ctx, key, slot, &token, true)?;
        if let Some(private) = find_one(&session, key, ObjectClass::PRIVATE_KEY)? {
            return Ok((
                Self::assemble(ctx, key, slot, token, session, private)?,
                false,
            ));
        }
        let uri = &key.uri;
        let label = uri.object.clone().unwrap_or_default().into_bytes();
        let id = uri.id.clone().unwrap_or_else(|| label.clone());
        let mut public_template = vec![
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Verify(true),
            Attribute::EcParams(P256_PARAMS.to_vec()),
            Attribute::Id(id.clone()),
        ];
        let mut private_template = vec![
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Id(id),
        ];
        if !label.is_empty() {
            public_template.push(Attribute::Label(label.clone()));
            private_template.push(Attribute::Label(label));
        }
        let (_, private) = session
            .generate_key_pair(
                &Mechanism::EccKeyPairGen,
                &public_template,
                &private_template,
            )
            .map_err(|e| {
                err(
                    key,
                    "key",
                    format!("cannot generate an EC P-256 key pair: {}", ck(&e)),
                )
            })?;
        Ok((
            Self::assemble(ctx, key, slot, token, session, private)?,
            true,
        ))
    }

    fn assemble(
        ctx: Pkcs11,
        key: &Pkcs11Key,
        slot: Slot,
        token: String,
        session: Session,
        private: ObjectHandle,
    ) -> Result<Arc<TokenKey>, Pkcs11Error> {
        let attrs = session
            .get_attributes(
                private,
                &[
                    AttributeType::KeyType,
                    AttributeType::EcParams,
                    AttributeType::Extractable,
                    AttributeType::Sensitive,
                    AttributeType::Label,
                ],
            )
            .map_err(|e| {
                err(
                    key,
                    "object",
                    format!("cannot read the key's attributes: {}", ck(&e)),
                )
            })?;
        let mut key_type = None;
        let mut params = None;
        let (mut extractable, mut sensitive, mut label) = (true, false, None);
        for a in attrs {
            match a {
                Attribute::KeyType(t) => key_type = Some(t),
                Attribute::EcParams(p) => params = Some(p),
                Attribute::Extractable(b) => extractable = b,
                Attribute::Sensitive(b) => sensitive = b,
                Attribute::Label(l) if !l.is_empty() => {
                    label = Some(String::from_utf8_lossy(&l).into_owned())
                }
                _ => {}
            }
        }
        let kind = match (key_type, params.as_deref()) {
            (Some(t), Some(P256_PARAMS)) if t == KeyType::EC => KeyKind::EcdsaP256,
            (Some(t), Some(ED25519_OID | ED25519_NAME)) if t == KeyType::EC_EDWARDS => {
                KeyKind::Ed25519
            }
            (t, _) => {
                return Err(err(
                    key,
                    "object",
                    format!(
                        "unsupported key type {}: facegate signs with EC P-256 or Ed25519 keys",
                        t.map_or("unknown".to_string(), |t| t.to_string())
                    ),
                ))
            }
        };
        let public = public_key(&session, key, kind)?;
        let location = Location {
            token,
            slot: slot.id(),
            object: label,
            extractable,
            sensitive,
        };
        Ok(Arc::new(TokenKey {
            ctx,
            key: key.clone(),
            slot,
            kind,
            public,
            location,
            session: Mutex::new(Some((session, private))),
        }))
    }

    /// The key's URI as configured.
    pub fn uri(&self) -> &str {
        self.key.uri.as_str()
    }

    /// The public key: the uncompressed P-256 point or the 32 Ed25519 bytes.
    pub fn public_key_bytes(&self) -> &[u8] {
        &self.public
    }

    /// What kind of key it is.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// Where it was found.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// The key's SubjectPublicKeyInfo (DER).
    pub fn spki(&self) -> Vec<u8> {
        let prefix = match self.kind {
            KeyKind::EcdsaP256 => P256_SPKI_PREFIX,
            KeyKind::Ed25519 => ED25519_SPKI_PREFIX,
        };
        [prefix, &self.public].concat()
    }

    /// Signs `message` in the token: ECDSA P-256 over its SHA-256 digest
    /// (DER-encoded signature) or Ed25519. A failed signature drops the
    /// session; the next call opens a new one.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Pkcs11Error> {
        let mut guard = self
            .session
            .lock()
            .map_err(|_| err(&self.key, "sign", "the session lock is poisoned".into()))?;
        if guard.is_none() {
            *guard = Some(self.reopen()?);
        }
        let Some((session, private)) = guard.as_ref() else {
            return Err(err(&self.key, "sign", "no session".into()));
        };
        let result = match self.kind {
            KeyKind::EcdsaP256 => {
                let digest = ring::digest::digest(&ring::digest::SHA256, message);
                session
                    .sign(&Mechanism::Ecdsa, *private, digest.as_ref())
                    .map_err(|e| ck(&e))
                    .and_then(|raw| {
                        ecdsa_der(&raw).ok_or_else(|| {
                            format!(
                                "the token returned a {}-byte ECDSA signature, expected 64",
                                raw.len()
                            )
                        })
                    })
            }
            KeyKind::Ed25519 => session
                .sign(
                    &Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Ed25519)),
                    *private,
                    message,
                )
                .map_err(|e| ck(&e)),
        };
        match result {
            Ok(signature) => Ok(signature),
            Err(reason) => {
                *guard = None;
                Err(err(&self.key, "sign", reason))
            }
        }
    }

    /// A new logged-in session and the private key's handle in it.
    fn reopen(&self) -> Result<(Session, ObjectHandle), Pkcs11Error> {
        let session = login(&self.ctx, &self.key, self.slot, &self.location.token, false)?;
        let private = find_one(&session, &self.key, ObjectClass::PRIVATE_KEY)?
            .ok_or_else(|| no_object(&self.key, &self.location.token))?;
        Ok((session, private))
    }
}

/// The PIN of `key`'s token: the `pin-source` file of its URI, else the
/// systemd credential. A PIN file must be a regular file that grants nothing
/// to group or others (0600 or 0400); one trailing newline is ignored.
pub fn read_pin(key: &Pkcs11Key) -> Result<Zeroizing<String>, Pkcs11Error> {
    let (path, part) = match &key.uri.pin_source {
        Some(p) => (p.clone(), "pin-source"),
        None => match std::env::var_os("CREDENTIALS_DIRECTORY") {
            Some(dir) => (Path::new(&dir).join(PIN_CREDENTIAL), "pin"),
            None => {
                return Err(err(
                    key,
                    "pin-source",
                    format!("no PIN: add ?pin-source=file:/path to the URI, or give the systemd credential {PIN_CREDENTIAL} (LoadCredential=)"),
                ))
            }
        },
    };
    check_pin_file(&path)
        .map_err(|reason| err(key, part, format!("{}: {reason}", path.display())))?;
    let text = Zeroizing::new(
        fs::read_to_string(&path)
            .map_err(|e| err(key, part, format!("{}: cannot read: {e}", path.display())))?,
    );
    let pin = text.strip_suffix('\n').unwrap_or(&text);
    let pin = pin.strip_suffix('\r').unwrap_or(pin);
    if pin.is_empty() {
        return Err(err(key, part, format!("{}: empty", path.display())));
    }
    Ok(Zeroizing::new(pin.to_string()))
}

/// The provider library of `key`, loaded and initialised once per process.
fn context(key: &Pkcs11Key) -> Result<Pkcs11, Pkcs11Error> {
    static LOADED: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let loaded = LOADED.get_or_init(|| Mutex::new(HashMap::new()));
    let mut loaded = loaded
        .lock()
        .map_err(|_| err(key, "module", "the module table lock is poisoned".into()))?;
    if let Some(ctx) = loaded.get(&key.module) {
        return Ok(ctx.clone());
    }
    let module = key.module.display();
    let ctx = Pkcs11::new(&key.module).map_err(|e| {
        err(
            key,
            "module",
            format!(
                "cannot load the PKCS#11 library {module}: {e} (mqtt.pkcs11_module or module-path)"
            ),
        )
    })?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => {
            return Err(err(
                key,
                "module",
                format!("{module}: C_Initialize failed: {}", ck(&e)),
            ))
        }
    }
    loaded.insert(key.module.clone(), ctx.clone());
    Ok(ctx)
}

/// The slot holding the token the URI names, and the token's label.
fn find_slot(ctx: &Pkcs11, key: &Pkcs11Key) -> Result<(Slot, String), Pkcs11Error> {
    let uri = &key.uri;
    let slots = ctx
        .get_slots_with_token()
        .map_err(|e| err(key, "token", format!("cannot list the slots: {}", ck(&e))))?;
    let mut labels = Vec::new();
    for slot in slots {
        let Ok(info) = ctx.get_token_info(slot) else {
            continue;
        };
        let label = info.label().trim_end().to_string();
        let slot_ok = uri.slot_id.is_none_or(|id| id == slot.id());
        let token_ok = uri.token.as_deref().is_none_or(|t| t == label);
        if slot_ok && token_ok {
            return Ok((slot, label));
        }
        labels.push(format!("{label:?} in slot {}", slot.id()));
    }
    let present = if labels.is_empty() {
        "no token is present".to_string()
    } else {
        format!("present: {}", labels.join(", "))
    };
    let (part, wanted) = match (&uri.token, uri.slot_id) {
        (Some(t), None) => ("token", format!("no token labelled {t:?}")),
        (None, Some(s)) => ("slot-id", format!("no token in slot {s}")),
        (Some(t), Some(s)) => ("token", format!("no token labelled {t:?} in slot {s}")),
        (None, None) => ("token", "no token named".to_string()),
    };
    Err(err(key, part, format!("{wanted} ({present})")))
}

/// Opens a session on `slot` and logs the user in.
fn login(
    ctx: &Pkcs11,
    key: &Pkcs11Key,
    slot: Slot,
    token: &str,
    read_write: bool,
) -> Result<Session, Pkcs11Error> {
    let session = if read_write {
        ctx.open_rw_session(slot)
    } else {
        ctx.open_ro_session(slot)
    }
    .map_err(|e| {
        err(
            key,
            "token",
            format!("cannot open a session with token {token:?}: {}", ck(&e)),
        )
    })?;
    let pin_text = read_pin(key)?;
    let pin = AuthPin::from(pin_text.as_str());
    let part = if key.uri.pin_source.is_some() {
        "pin-source"
    } else {
        "pin"
    };
    // A token counts wrong PINs and locks itself (a TPM's dictionary-attack
    // lockout): a PIN it refused is not offered again until it changes.
    let tried = RefusedPin::of(key, slot, &pin_text);
    if tried.was_refused() {
        return Err(err(
            key,
            part,
            format!("the token {token:?} refused this PIN before (CKR_PIN_INCORRECT); it is not tried again until the PIN changes, so the token does not lock"),
        ));
    }
    match session.login(UserType::User, Some(&pin)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
        Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => {
            tried.remember();
            Err(err(
                key,
                part,
                format!("the token {token:?} refused the PIN (CKR_PIN_INCORRECT)"),
            ))
        }
        Err(CkError::Pkcs11(RvError::PinLocked, _)) => Err(err(
            key,
            part,
            format!(
                "the PIN of token {token:?} is locked (CKR_PIN_LOCKED): reset it with the SO PIN"
            ),
        )),
        Err(e) => Err(err(
            key,
            part,
            format!("login to token {token:?} failed: {}", ck(&e)),
        )),
    }
}

/// A PIN offered to one slot of one library, as a salted digest (the PIN
/// itself is not kept): the refused ones are remembered for the process.
struct RefusedPin {
    digest: [u8; 32],
}

impl RefusedPin {
    fn table() -> &'static Mutex<Vec<[u8; 32]>> {
        static REFUSED: OnceLock<Mutex<Vec<[u8; 32]>>> = OnceLock::new();
        REFUSED.get_or_init(|| Mutex::new(Vec::new()))
    }

    fn of(key: &Pkcs11Key, slot: Slot, pin: &str) -> RefusedPin {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"facegate refused pkcs11 pin\0");
        ctx.update(key.module.as_os_str().as_encoded_bytes());
        ctx.update(b"\0");
        ctx.update(&slot.id().to_be_bytes());
        ctx.update(pin.as_bytes());
        let mut digest = [0u8; 32];
        digest.copy_from_slice(ctx.finish().as_ref());
        RefusedPin { digest }
    }

    fn was_refused(&self) -> bool {
        Self::table()
            .lock()
            .map(|t| t.contains(&self.digest))
            .unwrap_or(false)
    }

    fn remember(&self) {
        if let Ok(mut t) = Self::table().lock() {
            t.push(self.digest);
        }
    }
}

/// The one object of `class` the URI's `object`/`id` select; `None` if there
/// is none, an error if there are several.
fn find_one(
    session: &Session,
    key: &Pkcs11Key,
    class: ObjectClass,
) -> Result<Option<ObjectHandle>, Pkcs11Error> {
    let mut template = vec![Attribute::Class(class)];
    if let Some(o) = &key.uri.object {
        template.push(Attribute::Label(o.as_bytes().to_vec()));
    }
    if let Some(id) = &key.uri.id {
        template.push(Attribute::Id(id.clone()));
    }
    let found = session.find_objects(&template).map_err(|e| {
        err(
            key,
            "object",
            format!("cannot search the token: {}", ck(&e)),
        )
    })?;
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        many => Err(err(
            key,
            "object",
            format!("{} keys match; add id= to the URI to pick one", many.len()),
        )),
    }
}

/// The public half (`CKA_EC_POINT` of the public key object), unwrapped
/// from its DER OCTET STRING when the token wraps it.
fn public_key(session: &Session, key: &Pkcs11Key, kind: KeyKind) -> Result<Vec<u8>, Pkcs11Error> {
    let public = find_one(session, key, ObjectClass::PUBLIC_KEY)?.ok_or_else(|| {
        err(
            key,
            "object",
            "no public key object with the same label/id next to the private key".into(),
        )
    })?;
    let point = session
        .get_attributes(public, &[AttributeType::EcPoint])
        .map_err(|e| {
            err(
                key,
                "object",
                format!("cannot read the public key: {}", ck(&e)),
            )
        })?
        .into_iter()
        .find_map(|a| match a {
            Attribute::EcPoint(p) => Some(p),
            _ => None,
        })
        .ok_or_else(|| err(key, "object", "the public key has no CKA_EC_POINT".into()))?;
    let len = match kind {
        KeyKind::EcdsaP256 => 65,
        KeyKind::Ed25519 => 32,
    };
    let raw = match point.as_slice() {
        [0x04, l, rest @ ..] if usize::from(*l) == len && rest.len() == len => rest.to_vec(),
        p if p.len() == len => p.to_vec(),
        p => {
            return Err(err(
                key,
                "object",
                format!("unexpected public key encoding ({} bytes)", p.len()),
            ))
        }
    };
    if kind == KeyKind::EcdsaP256 && raw[0] != 0x04 {
        return Err(err(
            key,
            "object",
            "the public point is not uncompressed".into(),
        ));
    }
    Ok(raw)
}

fn no_object(key: &Pkcs11Key, token: &str) -> Pkcs11Error {
    let uri = &key.uri;
    let what = match (&uri.object, &uri.id) {
        (Some(o), _) => format!("labelled {o:?}"),
        (None, Some(id)) => format!("with id {}", hex::encode(id)),
        (None, None) => String::new(),
    };
    err(
        key,
        "object",
        format!("no private key {what} in token {token:?} (run facegate provision to create it)"),
    )
}

fn err(key: &Pkcs11Key, part: &'static str, reason: String) -> Pkcs11Error {
    Pkcs11Error {
        uri: key.uri.as_str().to_string(),
        part,
        reason,
    }
}

/// A cryptoki error in a few words: the return code's name for token errors.
fn ck(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, function) => format!("{function}: {rv:?}"),
        other => other.to_string(),
    }
}
