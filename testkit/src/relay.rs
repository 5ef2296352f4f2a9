//! A TCP relay in front of the dev broker that a test controls: it can hold
//! back everything the broker sends to its clients (its PUBACKs stay
//! undelivered while the clients' publishes still arrive) and cut every open
//! connection at a chosen moment, as a flaky network would. The broker sees
//! an ordinary connection loss and keeps the clients' persistent sessions.
//!
//! ```ignore
//! let relay = Relay::start(broker.port).await;
//! let d = Daemon::builder().mqtt("localhost", relay.port, &broker.issue_client(DEVICE)).start();
//! relay.hold_replies(true); // uploads reach the broker, their PUBACKs wait
//! relay.cut();              // every open connection closes, held bytes are lost
//! relay.hold_replies(false);
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A relay from a local port to the broker's.
pub struct Relay {
    /// The port clients connect to (on 127.0.0.1).
    pub port: u16,
    hold: watch::Sender<bool>,
    hold_up: watch::Sender<bool>,
    cuts: watch::Sender<u64>,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Relay {
    /// Listens on a free port of 127.0.0.1 and relays every connection to
    /// `127.0.0.1:target_port`.
    pub async fn start(target_port: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("relay cannot listen on 127.0.0.1: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("relay address: {e}"))
            .port();
        let (hold, hold_rx) = watch::channel(false);
        let (hold_up, hold_up_rx) = watch::channel(false);
        let (cuts, cuts_rx) = watch::channel(0);
        let accepted = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(accept(
            listener,
            target_port,
            hold_rx,
            hold_up_rx,
            cuts_rx,
            accepted.clone(),
        ));
        Relay {
            port,
            hold,
            hold_up,
            cuts,
            accepted,
            task,
        }
    }

    /// Holds back (`true`) or lets through (`false`) what the broker sends to
    /// the clients; held bytes wait in the relay and go out when released,
    /// unless the connection is cut first.
    pub fn hold_replies(&self, hold: bool) {
        self.hold.send_replace(hold);
    }

    /// Holds back (`true`) or lets through (`false`) what the clients send
    /// to the broker (their PUBACKs included), as [`Relay::hold_replies`]
    /// does the other way.
    pub fn hold_requests(&self, hold: bool) {
        self.hold_up.send_replace(hold);
    }

    /// Closes every connection open now (both sides); later ones are relayed
    /// as usual.
    pub fn cut(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

async fn accept(
    listener: TcpListener,
    target_port: u16,
    hold: watch::Receiver<bool>,
    hold_up: watch::Receiver<bool>,
    cuts: watch::Receiver<u64>,
    accepted: Arc<AtomicUsize>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        accepted.fetch_add(1, Ordering::SeqCst);
        let Ok(broker) = TcpStream::connect(("127.0.0.1", target_port)).await else {
            continue; // the client sees its connection closed, like a broker that is down
        };
        let _ = client.set_nodelay(true);
        let _ = broker.set_nodelay(true);
        let hold = hold.clone();
        let hold_up = hold_up.clone();
        let mut cuts = cuts.clone();
        // Only cuts after this moment close this connection.
        cuts.borrow_and_update();
        tokio::spawn(async move {
            let (client_rx, client_tx) = client.into_split();
            let (broker_rx, broker_tx) = broker.into_split();
            tokio::select! {
                // A cut wins over held bytes being released at the same time.
                biased;
                _ = cuts.changed() => {}
                _ = pump(client_rx, broker_tx, Some(hold_up)) => {}
                _ = pump(broker_rx, client_tx, Some(hold)) => {}
            }
            // Dropping the halves closes both connections.
        });
    }
}

/// Copies `from` to `to` until either side closes; with `hold`, each chunk
/// waits while the hold is on.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut hold: Option<watch::Receiver<bool>>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if let Some(hold) = hold.as_mut() {
            if hold.wait_for(|held| !held).await.is_err() {
                return;
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
