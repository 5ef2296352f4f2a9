//! systemd service notifications (`Type=notify`, `WatchdogSec=`) for the daemon.
//!
//! The unit `systemd/facegate.service` waits for [`ready`] before it counts the
//! service as started, expects [`watchdog`] at least every `WatchdogSec` while
//! the daemon is healthy (restarting it otherwise), and is told [`stopping`] on
//! shutdown. [`status`] sets the one-line text `systemctl status` shows.
//!
//! Every function is a no-op when `NOTIFY_SOCKET` is unset (started by hand, in
//! tests, or under a supervisor without the notify protocol). The environment is
//! left as is, so repeated calls keep working.

use std::time::Duration;

use sd_notify::NotifyState;

/// A notification could not be delivered to the service manager.
#[derive(Debug, thiserror::Error)]
#[error("cannot send {state} to the service manager at NOTIFY_SOCKET={socket}: {source}")]
pub struct NotifyError {
    /// The notification that failed, e.g. `READY=1`.
    pub state: String,
    /// The `NOTIFY_SOCKET` value, so the operator sees where it tried to write.
    pub socket: String,
    /// The underlying socket error.
    pub source: std::io::Error,
}

/// Tells systemd the daemon is up: the store is open and intake runs.
pub fn ready() -> Result<(), NotifyError> {
    send(NotifyState::Ready)
}

/// Keeps the systemd watchdog from restarting the daemon; call it every
/// [`watchdog_interval`] while the daemon is healthy.
pub fn watchdog() -> Result<(), NotifyError> {
    send(NotifyState::Watchdog)
}

/// Tells systemd the daemon is shutting down on purpose.
pub fn stopping() -> Result<(), NotifyError> {
    send(NotifyState::Stopping)
}

/// Sets the free-form status line shown by `systemctl status` (one line;
/// newlines are replaced by spaces because the protocol is line based).
pub fn status(msg: &str) -> Result<(), NotifyError> {
    let line = msg.replace(['\n', '\r'], " ");
    send(NotifyState::Status(&line))
}

/// How often to call [`watchdog`]: half of `WATCHDOG_USEC`, or `None` when
/// systemd's watchdog is not enabled for this process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    watchdog_interval_from(usec.as_deref(), pid.as_deref(), std::process::id())
}

/// The pure rule behind [`watchdog_interval`], as `sd_watchdog_enabled(3)`
/// defines it: `WATCHDOG_USEC` must be a positive integer, and when
/// `WATCHDOG_PID` is set it must name this process (`my_pid`), otherwise the
/// watchdog belongs to another process (e.g. our parent) and we must not ping it.
pub fn watchdog_interval_from(
    usec: Option<&str>,
    pid: Option<&str>,
    my_pid: u32,
) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|u| *u > 0)?;
    if let Some(pid) = pid {
        let pid: u32 = pid.trim().parse().ok()?;
        if pid != my_pid {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2))
}

/// Sends one state, keeping `NOTIFY_SOCKET` set for later calls.
fn send(state: NotifyState<'_>) -> Result<(), NotifyError> {
    sd_notify::notify(false, std::slice::from_ref(&state)).map_err(|source| NotifyError {
        state: state.to_string(),
        socket: std::env::var("NOTIFY_SOCKET").unwrap_or_default(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;
    use std::sync::Mutex;

    /// Tests that change the process environment run one at a time.
    static ENV_LOCK: Mutex<()> = Mutex::new(());

    /// Sets `NOTIFY_SOCKET` to a fresh datagram socket for the duration of `f`.
    fn with_notify_socket(f: impl FnOnce(&UnixDatagram)) {
        let _guard = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        std::env::set_var("NOTIFY_SOCKET", &path);
        f(&sock);
        std::env::remove_var("NOTIFY_SOCKET");
    }

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).expect("a notification datagram");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn each_notification_reaches_the_socket() {
        with_notify_socket(|sock| {
            ready().unwrap();
            assert_eq!(recv(sock), "READY=1\n");
            watchdog().unwrap();
            assert_eq!(recv(sock), "WATCHDOG=1\n");
            status("outbox 3 captures\nsecond line").unwrap();
            assert_eq!(recv(sock), "STATUS=outbox 3 captures second line\n");
            stopping().unwrap();
            assert_eq!(recv(sock), "STOPPING=1\n");
        });
    }

    #[test]
    fn a_vanished_socket_is_an_error_naming_it() {
        with_notify_socket(|_| {
            std::env::set_var("NOTIFY_SOCKET", "/nonexistent/facegate-notify.sock");
            let err = ready().unwrap_err().to_string();
            assert!(err.contains("READY=1"), "{err}");
            assert!(err.contains("/nonexistent/facegate-notify.sock"), "{err}");
        });
    }

    #[test]
    fn without_notify_socket_nothing_happens() {
        let _guard = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        std::env::remove_var("NOTIFY_SOCKET");
        ready().unwrap();
        watchdog().unwrap();
        stopping().unwrap();
        status("idle").unwrap();
    }

    #[test]
    fn watchdog_interval_rules() {
        let me = 4242;
        let half = |us: u64| Some(Duration::from_micros(us));
        type Case<'a> = (&'a str, Option<&'a str>, Option<&'a str>, Option<Duration>);
        let cases: &[Case] = &[
            ("unset", None, None, None),
            ("30 s, no pid", Some("30000000"), None, half(15_000_000)),
            (
                "30 s, our pid",
                Some("30000000"),
                Some("4242"),
                half(15_000_000),
            ),
            ("other pid", Some("30000000"), Some("1"), None),
            ("garbage pid", Some("30000000"), Some("x"), None),
            ("zero", Some("0"), None, None),
            ("negative", Some("-5"), None, None),
            ("garbage usec", Some("thirty"), None, None),
            ("pid without usec", None, Some("4242"), None),
            ("odd microseconds", Some("3"), None, half(1)),
        ];
        for (name, usec, pid, want) in cases {
            assert_eq!(
                watchdog_interval_from(*usec, *pid, me),
                *want,
                "case {name}"
            );
        }
    }

    #[test]
    fn watchdog_interval_reads_the_environment() {
        let _guard = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        std::env::set_var("WATCHDOG_USEC", "30000000");
        std::env::set_var("WATCHDOG_PID", std::process::id().to_string());
        assert_eq!(watchdog_interval(), Some(Duration::from_secs(15)));
        std::env::set_var("WATCHDOG_PID", "1");
        assert_eq!(watchdog_interval(), None);
        std::env::remove_var("WATCHDOG_USEC");
        std::env::remove_var("WATCHDOG_PID");
        assert_eq!(watchdog_interval(), None);
    }
}
