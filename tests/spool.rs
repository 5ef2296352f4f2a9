//! Spool directory protocol on real files in temporary directories.

use std::fs::{self, File};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use facegate::sanitize::ContentType;
use facegate::spool::{
    parse_sidecar, read_image, read_sidecar, remove_orphan, remove_pair, scan, valid_name, NameTag,
    Orphan, OrphanReason, Pair, Scan, SidecarError, SpoolError, SIDECAR_MAX_BYTES, TAG_HEX_LEN,
};

const GRACE: Duration = Duration::from_secs(60);
const SIDECAR: &str =
    r#"{"subject": "S-123", "captured_at": "2026-03-01T10:00:00Z", "camera": "cam-1"}"#;

fn now() -> SystemTime {
    SystemTime::now()
}

/// Writes `name` in `dir` with mtime `age` seconds before now.
fn put(dir: &Path, name: &str, content: &[u8], age_s: u64) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, content).unwrap();
    set_age(&path, age_s);
    path
}

fn set_age(path: &Path, age_s: u64) {
    let f = File::options().write(true).open(path).unwrap();
    f.set_modified(now() - Duration::from_secs(age_s)).unwrap();
}

fn run(dir: &Path) -> Scan {
    scan(dir, now(), GRACE, 100).unwrap()
}

