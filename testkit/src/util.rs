//! Small things every harness needs: free ports, polling, byte search.

use std::io;
use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound, read, released): nothing listens on it
/// until someone binds it again.
pub fn free_port() -> u16 {
    try_free_port().unwrap_or_else(|e| panic!("no free port on 127.0.0.1: {e}"))
}

/// [`free_port`], or the error of binding 127.0.0.1:0.
pub fn try_free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Polls `cond` every 20 ms until it holds; panics with `why()` after `timeout`.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool, why: impl Fn() -> String) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out: {}", why());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// True if the non-empty `needle` occurs anywhere in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// True if `needle` occurs anywhere in the file at `path` (missing file: false).
pub fn file_contains(path: &Path, needle: &[u8]) -> bool {
    std::fs::read(path).is_ok_and(|hay| contains(&hay, needle))
}

/// Runs `cmd` with `input` on its stdin (then closed) and collects its output:
/// how tests pass personal data to `facegate` without putting it in argv.
pub fn output_with_stdin(cmd: &mut std::process::Command, input: &[u8]) -> std::process::Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn a command");
    let mut stdin = child.stdin.take().expect("piped stdin");
    // A writer thread: a child that prints much before reading cannot deadlock us.
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().expect("wait for a command");
    // The child may exit without reading everything (e.g. on a usage error).
    let _ = writer.join().expect("stdin writer thread");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contains_finds_only_real_occurrences() {
        assert!(contains(b"abcdef", b"cde"));
        assert!(!contains(b"abcdef", b"ced"));
        assert!(!contains(b"abc", b""));
        assert!(!contains(b"ab", b"abc"));
    }

    #[test]
    fn free_port_is_free() {
        let port = free_port();
        assert!(TcpListener::bind(("127.0.0.1", port)).is_ok());
    }
}
