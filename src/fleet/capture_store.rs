//! Where `facegate fleet receive` puts the captures themselves (image and
//! metadata files): a local directory (built in, every write and removal
//! fsync'd) or, with the `object-store` feature, an object store through the
//! `object_store` crate (`file:///abs/path` by its local backend with fsync;
//! `s3://bucket/prefix` with the `s3` feature, S3 and S3-compatible stores
//! configured by the standard `AWS_*` environment variables).
//!
//! Keys are `{site}/{device}/{file}`, the same layout in every backend. The
//! receiver's own state (ids taken, parts, receipts, `deletions.log`) is not
//! here: it stays in a local directory (`fleet::inbox`).

use std::future::Future;
use std::path::{Path, PathBuf};

/// Why a capture store could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file or directory of a local store.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The object store refused or failed.
    #[cfg(any(feature = "object-store", test))]
    #[error("object store {store}{}: {source}", if .key.is_empty() { String::new() } else { format!(", {}", .key) })]
    Object {
        /// The store.
        store: String,
        /// The object key.
        key: String,
        /// The error.
        source: object_store::Error,
    },
    /// `--out` names a store this build cannot open.
    #[error("{0}")]
    Unsupported(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A place captures are written to, read back from and deleted from, by key
/// (`{site}/{device}/{file}`). Every method returns once what it did is
/// durable: the receiver acknowledges a message only then.
pub trait CaptureStore {
    /// Stores `bytes` under `key`, replacing what was there.
    fn put(&self, key: &str, bytes: Vec<u8>)
        -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The bytes under `key`, `None` when there is no such object.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;
    /// Whether `key` is stored.
    fn exists(&self, key: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Removes `key`; a key that is not there is not an error.
    fn delete(&self, key: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The keys of the capture layout (`{site}/{device}/{file}`, no
    /// component starting with `.`), of one site or of all.
    fn list(
        &self,
        site: Option<&str>,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;
    /// Where the store is, for messages.
    fn describe(&self) -> String;
}

fn visible(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.')
}

/// Captures in a local directory: each file written to a temporary name,
/// fsync'd, renamed and its directory fsync'd; each removal fsync'd.
#[derive(Debug, Clone)]
pub struct DirStore {
    root: PathBuf,
}

impl DirStore {
    /// The store in `root` (created when missing).
    pub fn open(root: &Path) -> Result<DirStore, StoreError> {
        std::fs::create_dir_all(root).map_err(io(root))?;
        Ok(DirStore {
            root: root.to_path_buf(),
        })
    }

    /// The file of `key`.
    pub fn path_of(&self, key: &str) -> PathBuf {
        key.split('/').fold(self.root.clone(), |p, c| p.join(c))
    }

    fn dirs(dir: &Path) -> Result<Vec<String>, StoreError> {
        let mut names = Vec::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(names),
            Err(e) => return Err(io(dir)(e)),
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if visible(&name) && e.path().is_dir() {
                names.push(name);
            }
        }
        Ok(names)
    }
}

/// Writes `bytes` to `path` durably: a temporary file, fsync, rename, fsync
/// of the directory.
pub(crate) fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    // A name of its own: another receiver may write the same file at once.
    let tmp = path.with_file_name(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        uuid::Uuid::new_v4().simple()
    ));
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    fsync_dir(dir)
}

/// Fsyncs a directory (its entries: a rename or removal in it).
pub(crate) fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

impl CaptureStore for DirStore {
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        let path = self.path_of(key);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        write_durably(&path, &bytes)
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.path_of(key);
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self.path_of(key).exists())
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path_of(key);
        match std::fs::remove_file(&path) {
            Ok(()) => fsync_dir(path.parent().unwrap_or(&self.root)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path)(e)),
        }
    }

    async fn list(&self, site: Option<&str>) -> Result<Vec<String>, StoreError> {
        let sites = match site {
            Some(s) => vec![s.to_string()],
            None => DirStore::dirs(&self.root)?,
        };
        let mut keys = Vec::new();
        for site in sites {
            for device in DirStore::dirs(&self.root.join(&site))? {
                let dir = self.root.join(&site).join(&device);
                let entries = match std::fs::read_dir(&dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io(&dir)(e)),
                };
                for f in entries.flatten() {
                    let name = f.file_name().to_string_lossy().to_string();
                    if visible(&name) && f.path().is_file() {
                        keys.push(format!("{site}/{device}/{name}"));
                    }
                }
            }
        }
        Ok(keys)
    }

    fn describe(&self) -> String {
        self.root.display().to_string()
    }
}

