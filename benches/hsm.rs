//! The device key in a PKCS#11 token (SoftHSM2) against a key file, in the
//! same run (`cargo bench --bench hsm`; needs `mosquitto` and SoftHSM2, see
//! scripts/ensure-mosquitto and scripts/ensure-softhsm).
//!
//! One private Mosquitto with mutual TLS serves both sides. The token side is
//! a fresh SoftHSM2 token in which `facegate provision` generated the key
//! (ECDSA P-256, not extractable), its CSR signed by the broker's CA; the file
//! side is a certificate and key the same CA issued.
//!
//! * Handshake: the product's own rustls client configuration
//!   (`uplink::tls::client_config_for`, so every token handshake is signed in
//!   the token through cryptoki) completes a TLS handshake with the broker
//!   over a fresh TCP connection, timed from `connect` to the handshake's end.
//!   Blocks of 25 alternate between the two keys, 8 blocks each (200 samples
//!   per side, `FACEGATE_BENCH_HANDSHAKES` sets the per-side total).
//! * Throughput: the benchmark build of `facegate run` drains an outbox of N
//!   captures (the ~48 KB JPEGs of D1, window 16) with each key; timed from
//!   "uplink connected" to "outbox empty". The two alternate for
//!   `FACEGATE_BENCH_ROUNDS` rounds (default 3); `FACEGATE_BENCH_CAPTURES`
//!   (default 6000) sets N.

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use facegate::clock;
use facegate::keyref::KeyRef;
use facegate::uplink::tls;
use facegate_testkit::bench;
use facegate_testkit::broker::{Broker, ClientCreds};
use facegate_testkit::daemon::{facegate_binary, Daemon};
use facegate_testkit::hsm::Token;
use facegate_testkit::DEVICE;
use rustls::pki_types::ServerName;

const WINDOW: u16 = 16;
const BLOCK: usize = 25;

fn main() {
    let n = bench::captures(6000);
    let rounds = bench::rounds(3);
    let handshakes = bench::env_count("FACEGATE_BENCH_HANDSHAKES", 200);
    bench::runtime().block_on(run(n, rounds, handshakes));
}

/// A terminal whose device key is in a fresh token, provisioned and
/// certified; the token must outlive it.
fn token_terminal(broker: &Broker, token: &Token) -> Daemon {
    let uri = token.uri("device");
    let creds = ClientCreds {
        ca: broker.ca_file.clone(),
        cert: "device.pem".into(),
        key: uri.clone().into(),
    };
    let d = bench::daemon()
        .broker(broker)
        .mqtt("localhost", broker.port, &creds)
        .configure(|c| {
            c.pkcs11_key(&uri, &token.module)
                .inflight(WINDOW)
                .fast_reconnect()
                .quota_bytes(4 * 1024 * 1024 * 1024)
        })
        .build();
    let out = Command::new(facegate_binary())
        .arg("provision")
        .arg("--config")
        .arg(&d.config)
        .output()
        .expect("run facegate provision");
    assert!(out.status.success(), "provision: {out:?}");
    let csr = std::fs::read_to_string(d.dir.path().join("device.csr")).expect("the CSR");
    let now = clock::now();
    let cert = broker
        .ca
        .sign_client_csr(&csr, DEVICE, now - 3600, now + 86_400)
        .expect("signed CSR");
    std::fs::write(d.dir.path().join("device.pem"), cert).expect("device.pem");
    d
}

fn file_terminal(broker: &Broker) -> Daemon {
    bench::daemon()
        .broker(broker)
        .configure(|c| {
            c.inflight(WINDOW)
                .fast_reconnect()
                .quota_bytes(4 * 1024 * 1024 * 1024)
        })
        .build()
}

