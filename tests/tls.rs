//! The uplink's mutual TLS against a real Mosquitto 2 broker: per-device ACLs keyed by
//! the certificate CN, every verification failure explained in plain words, the last
//! will, and persistent sessions across a broker restart.

use std::time::Duration;

use facegate::clock;
use facegate::uplink::tls::{self, classify, explain, ConnectFailure, TlsError};
use facegate_testkit::broker::{Broker, BrokerOptions, ClientCreds, KEEP_ALIVE};
use facegate_testkit::mqtt::{connect_error, Session};
use facegate_testkit::pki::Ca;
use facegate_testkit::util::free_port;
use rumqttc::{LastWill, QoS, SubscribeReasonCode};

/// Generous bound for things that should happen at once.
const T: Duration = Duration::from_secs(5);

/// A connected fleet session subscribed to `filter`.
async fn fleet_subscribed(broker: &Broker, filter: &str) -> Session {
    let mut fleet = Session::spawn(broker.options("fleet"));
    fleet.wait_connected(T).await.expect("fleet connects");
    let ack = fleet.subscribe(filter, T).await;
    assert_eq!(
        ack.return_codes,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    fleet
}

async fn device(broker: &Broker, id: &str) -> Session {
    let mut session = Session::spawn(broker.options(id));
    session.wait_connected(T).await.expect("device connects");
    session
}

async fn publish(session: &mut Session, topic: &str, payload: &str) {
    session.publish(topic, payload).await;
    assert!(
        session.wait_puback(T).await.is_some(),
        "no PUBACK for {topic}"
    );
}

#[tokio::test]
async fn device_publishes_its_captures_to_the_fleet() {
    let broker = Broker::start();
    let mut fleet = fleet_subscribed(&broker, "facegate/#").await;
    let mut dev = device(&broker, "term-01").await;

    publish(&mut dev, "facegate/lobby/term-01/captures", "capture-1").await;

    let got = fleet.recv_publish(T).await.expect("fleet receives capture");
    assert_eq!(got.topic, "facegate/lobby/term-01/captures");
    assert_eq!(&got.payload[..], b"capture-1");
    assert!(
        broker.log().contains("u'term-01'"),
        "the certificate CN is the MQTT user name"
    );
}

#[tokio::test]
async fn device_cannot_publish_as_another_device() {
    let broker = Broker::start();
    let mut fleet = fleet_subscribed(&broker, "facegate/#").await;
    let mut dev = device(&broker, "term-01").await;

    // Mosquitto acknowledges a denied QoS 1 publish (MQTT 3.1.1) but drops it; the
    // allowed marker published afterwards proves delivery order has passed it.
    for topic in [
        "facegate/lobby/term-02/captures",
        "facegate/lobby/term-02/status",
        "facegate/lobby/cmd",
        "facegate/lobby/term-01/cmd",
    ] {
        publish(&mut dev, topic, "forged").await;
    }
    publish(&mut dev, "facegate/lobby/term-01/status", "marker").await;

    let got = fleet.recv_publish(T).await.expect("fleet receives marker");
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("facegate/lobby/term-01/status", &b"marker"[..]),
        "a forged publish got through"
    );
    assert!(fleet
        .recv_publish(Duration::from_millis(300))
        .await
        .is_none());
}