/// Captures in an object store of the `object_store` crate. A put returns
/// once the store has the whole object (an S3 PUT is durable when it
/// answers; the local backend is opened with fsync).
#[cfg(any(feature = "object-store", test))]
#[derive(Debug, Clone)]
pub struct ObjectCaptures {
    store: std::sync::Arc<dyn object_store::ObjectStore>,
    name: String,
    /// The directory of a `file://` store: removals are fsync'd there too
    /// (the crate's local backend fsyncs writes only).
    local_root: Option<PathBuf>,
}

#[cfg(any(feature = "object-store", test))]
impl ObjectCaptures {
    /// Captures in `store`, named `name` in messages.
    pub fn new(store: std::sync::Arc<dyn object_store::ObjectStore>, name: &str) -> Self {
        ObjectCaptures {
            store,
            name: name.to_string(),
            local_root: None,
        }
    }

    fn err(&self, key: &str) -> impl FnOnce(object_store::Error) -> StoreError + '_ {
        let key = key.to_string();
        move |source| StoreError::Object {
            store: self.name.clone(),
            key,
            source,
        }
    }

    /// The names directly under `prefix`: sub-"directories" and objects.
    async fn level(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> Result<(Vec<String>, Vec<String>), StoreError> {
        let shown = prefix.map_or("listing".to_string(), |p| format!("listing {p}/"));
        let listed = self
            .store
            .list_with_delimiter(prefix)
            .await
            .map_err(self.err(&shown))?;
        let last = |p: &object_store::path::Path| p.filename().map(str::to_string);
        let dirs = listed
            .common_prefixes
            .iter()
            .filter_map(last)
            .filter(|n| visible(n))
            .collect();
        let files = listed
            .objects
            .iter()
            .filter_map(|o| last(&o.location))
            .filter(|n| visible(n))
            .collect();
        Ok((dirs, files))
    }
}

#[cfg(any(feature = "object-store", test))]
impl CaptureStore for ObjectCaptures {
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        use object_store::ObjectStoreExt;
        self.store
            .put(&key.into(), bytes.into())
            .await
            .map_err(self.err(key))?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        use object_store::ObjectStoreExt;
        match self.store.get(&key.into()).await {
            Ok(got) => Ok(Some(got.bytes().await.map_err(self.err(key))?.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(key)(e)),
        }
    }

    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        use object_store::ObjectStoreExt;
        match self.store.head(&key.into()).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.err(key)(e)),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        use object_store::ObjectStoreExt;
        match self.store.delete(&key.into()).await {
            Ok(()) => {
                if let Some(root) = &self.local_root {
                    let dir = key
                        .rsplit_once('/')
                        .map_or(root.clone(), |(d, _)| root.join(d));
                    fsync_dir(&dir)?;
                }
                Ok(())
            }
            Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(key)(e)),
        }
    }

    async fn list(&self, site: Option<&str>) -> Result<Vec<String>, StoreError> {
        let sites = match site {
            Some(s) => vec![s.to_string()],
            None => self.level(None).await?.0,
        };
        let mut keys = Vec::new();
        for site in sites {
            let (devices, _) = self.level(Some(&site.as_str().into())).await?;
            for device in devices {
                let prefix = format!("{site}/{device}");
                let (_, files) = self.level(Some(&prefix.as_str().into())).await?;
                keys.extend(files.into_iter().map(|f| format!("{prefix}/{f}")));
            }
        }
        Ok(keys)
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}

/// The store `--out` names: a directory path, or (with the features) a
/// `file://` or `s3://` URL.
#[derive(Debug, Clone)]
pub enum Captures {
    /// A local directory.
    Dir(DirStore),
    /// An object store.
    #[cfg(feature = "object-store")]
    Object(ObjectCaptures),
}

impl Captures {
    /// Opens what `out` names: `s3://bucket/prefix` (feature `s3`),
    /// `file:///abs/path` (feature `object-store`), or a directory path.
    pub fn open(out: &str) -> Result<Captures, StoreError> {
        match out.split_once("://") {
            None => Ok(Captures::Dir(DirStore::open(Path::new(out))?)),
            Some(("file", path)) => open_file_url(out, path),
            Some(("s3", rest)) => open_s3(out, rest),
            Some((scheme, _)) => Err(StoreError::Unsupported(format!(
                "--out {out}: {scheme}:// is not a store facegate knows (a directory path, file:///abs/path or s3://bucket/prefix)"
            ))),
        }
    }

    /// The local directory `--out` names, if any (a path or a `file://`
    /// URL): where the receiver's state goes when `--state` is not given.
    pub fn local_dir(out: &str) -> Option<PathBuf> {
        match out.split_once("://") {
            None => Some(PathBuf::from(out)),
            Some(("file", path)) => Some(PathBuf::from(path)),
            Some(_) => None,
        }
    }
}

