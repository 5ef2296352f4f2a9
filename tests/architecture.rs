//! Architecture invariants (ARCHITECTURE.md, "Architecture invariants"),
//! checked by reading the `use` lines and paths of every source file.
//!
//! A module's dependencies are the external crates and the `crate::` modules
//! its non-test code names. Test code (`#[cfg(test)]` modules at the end of a
//! file, `src/**/tests.rs`) is left out: tests may use anything.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// One source file and what its production code depends on.
struct Module {
    /// Path below `src/`, with `/` separators (`uplink/state.rs`).
    path: String,
    /// External crates named (`tokio`, `rusqlite`, …).
    crates: BTreeSet<String>,
    /// Top-level `crate::` modules named (`store`, `gate`, …).
    internal: BTreeSet<String>,
}

/// Modules whose code is a pure function of its inputs (and `now`): no
/// runtime, no database, no network. ARCHITECTURE.md invariant A1.
const PURE: &[&str] = &[
    "audit.rs",
    "clock.rs",
    "clock/",
    "command.rs",
    "consent.rs",
    "consent_log.rs",
    "gate.rs",
    "ids.rs",
    "jws.rs",
    "reload.rs",
    "protocol/",
    "uplink/state.rs",
    "uplink/backoff.rs",
    "uplink/deletes.rs",
    "uplink/handover.rs",
    "uplink/ingress.rs",
    "uplink/suspect.rs",
    "fleet/acl.rs",
    "doctor/profile.rs",
    "keyref.rs",
    "config.rs",
    "config/",
];

/// What a pure module must not name.
const IMPURE_CRATES: &[&str] = &["tokio", "rusqlite", "rumqttc"];
/// Crate modules that do I/O or hold the runtime; pure modules stay clear of them.
const IMPURE_MODULES: &[&str] = &[
    "agent", "control", "daemon", "db", "intake", "store", "uplink", "fleet", "doctor", "notify",
    "pkcs11",
];