#[tokio::test]
async fn device_reads_only_its_own_and_its_sites_commands() {
    let broker = Broker::start();
    let mut fleet = fleet_subscribed(&broker, "facegate/#").await;
    let mut dev = device(&broker, "term-01").await;
    let mut other = device(&broker, "term-02").await;

    let denied = dev.subscribe("facegate/lobby/term-02/cmd", T).await;
    dev.subscribe("facegate/#", T).await;
    // Either refused at SUBACK or filtered on delivery; never delivered (checked below).
    assert!(matches!(
        denied.return_codes[..],
        [SubscribeReasonCode::Failure] | [SubscribeReasonCode::Success(_)]
    ));

    // Another device's capture and command must not reach term-01 even through
    // `facegate/#`; its own command and its site's command must.
    publish(&mut other, "facegate/lobby/term-02/captures", "secret").await;
    publish(&mut fleet, "facegate/lobby/term-02/cmd", "not-yours").await;
    publish(&mut fleet, "facegate/lobby/cmd", "site-cmd").await;
    publish(&mut fleet, "facegate/lobby/term-01/cmd", "your-cmd").await;

    let mut received = Vec::new();
    while let Some(p) = dev.recv_publish(Duration::from_millis(500)).await {
        received.push((
            p.topic.clone(),
            String::from_utf8_lossy(&p.payload).into_owned(),
        ));
    }
    let topics: Vec<&str> = received.iter().map(|(t, _)| t.as_str()).collect();
    assert!(topics.contains(&"facegate/lobby/cmd"), "{received:?}");
    assert!(
        topics.contains(&"facegate/lobby/term-01/cmd"),
        "{received:?}"
    );
    assert!(
        received.iter().all(|(t, _)| !t.contains("term-02")),
        "term-01 read another device's topic: {received:?}"
    );
}

#[tokio::test]
async fn untrusted_broker_certificate_is_refused() {
    let broker = Broker::start();
    let mut creds = broker.issue_client("term-01");
    let stranger = Ca::new("some other CA").unwrap();
    creds.ca = stranger
        .write_cert(broker.dir.path(), "stranger-ca")
        .unwrap();

    let err = connect_error(broker.options_for("term-01", "localhost", &creds), T).await;
    assert_eq!(classify(&err), ConnectFailure::UntrustedServer, "{err:?}");
    let line = explain(&err);
    assert!(line.contains("not trusted"), "{line}");
}

#[tokio::test]
async fn broker_certificate_for_another_name_is_refused() {
    let broker = Broker::start_with(BrokerOptions {
        server_names: vec!["broker.example.net".into()],
        ..BrokerOptions::default()
    });
    let creds = broker.issue_client("term-01");

    for host in ["localhost", "127.0.0.1"] {
        let err = connect_error(broker.options_for("term-01", host, &creds), T).await;
        assert_eq!(
            classify(&err),
            ConnectFailure::ServerNameMismatch,
            "{err:?}"
        );
        assert!(explain(&err).contains("name mismatch"), "{}", explain(&err));
    }
}

#[tokio::test]
async fn expired_client_certificate_is_refused_by_the_broker() {
    let broker = Broker::start();
    let now = clock::now();
    let creds = broker.issue_client_valid("term-01", now - 7200, now - 3600);

    let err = connect_error(broker.options_for("term-01", "localhost", &creds), T).await;
    assert_eq!(
        classify(&err),
        ConnectFailure::ClientCertRejected,
        "{err:?}"
    );
    let line = explain(&err);
    assert!(line.contains("client certificate"), "{line}");
}

#[tokio::test]
async fn client_certificate_from_another_ca_is_refused_by_the_broker() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let rogue = Ca::new("rogue CA").unwrap();
    let now = clock::now();
    let (cert, key) = rogue
        .issue_client("fleet", now - 60, now + 3600)
        .unwrap()
        .write(dir.path(), "rogue")
        .unwrap();
    let creds = ClientCreds {
        ca: broker.ca_file.clone(),
        cert,
        key,
    };

    let err = connect_error(broker.options_for("fleet", "localhost", &creds), T).await;
    assert_eq!(
        classify(&err),
        ConnectFailure::ClientCertRejected,
        "{err:?}"
    );
    assert!(explain(&err).contains("client certificate"));
}

#[tokio::test]
async fn key_not_matching_certificate_is_a_config_error() {
    let broker = Broker::start();
    let a = broker.issue_client("term-01");
    let b = broker.issue_client("term-02");
    let err = tls::client_config(&a.ca, &a.cert, &b.key).unwrap_err();
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
    assert!(err.to_string().contains("term-02.key"), "{err}");
}

