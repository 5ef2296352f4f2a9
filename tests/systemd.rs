//! The files under `systemd/` as systemd itself reads them: the service unit's
//! hardening score (`systemd-analyze security`, must be 2.0 or lower, "OK"),
//! its syntax (`systemd-analyze verify`), the sysusers.d / tmpfiles.d
//! entries applied to a throwaway root, and the example mount unit of a
//! size-limited spool (verified, and mounted in a private mount namespace),
//! and the example drop-in that loads the sealed storage key (verified with
//! the unit).
//!
//! Each test skips with a printed reason when the systemd tool it needs is not
//! installed (e.g. a build container without systemd); it never skips otherwise.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const UNIT: &str = "systemd/facegate.service";
const SYSUSERS: &str = "systemd/facegate.sysusers";
const TMPFILES: &str = "systemd/facegate.tmpfiles";
/// The example mount unit for a size-limited spool (documentation, not active).
const SPOOL_MOUNT: &str = "systemd/run-facegate-spool.mount";
/// The example drop-in loading the sealed storage key (documentation, not active).
const CREDENTIAL_DROP_IN: &str = "systemd/facegate-credential.conf";

/// Worst overall exposure we accept (systemd's "OK" band is 2.0 and below).
const MAX_EXPOSURE: f64 = 1.5;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The absolute path of `tool` if it is installed.
fn tool(tool: &str) -> Option<PathBuf> {
    let dirs = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&dirs)
        .chain(["/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The number in `→ Overall exposure level for facegate.service: 1.1 OK 🙂`.
fn overall_exposure(report: &str) -> Option<f64> {
    let line = report
        .lines()
        .find(|l| l.contains("Overall exposure level for"))?;
    let after = line.rsplit_once(".service:")?.1;
    after.split_whitespace().next()?.parse().ok()
}

#[test]
fn overall_exposure_is_parsed() {
    let sample = "✗ PrivateNetwork=  Service has access  0.5\n\
                  → Overall exposure level for facegate.service: 1.1 OK 🙂\n";
    assert_eq!(overall_exposure(sample), Some(1.1));
    assert_eq!(overall_exposure("no summary"), None);
}

#[test]
fn unit_exposure_is_ok() {
    let Some(analyze) = tool("systemd-analyze") else {
        eprintln!("SKIP unit_exposure_is_ok: systemd-analyze is not installed");
        return;
    };
    // --threshold is in tenths: 15 means an overall exposure of 1.5.
    let out = run(Command::new(&analyze)
        .args(["security", "--offline=yes", "--threshold=15", "--no-pager"])
        .arg(repo(UNIT)));
    let report = text(&out.stdout);
    let exposure = overall_exposure(&report).unwrap_or_else(|| {
        panic!(
            "no overall exposure line in:\n{report}{}",
            text(&out.stderr)
        )
    });
    assert!(
        exposure <= MAX_EXPOSURE,
        "exposure {exposure} > {MAX_EXPOSURE}:\n{report}"
    );
    assert!(
        out.status.success(),
        "systemd-analyze security refused the unit: {}\n{report}",
        text(&out.stderr)
    );
}

#[test]
fn unit_verifies_without_warnings() {
    let Some(analyze) = tool("systemd-analyze") else {
        eprintln!("SKIP unit_verifies_without_warnings: systemd-analyze is not installed");
        return;
    };
    // `verify` checks that ExecStart= points at an executable; the binary is not
    // installed at /usr/bin in a build tree, so verify a copy of the unit whose
    // ExecStart= names a stub. Everything else is verified exactly as shipped.
    let dir = tempfile::tempdir().unwrap();
    let stub = dir.path().join("facegate");
    fs::write(&stub, "#!/bin/sh\nexit 0\n").unwrap();
    fs::set_permissions(&stub, fs::Permissions::from_mode(0o755)).unwrap();
    let unit = fs::read_to_string(repo(UNIT)).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/facegate run --config /etc/facegate/facegate.toml"));
    let copy = dir.path().join("facegate.service");
    fs::write(
        &copy,
        unit.replace("/usr/bin/facegate", &stub.display().to_string()),
    )
    .unwrap();

    let out = run(Command::new(&analyze).arg("verify").arg(&copy));
    let complaints = text(&out.stderr);
    assert!(
        out.status.success() && complaints.trim().is_empty(),
        "systemd-analyze verify complained:\n{complaints}"
    );
}

/// The example drop-in that loads the sealed storage key: it names the
/// credential the daemon reads and the file `provision --seal` writes, and
/// systemd reads it as a drop-in of the unit without complaint (a copy with a
/// misspelt key is complained about, so the drop-in was really read).
#[test]
fn credential_drop_in_loads_the_sealed_storage_key() {
    let drop_in = fs::read_to_string(repo(CREDENTIAL_DROP_IN)).unwrap();
    assert_eq!(
        setting(&drop_in, "LoadCredentialEncrypted").as_deref(),
        Some(
            format!(
                "{}:{}",
                facegate::crypto::CREDENTIAL_NAME,
                facegate::credential::DEFAULT_SEALED_PATH
            )
            .as_str()
        )
    );
    let Some(analyze) = tool("systemd-analyze") else {
        eprintln!(
            "SKIP credential_drop_in_loads_the_sealed_storage_key: systemd-analyze is not installed"
        );
        return;
    };
    let verify = |extra: &str| {
        let dir = tempfile::tempdir().unwrap();
        let stub = dir.path().join("facegate");
        fs::write(&stub, "#!/bin/sh\nexit 0\n").unwrap();
        fs::set_permissions(&stub, fs::Permissions::from_mode(0o755)).unwrap();
        let unit = fs::read_to_string(repo(UNIT)).unwrap();
        fs::write(
            dir.path().join("facegate.service"),
            unit.replace("/usr/bin/facegate", &stub.display().to_string()),
        )
        .unwrap();
        let d = dir.path().join("facegate.service.d");
        fs::create_dir(&d).unwrap();
        fs::write(d.join("credential.conf"), format!("{drop_in}{extra}")).unwrap();
        let out = run(Command::new(&analyze)
            .env("SYSTEMD_UNIT_PATH", format!("{}:", dir.path().display()))
            .arg("verify")
            .arg(dir.path().join("facegate.service")));
        (out.status.success(), text(&out.stderr))
    };
    let (ok, complaints) = verify("");
    assert!(
        ok && complaints.trim().is_empty(),
        "systemd-analyze verify complained:\n{complaints}"
    );
    let (_, complaints) = verify("LoadCredentialEncryptedTypo=x\n");
    assert!(
        complaints.contains("LoadCredentialEncryptedTypo"),
        "the drop-in was not read: {complaints:?}"
    );
}

/// The values of every `key=` line of the unit, split on spaces.
fn unit_list(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .flat_map(|v| v.split_whitespace().map(str::to_string))
        .collect()
}

/// Revocations carry times: the daemon starts after the clock is synchronised,
/// and pulls the synchronisation in (`After=` alone orders against a target
/// nothing may start).
#[test]
fn unit_waits_for_a_synchronised_clock_and_the_network() {
    let unit = fs::read_to_string(repo(UNIT)).unwrap();
    let (wants, after) = (unit_list(&unit, "Wants"), unit_list(&unit, "After"));
    for target in ["time-sync.target", "network-online.target"] {
        assert!(wants.iter().any(|w| w == target), "Wants= lacks {target}");
        assert!(after.iter().any(|a| a == target), "After= lacks {target}");
    }
}

#[test]
fn unit_has_the_promised_settings() {
    let unit = fs::read_to_string(repo(UNIT)).unwrap();
    let settings: Vec<&str> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .collect();
    for wanted in [
        "Type=notify",
        "WatchdogSec=30",
        "Restart=on-failure",
        "ExecStart=/usr/bin/facegate run --config /etc/facegate/facegate.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "RuntimeDirectory=facegate",
        "StateDirectory=facegate",
        "StateDirectoryMode=0700",
        "ConfigurationDirectory=facegate",
        "User=facegate",
        "Group=facegate",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "LimitCORE=0",
    ] {
        assert!(settings.contains(&wanted), "missing {wanted}");
    }
    assert!(
        settings
            .iter()
            .any(|s| s.starts_with("RuntimeDirectoryMode=")),
        "RuntimeDirectoryMode must be set"
    );
}

/// The value of `key=` in the unit (the last one, as systemd reads it).
fn setting(unit: &str, key: &str) -> Option<String> {
    unit.lines()
        .rev()
        .map(str::trim)
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
}

/// `192M` → bytes (the K/M/G suffixes systemd takes, base 1024).
fn bytes(value: &str) -> u64 {
    let (digits, unit) = value.split_at(value.len() - 1);
    let factor = match unit {
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        _ => panic!("{value}: give memory limits with K, M or G"),
    };
    digits.parse::<u64>().unwrap() * factor
}

#[test]
fn unit_limits_memory_tasks_and_core_dumps() {
    let unit = fs::read_to_string(repo(UNIT)).unwrap();
    let high = bytes(&setting(&unit, "MemoryHigh").expect("MemoryHigh= set"));
    let max = bytes(&setting(&unit, "MemoryMax").expect("MemoryMax= set"));
    // Throttling must start before the hard stop, and the hard stop must
    // leave room for the default decoder limit (64 MiB) and an 8 MiB capture.
    assert!(
        high < max,
        "MemoryHigh {high} must be below MemoryMax {max}"
    );
    assert!(
        high >= 128 << 20,
        "MemoryHigh {high} leaves no room for a capture"
    );
    assert!(
        max <= 512 << 20,
        "MemoryMax {max} is too much for a small terminal"
    );
    let tasks: u32 = setting(&unit, "TasksMax")
        .expect("TasksMax= set")
        .parse()
        .expect("TasksMax= a number");
    // Workers (one per core, up to 8), 16 blocking threads, event loops.
    assert!((32..=128).contains(&tasks), "TasksMax={tasks}");
    assert_eq!(setting(&unit, "LimitCORE").as_deref(), Some("0"));
}

#[test]
fn sysusers_creates_the_facegate_account() {
    let Some(sysusers) = tool("systemd-sysusers") else {
        eprintln!("SKIP sysusers_creates_the_facegate_account: systemd-sysusers is not installed");
        return;
    };
    let root = tempfile::tempdir().unwrap();
    fs::create_dir_all(root.path().join("etc")).unwrap();
    fs::write(root.path().join("etc/passwd"), "").unwrap();
    fs::write(root.path().join("etc/group"), "").unwrap();
    let out = run(Command::new(sysusers)
        .arg(format!("--root={}", root.path().display()))
        .arg(repo(SYSUSERS)));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let passwd = fs::read_to_string(root.path().join("etc/passwd")).unwrap();
    let group = fs::read_to_string(root.path().join("etc/group")).unwrap();
    let user: Vec<&str> = passwd
        .lines()
        .find(|l| l.starts_with("facegate:"))
        .unwrap_or_else(|| panic!("no facegate user in {passwd:?}"))
        .split(':')
        .collect();
    assert_eq!(user[5], "/var/lib/facegate", "home");
    assert_eq!(user[6], "/usr/sbin/nologin", "shell");
    let gid = group
        .lines()
        .find(|l| l.starts_with("facegate:"))
        .unwrap_or_else(|| panic!("no facegate group in {group:?}"))
        .split(':')
        .nth(2)
        .unwrap()
        .to_string();
    assert_eq!(user[3], gid, "the user's primary group is facegate");
    let uid: u32 = user[2].parse().unwrap();
    assert!(uid > 0 && uid < 1000, "a system uid, got {uid}");
}

#[test]
#[allow(unsafe_code)] // geteuid(2), see SAFETY below
fn tmpfiles_makes_a_group_writable_setgid_spool() {
    let (Some(sysusers), Some(tmpfiles)) = (tool("systemd-sysusers"), tool("systemd-tmpfiles"))
    else {
        eprintln!("SKIP tmpfiles: systemd-sysusers/systemd-tmpfiles are not installed");
        return;
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP tmpfiles: creating files owned by facegate needs root");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let root_arg = format!("--root={}", root.path().display());
    fs::create_dir_all(root.path().join("etc")).unwrap();
    fs::write(root.path().join("etc/passwd"), "").unwrap();
    fs::write(root.path().join("etc/group"), "").unwrap();
    let out = run(Command::new(sysusers).arg(&root_arg).arg(repo(SYSUSERS)));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(Command::new(tmpfiles)
        .arg(&root_arg)
        .arg("--create")
        .arg(repo(TMPFILES)));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mode = |p: &str| {
        fs::metadata(root.path().join(p))
            .unwrap_or_else(|e| panic!("{p}: {e}"))
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("run/facegate"), 0o750);
    assert_eq!(mode("run/facegate/spool"), 0o2770);
}

/// The example mount unit puts the default spool on its own tmpfs with a size
/// and inode limit and the spool's owner and mode; systemd accepts it (its
/// name is the escaped mount point), and the kernel enforces the limit.
#[test]
#[allow(unsafe_code)] // geteuid(2), see SAFETY below
fn spool_mount_example_limits_the_spool() {
    let unit = fs::read_to_string(repo(SPOOL_MOUNT)).unwrap();
    let tmpfiles = fs::read_to_string(repo(TMPFILES)).unwrap();
    let where_ = setting(&unit, "Where").unwrap();
    assert_eq!(where_, "/run/facegate/spool", "the default spool_dir");
    assert!(
        tmpfiles.lines().any(|l| l.starts_with('d')
            && l.split_whitespace().nth(1) == Some(where_.as_str())
            && l.split_whitespace().nth(2) == Some("2770")),
        "tmpfiles makes the mount point with the same mode"
    );
    assert_eq!(setting(&unit, "Type").as_deref(), Some("tmpfs"));
    let options = setting(&unit, "Options").unwrap();
    let opts: Vec<&str> = options.split(',').collect();
    for want in [
        "size=64M",
        "nr_inodes=4096",
        "mode=2770",
        "uid=facegate",
        "gid=facegate",
        "nosuid",
        "nodev",
        "noexec",
    ] {
        assert!(opts.contains(&want), "Options= lacks {want}: {options}");
    }

    let Some(analyze) = tool("systemd-analyze") else {
        eprintln!("SKIP spool mount verify: systemd-analyze is not installed");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("run-facegate-spool.mount");
    fs::write(&copy, &unit).unwrap();
    let out = run(Command::new(&analyze).arg("verify").arg(&copy));
    let complaints = text(&out.stderr);
    assert!(
        out.status.success() && complaints.trim().is_empty(),
        "systemd-analyze verify complained:\n{complaints}"
    );
    if let Some(escape) = tool("systemd-escape") {
        let out = run(Command::new(escape).args(["--path", "--suffix=mount", &where_]));
        assert_eq!(text(&out.stdout).trim(), "run-facegate-spool.mount");
    }

    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let (Some(unshare), true) = (tool("unshare"), root) else {
        eprintln!("SKIP spool mount: mounting needs root and unshare(1)");
        return;
    };
    // The unit's options as they are, with root for the facegate account
    // (which need not exist here), in a private mount namespace.
    let point = dir.path().join("spool");
    fs::create_dir(&point).unwrap();
    let options = options.replace("=facegate", "=root");
    let script = r#"mount -t tmpfs -o "$1" tmpfs "$2" || exit 90
stat -c %a "$2"
head -c 70M /dev/zero > "$2/flood" 2>/dev/null && exit 91
stat -c %s "$2/flood""#;
    let out = run(Command::new(unshare)
        .args(["-m", "sh", "-c", script, "sh"])
        .arg(&options)
        .arg(&point));
    if out.status.code() == Some(90) {
        eprintln!(
            "SKIP spool mount: mounting is not permitted here: {}",
            text(&out.stderr)
        );
        return;
    }
    assert!(out.status.success(), "{out:?}");
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "2770", "{stdout}");
    let written: u64 = lines[1].parse().unwrap();
    assert_eq!(written, 64 << 20, "a flood stops at the size limit");
}