#[test]
fn pure_modules_import_no_runtime_database_or_network() {
    let mut bad = Vec::new();
    for m in modules() {
        if !is_in(&m.path, PURE) {
            continue;
        }
        for c in IMPURE_CRATES {
            if m.crates.contains(*c) {
                bad.push(format!("{} uses {c}", m.path));
            }
        }
        for dep in &m.internal {
            // uplink/state.rs may name its siblings (crate::uplink::state).
            let own = m.path.split('/').next().unwrap_or("") == dep;
            if IMPURE_MODULES.contains(&dep.as_str()) && !own {
                bad.push(format!("{} uses crate::{dep}", m.path));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "pure modules with impure dependencies:\n{}",
        bad.join("\n")
    );
}

#[test]
fn only_the_store_speaks_sql() {
    let bad: Vec<_> = modules()
        .into_iter()
        .filter(|m| m.crates.contains("rusqlite") && !m.path.starts_with("store/"))
        .map(|m| m.path)
        .collect();
    assert!(bad.is_empty(), "rusqlite outside src/store/: {bad:?}");
}

#[test]
fn only_the_uplink_and_the_fleet_side_speak_mqtt() {
    // The daemon's MQTT is the uplink; `fleet` (the fleet managers' tool) and
    // `doctor`'s broker probe are separate clients of their own.
    let allowed = ["uplink/", "fleet.rs", "fleet/", "doctor/broker.rs"];
    let bad: Vec<_> = modules()
        .into_iter()
        .filter(|m| m.crates.contains("rumqttc") && !is_in(&m.path, &allowed))
        .map(|m| m.path)
        .collect();
    assert!(
        bad.is_empty(),
        "rumqttc outside the uplink and fleet tools: {bad:?}"
    );
}

#[test]
fn anyhow_only_at_the_binary_edge() {
    let bad: Vec<_> = modules()
        .into_iter()
        .filter(|m| m.crates.contains("anyhow") && !is_in(&m.path, &["main.rs", "cli/"]))
        .map(|m| m.path)
        .collect();
    assert!(bad.is_empty(), "anyhow outside main.rs and cli/: {bad:?}");
}

#[test]
fn the_outbox_is_reached_only_through_intake() {
    // `insert_captures` (and `insert_captures_with`) is the only way into
    // the outbox; intake calls it right after the gate, under the store lock
    // (invariant 1 of ARCHITECTURE.md).
    let bad: Vec<_> = sources()
        .into_iter()
        .filter(|(path, text)| {
            !path.starts_with("store/") && path != "intake.rs" && text.contains(".insert_captures")
        })
        .map(|(path, _)| path)
        .collect();
    assert!(
        bad.is_empty(),
        "insert_captures called outside intake: {bad:?}"
    );
}

#[test]
fn dependencies_point_one_way() {
    // (module, what it must not name): the agent knows neither the control
    // protocol nor the fleet commands (both call its operations), the common
    // command verification knows no single command, the store knows neither
    // the agent nor the uplink, nothing in the library knows the command line.
    let rules: &[(&str, &[&str])] = &[
        (
            "agent.rs",
            &["control", "cmd", "command", "uplink", "intake", "daemon"],
        ),
        ("command.rs", &["cmd", "agent"]),
        ("cmd/", &["control", "uplink", "intake", "daemon"]),
        (
            "store/",
            &["agent", "control", "uplink", "intake", "daemon", "db"],
        ),
        ("db.rs", &["agent", "control", "uplink", "intake", "daemon"]),
        ("protocol/", &["agent", "store", "command", "cmd", "gate"]),
    ];
    let mut bad = Vec::new();
    for m in modules() {
        for (scope, forbidden) in rules {
            if is_in(&m.path, &[scope]) {
                for f in *forbidden {
                    if m.internal.contains(*f) {
                        bad.push(format!("{} uses crate::{f}", m.path));
                    }
                }
            }
        }
        if m.internal.contains("cli") {
            bad.push(format!("{} uses the binary's cli module", m.path));
        }
    }
    assert!(
        bad.is_empty(),
        "dependencies against the grain:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_reader_sees_the_dependencies_it_should() {
    // Guards the checks above against a parser that sees nothing.
    let all = modules();
    let find = |p: &str| all.iter().find(|m| m.path == p).expect(p);
    assert!(find("store/mod.rs").crates.contains("rusqlite"));
    assert!(find("db.rs").crates.contains("tokio"));
    assert!(find("consent.rs").internal.contains("gate"));
    assert!(
        find("main.rs").crates.contains("anyhow") || find("cli/mod.rs").crates.contains("anyhow")
    );
    let grouped = deps_of("use crate::{agent::Agent, store::{Store, X}};\nuse tokio::sync;\nfn f() { rusqlite::Connection::open(); }");
    assert_eq!(grouped.1, ["agent", "store"].map(String::from).into());
    assert_eq!(grouped.0, ["rusqlite", "tokio"].map(String::from).into());
}

fn is_in(path: &str, scopes: &[&str]) -> bool {
    scopes.iter().any(|s| {
        if s.ends_with('/') {
            path.starts_with(s)
        } else {
            path == *s
        }
    })
}

fn modules() -> Vec<Module> {
    sources()
        .into_iter()
        .map(|(path, text)| {
            let (crates, internal) = deps_of(&text);
            Module {
                path,
                crates,
                internal,
            }
        })
        .collect()
}

/// Every production source file below `src/`, test modules cut off.
fn sources() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&root, &mut files);
    files.sort();
    files
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n != "tests.rs"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("source file is UTF-8");
            let rel = p
                .strip_prefix(&root)
                .expect("below src")
                .to_string_lossy()
                .replace('\\', "/");
            (rel, production_part(&text))
        })
        .collect()
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src is readable") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            walk(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file up to its `#[cfg(test)]` module, without comments.
fn production_part(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") {
            match lines.peek().map(|n| n.trim()) {
                // An inline test module: the rest of the file is tests.
                Some(n) if n.split_whitespace().any(|w| w == "mod") && n.ends_with('{') => break,
                // `mod tests;` or a test-only item: skip it.
                Some(_) => {
                    lines.next();
                    continue;
                }
                None => break,
            }
        }
        let code = match t.find("//") {
            Some(i) => &t[..i],
            None => t,
        };
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// External crates and top-level `crate::` modules named in `code`.
fn deps_of(code: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    const EXTERNAL: &[&str] = &["tokio", "rusqlite", "rumqttc", "anyhow", "rustls", "clap"];
    let mut crates = BTreeSet::new();
    let mut internal = BTreeSet::new();
    for c in EXTERNAL {
        let named = code.match_indices(c).any(|(i, _)| {
            let before = code[..i].chars().next_back();
            let after = &code[i + c.len()..];
            !before.is_some_and(|b| b.is_alphanumeric() || b == '_')
                && (after.starts_with("::") || after.starts_with(';') || after.starts_with(" as"))
        });
        if named {
            crates.insert(c.to_string());
        }
    }
    for (i, _) in code.match_indices("crate::") {
        if code[..i].ends_with(|ch: char| ch.is_alphanumeric() || ch == '_') {
            continue; // e.g. `$crate::` or `foo_crate::`
        }
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            for item in top_level_items(group) {
                let name: String = item
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != "self" {
                    internal.insert(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                internal.insert(name);
            }
        }
    }
    (crates, internal)
}

/// The comma-separated items of a `{…}` group at its own depth.
fn top_level_items(group: &str) -> Vec<String> {
    let mut items = vec![String::new()];
    let mut depth = 0;
    for ch in group.chars() {
        match ch {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(String::new());
                continue;
            }
            _ => {}
        }
        if depth == 0 || ch != '{' {
            if let Some(last) = items.last_mut() {
                if depth == 0 {
                    last.push(ch);
                }
            }
        }
    }
    items.into_iter().map(|s| s.trim().to_string()).collect()
}