fn names(paths: impl IntoIterator<Item = PathBuf>) -> Vec<String> {
    paths
        .into_iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// How an error message shows the spool entry `name`: by its tag, never the name.
fn shown(name: &str) -> String {
    format!("spool entry {}", NameTag::of(name.as_bytes()))
}

fn orphan_names(s: &Scan) -> Vec<(String, OrphanReason)> {
    s.orphans
        .iter()
        .map(|o| (names([o.path.clone()])[0].clone(), o.reason))
        .collect()
}

#[test]
fn complete_pair_is_ready_at_once() {
    let d = tempfile::tempdir().unwrap();
    let img = put(d.path(), "cap-1.jpg", b"jpeg", 0);
    let json = put(d.path(), "cap-1.json", SIDECAR.as_bytes(), 0);
    let s = run(d.path());
    assert_eq!(
        s.ready,
        vec![Pair {
            name: "cap-1".into(),
            image: img,
            sidecar: json,
            declared: ContentType::Jpeg,
            bytes: 4,
        }]
    );
    assert!(s.orphans.is_empty());

    put(d.path(), "b.png", b"png", 0);
    put(d.path(), "b.json", b"{}", 0);
    put(d.path(), "c.jpeg", b"jpeg", 0);
    put(d.path(), "c.json", b"{}", 0);
    let s = run(d.path());
    let declared: Vec<_> = s
        .ready
        .iter()
        .map(|p| (p.name.as_str(), p.declared))
        .collect();
    assert!(declared.contains(&("b", ContentType::Png)));
    assert!(declared.contains(&("c", ContentType::Jpeg)));
}

#[test]
fn ready_pairs_oldest_sidecar_first_and_batched() {
    let d = tempfile::tempdir().unwrap();
    for (name, age) in [("a", 5), ("b", 30), ("c", 10), ("d", 30)] {
        put(d.path(), &format!("{name}.jpg"), b"x", 0);
        put(d.path(), &format!("{name}.json"), b"{}", age);
    }
    let order: Vec<_> = run(d.path()).ready.into_iter().map(|p| p.name).collect();
    assert_eq!(order, ["b", "d", "c", "a"]);
    let s = scan(d.path(), now(), GRACE, 2).unwrap();
    assert_eq!(s.ready.len(), 2);
    assert_eq!(s.ready[0].name, "b");
    assert!(scan(d.path(), now(), GRACE, 0).unwrap().ready.is_empty());
}

#[test]
fn lone_image_left_alone_until_grace_then_orphan() {
    let d = tempfile::tempdir().unwrap();
    let img = put(d.path(), "cap.jpg", b"x", 0);
    assert_eq!(run(d.path()), Scan::default());
    set_age(&img, 59);
    assert_eq!(run(d.path()), Scan::default());
    set_age(&img, 61);
    assert_eq!(
        run(d.path()).orphans,
        vec![Orphan {
            path: img.clone(),
            reason: OrphanReason::LoneImage
        }]
    );
    // Exactly at the grace period counts as old.
    let at = now();
    File::options()
        .write(true)
        .open(&img)
        .unwrap()
        .set_modified(at - GRACE)
        .unwrap();
    assert_eq!(scan(d.path(), at, GRACE, 10).unwrap().orphans.len(), 1);
    assert!(scan(d.path(), at - Duration::from_secs(1), GRACE, 10)
        .unwrap()
        .orphans
        .is_empty());
}

#[test]
fn mtime_in_the_future_counts_as_young() {
    let d = tempfile::tempdir().unwrap();
    let img = put(d.path(), "cap.jpg", b"x", 0);
    File::options()
        .write(true)
        .open(&img)
        .unwrap()
        .set_modified(now() + Duration::from_secs(3600))
        .unwrap();
    assert!(run(d.path()).orphans.is_empty());
}

#[test]
fn lone_sidecar_is_an_orphan_at_once() {
    // The image is written before its sidecar, so a sidecar without image can
    // never become a pair: no grace period to wait out.
    let d = tempfile::tempdir().unwrap();
    put(d.path(), "cap.json", b"{}", 0);
    assert_eq!(
        orphan_names(&run(d.path())),
        [("cap.json".to_string(), OrphanReason::LoneSidecar)]
    );
    assert!(!OrphanReason::LoneSidecar.is_bad_input());
    assert!(OrphanReason::LoneImage.is_bad_input());
}

#[test]
fn temp_and_badly_named_files() {
    let d = tempfile::tempdir().unwrap();
    let long = format!("{}.jpg", "x".repeat(129));
    let bad = [
        "cap.jpg.tmp",
        ".cap.jpg",
        "noext",
        "a b.jpg",
        "caf\u{e9}.jpg",
        "cap.JPG",
        "cap.gif",
        "cap.txt",
        ".json",
        long.as_str(),
    ];
    for name in bad {
        put(d.path(), name, b"x", 0);
    }
    // Young: possibly mid-write, untouched.
    assert_eq!(run(d.path()), Scan::default());
    for name in bad {
        set_age(&d.path().join(name), 600);
    }
    let s = run(d.path());
    assert!(s.ready.is_empty());
    assert_eq!(s.orphans.len(), bad.len());
    assert!(s
        .orphans
        .iter()
        .all(|o| o.reason == OrphanReason::UnrecognisedName));
    // The longest allowed name is fine.
    let ok = "y".repeat(128);
    put(d.path(), &format!("{ok}.png"), b"x", 0);
    put(d.path(), &format!("{ok}.json"), b"{}", 0);
    assert_eq!(run(d.path()).ready[0].name, ok);
}

#[test]
fn committed_pair_with_bad_name_is_not_ready() {
    let d = tempfile::tempdir().unwrap();
    put(d.path(), "a b.jpg", b"x", 0);
    put(d.path(), "a b.json", b"{}", 0);
    assert_eq!(run(d.path()), Scan::default());
}

#[test]
fn two_images_one_name_is_a_bad_pair() {
    let d = tempfile::tempdir().unwrap();
    put(d.path(), "cap.jpg", b"x", 0);
    put(d.path(), "cap.png", b"x", 0);
    // Not committed yet: nothing happens.
    assert_eq!(run(d.path()), Scan::default());
    put(d.path(), "cap.json", b"{}", 0);
    let s = run(d.path());
    assert!(s.ready.is_empty());
    assert_eq!(
        orphan_names(&s),
        [
            ("cap.jpg".to_string(), OrphanReason::DuplicateImage),
            ("cap.json".to_string(), OrphanReason::DuplicateImage),
            ("cap.png".to_string(), OrphanReason::DuplicateImage),
        ]
    );
}

#[test]
fn symlinks_refused_everywhere() {
    let d = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let secret = put(outside.path(), "secret.jpg", b"not for upload", 0);
    symlink(&secret, d.path().join("cap.jpg")).unwrap();
    put(d.path(), "cap.json", SIDECAR.as_bytes(), 0);

    let s = run(d.path());
    assert!(s.ready.is_empty());
    assert_eq!(
        orphan_names(&s),
        [
            ("cap.jpg".to_string(), OrphanReason::NotRegularFile),
            ("cap.json".to_string(), OrphanReason::NotRegularFile),
        ]
    );
    let err = read_image(&d.path().join("cap.jpg"), 1 << 20).unwrap_err();
    assert!(matches!(err, SpoolError::NotRegularFile { .. }), "{err}");
    assert!(err.to_string().contains(&shown("cap.jpg")), "{err}");

    // A symlinked sidecar is refused too.
    symlink(d.path().join("cap.json"), d.path().join("other.json")).unwrap();
    assert!(matches!(
        read_sidecar(&d.path().join("other.json")),
        Err(SpoolError::NotRegularFile { .. })
    ));

    // Removing the orphan removes the link, never its target.
    for o in &s.orphans {
        remove_orphan(o).unwrap();
    }
    assert!(secret.exists());
    assert!(fs::symlink_metadata(d.path().join("cap.jpg")).is_err());
}

#[test]
#[allow(unsafe_code)] // mkfifo(3), see SAFETY below
fn lone_symlink_and_fifo_orphaned_after_grace() {
    let d = tempfile::tempdir().unwrap();
    symlink("/nonexistent/target", d.path().join("dangling.jpg")).unwrap();
    let fifo = d.path().join("pipe.jpg");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);

    assert!(run(d.path()).orphans.is_empty(), "young: left alone");
    let later = now() + Duration::from_secs(3600);
    let s = scan(d.path(), later, GRACE, 10).unwrap();
    assert_eq!(
        orphan_names(&s),
        [
            ("dangling.jpg".to_string(), OrphanReason::NotRegularFile),
            ("pipe.jpg".to_string(), OrphanReason::NotRegularFile),
        ]
    );
    // Reading a FIFO must not block waiting for a writer.
    assert!(matches!(
        read_image(&fifo, 1024),
        Err(SpoolError::NotRegularFile { .. })
    ));
}