/// The uplink's TLS client configuration for `d`'s key.
fn tls_config(d: &Daemon) -> Arc<rustls::ClientConfig> {
    let cfg = d.load_config();
    tls::client_config_for(&cfg.mqtt.ca_file, &cfg.mqtt.cert_file, &cfg.mqtt.key)
        .unwrap_or_else(|e| panic!("TLS config of {}: {e}", key_name(&cfg.mqtt.key)))
}

fn key_name(key: &KeyRef) -> String {
    match key.file() {
        Some(p) => p.display().to_string(),
        None => "a PKCS#11 key".into(),
    }
}

/// One TLS handshake with the broker on a fresh TCP connection.
fn handshake(config: &Arc<rustls::ClientConfig>, port: u16) -> Duration {
    let t = Instant::now();
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect to the broker");
    tcp.set_nodelay(true).ok();
    let name = ServerName::try_from("localhost").expect("server name");
    let mut conn =
        rustls::ClientConnection::new(config.clone(), name).expect("a client connection");
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)
            .expect("TLS handshake with the broker");
    }
    let took = t.elapsed();
    conn.send_close_notify();
    let _ = conn.complete_io(&mut tcp);
    let _ = tcp.flush();
    took
}

async fn run(n: usize, rounds: usize, handshakes: usize) {
    let broker = bench::start_broker();
    let token = Token::fresh();
    println!("hsm: SoftHSM2 module {}", token.module.display());

    // Handshakes.
    let (token_cfg, file_cfg) = {
        let t = token_terminal(&broker, &token);
        let f = file_terminal(&broker);
        (tls_config(&t), tls_config(&f))
    };
    let load = bench::loadavg();
    let (mut tok, mut file) = (Vec::new(), Vec::new());
    // One of each first, not timed: module loading, session set-up.
    handshake(&token_cfg, broker.port);
    handshake(&file_cfg, broker.port);
    while tok.len() < handshakes {
        for _ in 0..BLOCK {
            file.push(handshake(&file_cfg, broker.port));
        }
        for _ in 0..BLOCK {
            tok.push(handshake(&token_cfg, broker.port));
        }
    }
    let (text, _) = bench::summary(&mut file);
    println!("RESULT HSM handshake, key file: {text}; load {load}");
    let (text, _) = bench::summary(&mut tok);
    println!(
        "RESULT HSM handshake, SoftHSM2 key: {text}; load {}",
        bench::loadavg()
    );

    // Throughput.
    let images = bench::camera_jpegs();
    let (mut tok_rates, mut file_rates) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        for side in ["file", "token"] {
            let load = bench::loadavg();
            let mut d = if side == "file" {
                file_terminal(&broker)
            } else {
                token_terminal(&broker, &token)
            };
            bench::forget_session(&broker, facegate_testkit::DEVICE).await;
            let cfg = d.load_config();
            bench::fill_outbox(&cfg, &d.consent_signer, 20, n, &images, 500);
            let drained = bench::drain_measured(&mut d, n, Duration::from_secs(300)).await;
            println!(
                "RESULT HSM round {round} {side:5}: {:.0} captures/s, {:.0} µs CPU per capture; load {load}",
                drained.rate,
                drained.cpu_s / n as f64 * 1e6
            );
            if side == "file" {
                file_rates.push(drained.rate);
            } else {
                tok_rates.push(drained.rate);
            }
            remove_state(&d);
        }
    }
    let range = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(0.0, f64::max);
        (lo, hi)
    };
    let (flo, fhi) = range(&file_rates);
    let (tlo, thi) = range(&tok_rates);
    println!("RESULT HSM throughput, key file: {flo:.0}..{fhi:.0} captures/s");
    println!(
        "RESULT HSM throughput, SoftHSM2 key: {tlo:.0}..{thi:.0} captures/s; load now {}",
        bench::loadavg()
    );
}

/// The outbox of a finished run is not needed any more (disk space).
fn remove_state(d: &Daemon) {
    let state: &Path = &d.load_config().state_dir;
    let _ = std::fs::remove_dir_all(state);
}