#[cfg(feature = "object-store")]
fn open_file_url(out: &str, path: &str) -> Result<Captures, StoreError> {
    if !path.starts_with('/') {
        return Err(StoreError::Unsupported(format!(
            "--out {out}: a file:// URL needs an absolute path (file:///srv/facegate)"
        )));
    }
    let root = PathBuf::from(path);
    std::fs::create_dir_all(&root).map_err(io(&root))?;
    let local = object_store::local::LocalFileSystem::new_with_prefix(&root)
        .map_err(|source| StoreError::Object {
            store: out.to_string(),
            key: String::new(),
            source,
        })?
        .with_fsync(true);
    Ok(Captures::Object(ObjectCaptures {
        store: std::sync::Arc::new(local),
        name: out.to_string(),
        local_root: Some(root),
    }))
}

#[cfg(not(feature = "object-store"))]
fn open_file_url(out: &str, _path: &str) -> Result<Captures, StoreError> {
    Err(StoreError::Unsupported(format!(
        "--out {out}: this facegate is built without object stores (cargo feature `object-store`); give the directory as a path, or use a build with --features object-store"
    )))
}

/// The bucket and key prefix of `s3://{rest}`: the prefix without leading
/// or trailing `/` (empty for the bucket's root); no bucket, or an empty,
/// `.` or `..` segment in the prefix, is refused (S3 would keep `a//b` as a
/// key of its own, apart from `a/b`).
#[cfg(any(feature = "s3", test))]
fn s3_location<'a>(out: &str, rest: &'a str) -> Result<(&'a str, &'a str), StoreError> {
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(StoreError::Unsupported(format!(
            "--out {out}: no bucket (s3://bucket/prefix)"
        )));
    }
    let prefix = prefix.trim_matches('/');
    if !prefix.is_empty()
        && prefix
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(StoreError::Unsupported(format!(
            "--out {out}: the prefix has an empty, . or .. segment (s3://bucket/some/prefix)"
        )));
    }
    Ok((bucket, prefix))
}

#[cfg(feature = "s3")]
fn open_s3(out: &str, rest: &str) -> Result<Captures, StoreError> {
    let (bucket, prefix) = s3_location(out, rest)?;
    let s3 = object_store::aws::AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .build()
        .map_err(|source| StoreError::Object {
            store: out.to_string(),
            key: String::new(),
            source,
        })?;
    let store: std::sync::Arc<dyn object_store::ObjectStore> = if prefix.is_empty() {
        std::sync::Arc::new(s3)
    } else {
        std::sync::Arc::new(object_store::prefix::PrefixStore::new(s3, prefix))
    };
    Ok(Captures::Object(ObjectCaptures {
        store,
        name: out.to_string(),
        local_root: None,
    }))
}

#[cfg(not(feature = "s3"))]
fn open_s3(out: &str, _rest: &str) -> Result<Captures, StoreError> {
    Err(StoreError::Unsupported(format!(
        "--out {out}: this facegate is built without S3 support (cargo feature `s3`: cargo build --release --features s3)"
    )))
}