#[test]
fn directories_are_orphans_after_grace_removed_with_contents_links_not_followed() {
    let d = tempfile::tempdir().unwrap();
    let spool = d.path().join("spool");
    fs::create_dir(&spool).unwrap();
    // Outside the spool: must survive everything below.
    let outside = d.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let keep = put(&outside, "keep.jpg", b"not yours", 0);

    let sub = spool.join("S-4711-sub.jpg");
    fs::create_dir_all(sub.join("deeper")).unwrap();
    put(&sub, "a.jpg", b"x", 0);
    put(&sub.join("deeper"), "b.json", b"{}", 0);
    symlink(&outside, sub.join("link-to-outside")).unwrap();
    symlink(&keep, sub.join("deeper").join("link-to-file")).unwrap();
    symlink(&outside, spool.join("dirlink")).unwrap();

    assert!(run(&spool).orphans.is_empty(), "young: left alone");
    let s = scan(&spool, now() + Duration::from_secs(3600), GRACE, 10).unwrap();
    assert_eq!(
        orphan_names(&s),
        [
            ("S-4711-sub.jpg".to_string(), OrphanReason::Directory),
            ("dirlink".to_string(), OrphanReason::NotRegularFile),
        ]
    );
    assert!(s.ready.is_empty());
    for o in &s.orphans {
        remove_orphan(o).unwrap();
    }
    assert_eq!(fs::read_dir(&spool).unwrap().count(), 0, "spool emptied");
    assert_eq!(
        fs::read(&keep).unwrap(),
        b"not yours",
        "link target survives"
    );
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 1);
    // Gone already (e.g. removed by the camera meanwhile): not an error.
    remove_orphan(&s.orphans[0]).unwrap();
}