#[tokio::test]
async fn nothing_listening_is_connection_refused() {
    let broker = Broker::start();
    let creds = broker.issue_client("term-01");
    let options = tls::mqtt_options(
        "term-01",
        "localhost",
        free_port(),
        KEEP_ALIVE,
        1024,
        creds.tls(),
    )
    .unwrap();

    let err = connect_error(options, T).await;
    assert_eq!(classify(&err), ConnectFailure::Refused, "{err:?}");
    assert!(explain(&err).contains("connection refused"));
}

#[tokio::test]
async fn unknown_host_is_a_dns_failure() {
    let broker = Broker::start();
    let creds = broker.issue_client("term-01");
    // `.invalid` never resolves (RFC 6761); resolvers answer at once.
    let options = broker.options_for("term-01", "no-such-broker.invalid", &creds);

    let err = connect_error(options, T).await;
    assert_eq!(classify(&err), ConnectFailure::Dns, "{err:?}");
    assert!(explain(&err).contains("DNS"));
}

#[tokio::test]
async fn last_will_is_published_retained_when_the_device_dies() {
    let broker = Broker::start();
    let mut fleet = fleet_subscribed(&broker, "facegate/lobby/+/status").await;
    let status = "facegate/lobby/term-01/status";
    let offline = r#"{"v":1,"state":"offline"}"#;

    let mut options = broker.options("term-01");
    options.set_last_will(LastWill::new(status, offline, QoS::AtLeastOnce, true));
    let mut dev = Session::spawn(options);
    dev.wait_connected(T).await.unwrap();
    dev.client
        .publish(
            status,
            QoS::AtLeastOnce,
            true,
            r#"{"v":1,"state":"online"}"#,
        )
        .await
        .unwrap();
    dev.wait_puback(T).await.unwrap();
    let online = fleet.recv_on(status, T).await.unwrap();
    assert!(String::from_utf8_lossy(&online.payload).contains("online"));

    // Crash: the socket goes away without an MQTT DISCONNECT.
    dev.kill();
    let will = fleet
        .recv_on(status, KEEP_ALIVE_BOUND)
        .await
        .expect("fleet sees the last will");
    assert_eq!(&will.payload[..], offline.as_bytes());

    // A back-end that subscribes later still sees the device as offline.
    let mut late = Session::spawn(broker.options("fleet"));
    late.wait_connected(T).await.unwrap();
    late.client
        .subscribe(status, QoS::AtLeastOnce)
        .await
        .unwrap();
    let retained = late.recv_on(status, T).await.expect("retained status");
    assert!(retained.retain);
    assert_eq!(&retained.payload[..], offline.as_bytes());
}

/// The broker notices a dead client within 1.5 keep-alive intervals at worst.
const KEEP_ALIVE_BOUND: Duration = Duration::from_secs(10);

#[tokio::test]
async fn commands_queued_while_offline_survive_a_broker_restart() {
    let mut broker = Broker::start();
    let cmd = "facegate/lobby/term-01/cmd";

    // The device subscribes once in a persistent session, then goes away cleanly.
    let mut dev = device(&broker, "term-01").await;
    dev.subscribe(cmd, T).await;
    dev.client.disconnect().await.unwrap();
    drop(dev);

    // A command is queued for the offline device, then the broker restarts.
    let mut fleet = device(&broker, "fleet").await;
    publish(&mut fleet, cmd, "queued-cmd").await;
    drop(fleet);
    broker.restart();

    // Reconnecting with the same client id (clean session off) delivers it.
    let mut dev = device(&broker, "term-01").await;
    let got = dev.recv_on(cmd, T).await.expect("queued command delivered");
    assert_eq!(&got.payload[..], b"queued-cmd");
}

#[tokio::test]
async fn killed_broker_comes_back_on_the_same_port_with_the_same_certificates() {
    let mut broker = Broker::start();
    let port = broker.port;
    let creds = broker.issue_client("term-01");

    broker.kill();
    let err = connect_error(broker.options_for("term-01", "localhost", &creds), T).await;
    assert_eq!(classify(&err), ConnectFailure::Refused, "{err:?}");

    broker.restart();
    assert_eq!(broker.port, port);
    let mut dev = Session::spawn(broker.options_for("term-01", "localhost", &creds));
    dev.wait_connected(T)
        .await
        .expect("reconnects after restart");
}