impl CaptureStore for Captures {
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        match self {
            Captures::Dir(s) => s.put(key, bytes).await,
            #[cfg(feature = "object-store")]
            Captures::Object(s) => s.put(key, bytes).await,
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Captures::Dir(s) => s.get(key).await,
            #[cfg(feature = "object-store")]
            Captures::Object(s) => s.get(key).await,
        }
    }

    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        match self {
            Captures::Dir(s) => s.exists(key).await,
            #[cfg(feature = "object-store")]
            Captures::Object(s) => s.exists(key).await,
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self {
            Captures::Dir(s) => s.delete(key).await,
            #[cfg(feature = "object-store")]
            Captures::Object(s) => s.delete(key).await,
        }
    }

    async fn list(&self, site: Option<&str>) -> Result<Vec<String>, StoreError> {
        match self {
            Captures::Dir(s) => s.list(site).await,
            #[cfg(feature = "object-store")]
            Captures::Object(s) => s.list(site).await,
        }
    }

    fn describe(&self) -> String {
        match self {
            Captures::Dir(s) => s.describe(),
            #[cfg(feature = "object-store")]
            Captures::Object(s) => s.describe(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    async fn contract<S: CaptureStore>(s: &S) {
        assert_eq!(s.get("lobby/t1/a.jpg").await.unwrap(), None);
        assert!(!s.exists("lobby/t1/a.jpg").await.unwrap());
        s.put("lobby/t1/a.jpg", b"a".to_vec()).await.unwrap();
        s.put("lobby/t1/a.json", b"{}".to_vec()).await.unwrap();
        s.put("lobby/t2/b.jpg", b"b".to_vec()).await.unwrap();
        s.put("hall/t3/c.jpg", b"c".to_vec()).await.unwrap();
        // Not of the capture layout: hidden, or not three deep.
        s.put(".receive/parts/x.part", b"x".to_vec()).await.unwrap();
        s.put("deletions.log", b"l".to_vec()).await.unwrap();
        assert_eq!(s.get("lobby/t1/a.jpg").await.unwrap(), Some(b"a".to_vec()));
        assert!(s.exists("lobby/t1/a.json").await.unwrap());
        let mut all = s.list(None).await.unwrap();
        all.sort();
        assert_eq!(
            all,
            [
                "hall/t3/c.jpg",
                "lobby/t1/a.jpg",
                "lobby/t1/a.json",
                "lobby/t2/b.jpg"
            ]
        );
        let mut lobby = s.list(Some("lobby")).await.unwrap();
        lobby.sort();
        assert_eq!(
            lobby,
            ["lobby/t1/a.jpg", "lobby/t1/a.json", "lobby/t2/b.jpg"]
        );
        assert!(s.list(Some("nowhere")).await.unwrap().is_empty());
        s.put("lobby/t1/a.jpg", b"A".to_vec()).await.unwrap();
        assert_eq!(s.get("lobby/t1/a.jpg").await.unwrap(), Some(b"A".to_vec()));
        s.delete("lobby/t1/a.jpg").await.unwrap();
        s.delete("lobby/t1/a.jpg").await.unwrap();
        assert!(!s.exists("lobby/t1/a.jpg").await.unwrap());
        assert_eq!(s.list(Some("lobby")).await.unwrap().len(), 2);
    }

    #[test]
    fn a_directory_keeps_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        let s = DirStore::open(dir.path()).unwrap();
        block(contract(&s));
        assert_eq!(
            std::fs::read(dir.path().join("hall/t3/c.jpg")).unwrap(),
            b"c"
        );
    }

    #[test]
    fn an_object_store_keeps_the_contract() {
        let s = ObjectCaptures::new(
            std::sync::Arc::new(object_store::memory::InMemory::new()),
            "memory",
        );
        block(contract(&s));
    }

    #[cfg(feature = "object-store")]
    #[test]
    fn a_file_url_keeps_the_contract_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let s = Captures::open(&url).unwrap();
        assert!(matches!(s, Captures::Object(_)));
        block(contract(&s));
        assert_eq!(
            std::fs::read(dir.path().join("hall/t3/c.jpg")).unwrap(),
            b"c"
        );
    }

    #[test]
    fn an_s3_url_names_a_bucket_and_a_clean_prefix() {
        fn ok(rest: &str) -> (&str, &str) {
            s3_location("s3://…", rest).unwrap()
        }
        assert_eq!(ok("b"), ("b", ""));
        assert_eq!(ok("b/"), ("b", ""));
        assert_eq!(ok("b/p"), ("b", "p"));
        assert_eq!(ok("b/p/q/"), ("b", "p/q"));
        assert_eq!(ok("b//p/q"), ("b", "p/q"));
        for bad in ["", "/p", "b/p//q", "b/p/./q", "b/../q"] {
            let msg = s3_location("s3://x", bad).unwrap_err().to_string();
            assert!(msg.starts_with("--out s3://x: "), "{bad}: {msg}");
        }
    }

    #[test]
    fn urls_without_their_feature_or_unknown_are_refused_by_name() {
        if cfg!(feature = "s3") {
            let msg = Captures::open("s3:///prefix").unwrap_err().to_string();
            assert!(msg.contains("no bucket"), "{msg}");
        } else {
            let msg = Captures::open("s3://bucket/prefix")
                .unwrap_err()
                .to_string();
            assert!(msg.contains("feature `s3`"), "{msg}");
        }
        if !cfg!(feature = "object-store") {
            let msg = Captures::open("file:///srv/facegate")
                .unwrap_err()
                .to_string();
            assert!(msg.contains("feature `object-store`"), "{msg}");
        }
        let msg = Captures::open("gs://b/p").unwrap_err().to_string();
        assert!(msg.contains("gs://"), "{msg}");
        assert_eq!(
            Captures::local_dir("file:///srv/f"),
            Some(PathBuf::from("/srv/f"))
        );
        assert_eq!(Captures::local_dir("/srv/f"), Some(PathBuf::from("/srv/f")));
        assert_eq!(Captures::local_dir("s3://b/p"), None);
    }
}