#[test]
fn spool_names_are_shown_only_as_tags() {
    let d = tempfile::tempdir().unwrap();
    let name = "S-4711-0001";
    put(d.path(), &format!("{name}.jpg"), b"x", 0);
    put(d.path(), &format!("{name}.json"), b"{not json", 0);
    put(d.path(), &format!("{name}.tmp"), b"x", 3600);
    let s = run(d.path());
    let pair = &s.ready[0];
    assert_eq!(
        pair.name, name,
        "the name itself is still there for the capture id"
    );
    let tag = pair.name.tag();
    assert_eq!(tag.as_str().len(), TAG_HEX_LEN);
    assert!(tag.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(tag, NameTag::of(name.as_bytes()), "stable within a run");
    assert_ne!(tag, NameTag::of(b"S-4712-0001"));
    assert_eq!(pair.name.to_string(), tag.as_str());

    let err = read_sidecar(&pair.sidecar).unwrap_err();
    let too_large = read_image(&pair.image, 0).unwrap_err();
    let missing = read_image(&d.path().join(format!("{name}-gone.jpg")), 10).unwrap_err();
    let texts = [
        format!("{pair:?}"),
        format!("{:?}", s.orphans),
        format!("{}", pair.name),
        err.to_string(),
        too_large.to_string(),
        missing.to_string(),
    ];
    for text in &texts {
        // "S-4711", not "4711": random hex tags may hold those digits.
        assert!(!text.contains("S-4711"), "spool name shown: {text}");
    }
    assert!(err.to_string().contains(&shown(&format!("{name}.json"))));
    assert!(format!("{:?}", s.orphans).contains(s.orphans[0].tag().as_str()));
}

#[test]
fn missing_spool_dir_is_an_error_naming_it() {
    let d = tempfile::tempdir().unwrap();
    let gone = d.path().join("nope");
    let err = scan(&gone, now(), GRACE, 10).unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
}

#[test]
fn read_image_is_bounded() {
    let d = tempfile::tempdir().unwrap();
    let p = put(d.path(), "cap.jpg", &[7u8; 1000], 0);
    assert_eq!(*read_image(&p, 1000).unwrap(), vec![7u8; 1000]);
    let err = read_image(&p, 999).unwrap_err();
    assert!(
        matches!(
            err,
            SpoolError::TooLarge {
                size: 1000,
                max: 999,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains(&shown("cap.jpg")), "{err}");
    // A sparse 1 TiB file is refused from its size alone, without reading.
    let huge = d.path().join("huge.jpg");
    File::create(&huge).unwrap().set_len(1 << 40).unwrap();
    assert!(matches!(
        read_image(&huge, 8 << 20),
        Err(SpoolError::TooLarge { .. })
    ));
    assert!(matches!(
        read_image(&d.path().join("missing.jpg"), 10),
        Err(SpoolError::Io { .. })
    ));
}

#[test]
fn remove_pair_removes_image_then_sidecar_and_is_retryable() {
    let d = tempfile::tempdir().unwrap();
    put(d.path(), "cap.jpg", b"x", 0);
    put(d.path(), "cap.json", b"{}", 0);
    let pair = run(d.path()).ready.remove(0);
    remove_pair(&pair).unwrap();
    assert!(!pair.image.exists() && !pair.sidecar.exists());
    remove_pair(&pair).unwrap(); // already gone: fine

    // A crash between the two unlinks leaves a lone sidecar: never ready again,
    // an orphan at once.
    put(d.path(), "cap.json", b"{}", 0);
    assert_eq!(
        orphan_names(&run(d.path())),
        [("cap.json".to_string(), OrphanReason::LoneSidecar)]
    );
}

#[test]
fn sidecar_parsing() {
    let ok = parse_sidecar(SIDECAR.as_bytes()).unwrap();
    assert_eq!(ok.subject.as_ref().map(|s| s.as_str()), Some("S-123"));
    assert_eq!(ok.captured_at, 1_772_359_200);
    assert_eq!(ok.camera, "cam-1");

    let null =
        parse_sidecar(br#"{"subject":null,"captured_at":"2026-03-01T10:00:00Z","camera":"c"}"#);
    assert_eq!(null.unwrap().subject, None);
    let missing = parse_sidecar(br#"{"captured_at":"2026-03-01T10:00:00Z","camera":"c"}"#);
    assert_eq!(missing.unwrap().subject, None);
    let offset = parse_sidecar(br#"{"captured_at":"2026-03-01T12:00:00+02:00","camera":"c"}"#);
    assert_eq!(offset.unwrap().captured_at, 1_772_359_200);
    let max_subject = format!(
        r#"{{"subject":"{}","captured_at":"2026-03-01T10:00:00Z","camera":"{}"}}"#,
        "s".repeat(128),
        "c".repeat(64)
    );
    assert!(parse_sidecar(max_subject.as_bytes()).is_ok());
    assert_eq!(
        parse_sidecar(br#"{"subject":"a.b:c_d-9","captured_at":"2026-03-01T10:00:00Z","camera":"lobby:cam_1.a"}"#)
            .unwrap()
            .subject
            .as_ref()
            .map(|s| s.as_str()),
        Some("a.b:c_d-9")
    );

    let t = "2026-03-01T10:00:00Z";
    let cases: Vec<(String, &str)> = vec![
        (
            r#"{"subject":"S","camera":"c"}"#.to_string(),
            "missing field `captured_at`",
        ),
        (
            format!(r#"{{"subject":"S","captured_at":"{t}"}}"#),
            "missing field `camera`",
        ),
        (
            format!(r#"{{"captured_at":"{t}","camera":"c","gps":"51.5,0.1"}}"#),
            "unknown field `gps`",
        ),
        (
            format!(r#"{{"subject":"A","subject":"B","captured_at":"{t}","camera":"c"}}"#),
            "duplicate field `subject`",
        ),
        (
            format!(r#"{{"subject":42,"captured_at":"{t}","camera":"c"}}"#),
            "invalid type",
        ),
        (
            format!(r#"{{"captured_at":"{t}","camera":"c"}} trailing"#),
            "trailing characters",
        ),
        ("[1,2]".to_string(), "invalid type"),
        ("".to_string(), "EOF"),
    ];
    for (input, want) in cases {
        match parse_sidecar(input.as_bytes()) {
            Err(SidecarError::Json(msg)) => assert!(msg.contains(want), "{input}: {msg}"),
            other => panic!("{input}: {other:?}"),
        }
    }

    let field_cases: Vec<(String, SidecarError)> = vec![
        (
            format!(r#"{{"subject":"","captured_at":"{t}","camera":"c"}}"#),
            SidecarError::BadSubject,
        ),
        (
            format!(r#"{{"subject":"a b","captured_at":"{t}","camera":"c"}}"#),
            SidecarError::BadSubject,
        ),
        (
            format!(r#"{{"subject":"a/b","captured_at":"{t}","camera":"c"}}"#),
            SidecarError::BadSubject,
        ),
        (
            format!(
                r#"{{"subject":"{}","captured_at":"{t}","camera":"c"}}"#,
                "s".repeat(129)
            ),
            SidecarError::BadSubject,
        ),
        (
            r#"{"captured_at":"yesterday","camera":"c"}"#.to_string(),
            SidecarError::BadCapturedAt,
        ),
        (
            r#"{"captured_at":"2026-03-01 10:00:00","camera":"c"}"#.to_string(),
            SidecarError::BadCapturedAt,
        ),
        (
            r#"{"captured_at":"2026-03-01T10:00:00","camera":"c"}"#.to_string(),
            SidecarError::BadCapturedAt,
        ),
        (
            format!(r#"{{"captured_at":"{t}","camera":""}}"#),
            SidecarError::BadCamera,
        ),
        (
            format!(r#"{{"captured_at":"{t}","camera":"cam 1"}}"#),
            SidecarError::BadCamera,
        ),
        (
            format!(r#"{{"captured_at":"{t}","camera":"{}"}}"#, "c".repeat(65)),
            SidecarError::BadCamera,
        ),
    ];
    for (input, want) in field_cases {
        assert_eq!(parse_sidecar(input.as_bytes()), Err(want), "{input}");
    }
}

#[test]
fn sidecar_size_limit() {
    let pad = " ".repeat(SIDECAR_MAX_BYTES as usize - SIDECAR.len());
    let at_limit = format!("{SIDECAR}{pad}");
    assert_eq!(at_limit.len() as u64, SIDECAR_MAX_BYTES);
    assert!(parse_sidecar(at_limit.as_bytes()).is_ok());
    let over = format!("{at_limit} ");
    assert_eq!(
        parse_sidecar(over.as_bytes()),
        Err(SidecarError::TooLarge {
            size: SIDECAR_MAX_BYTES + 1,
            max: SIDECAR_MAX_BYTES
        })
    );

    let d = tempfile::tempdir().unwrap();
    let p = put(d.path(), "cap.json", over.as_bytes(), 0);
    let err = read_sidecar(&p).unwrap_err();
    assert!(
        matches!(
            err,
            SpoolError::BadSidecar {
                reason: SidecarError::TooLarge { .. },
                ..
            }
        ),
        "{err}"
    );
    let p = put(d.path(), "ok.json", SIDECAR.as_bytes(), 0);
    assert_eq!(read_sidecar(&p).unwrap().camera, "cam-1");
    let p = put(
        d.path(),
        "bad.json",
        br#"{"captured_at":"x","camera":"c","extra":1}"#,
        0,
    );
    let msg = read_sidecar(&p).unwrap_err().to_string();
    assert!(
        msg.contains(&shown("bad.json")) && msg.contains("unknown field `extra`"),
        "{msg}"
    );
}

#[test]
fn name_rule() {
    for ok in ["a", "cap-1", "2026-03-01T10.00.00_cam-1", "a.b", "A_Z-0.9"] {
        assert!(valid_name(ok), "{ok}");
    }
    let long = "x".repeat(129);
    for bad in ["", ".a", "a b", "a/b", "a:b", "ä", long.as_str()] {
        assert!(!valid_name(bad), "{bad}");
    }
}
