//! The command line: every subcommand and flag of `facegate` (clap derive).

use std::path::PathBuf;

#[cfg(feature = "fleet")]
use clap::Args;
use clap::{Parser, Subcommand};

use facegate::config;
#[cfg(feature = "fleet")]
use facegate::consent;

#[derive(Parser)]
#[command(
    name = "facegate",
    version,
    about = "Consent-gated face-capture uplink for on-site terminals"
)]
pub(crate) struct Cli {
    /// Configuration file (TOML); FACEGATE_<KEY> environment variables override it.
    #[arg(long, short, global = true, default_value = config::DEFAULT_PATH)]
    pub(crate) config: PathBuf,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Run the daemon (intake, consent gate, outbox, control socket).
    Run,
    /// Validate the configuration; exits non-zero naming the key and the problem.
    CheckConfig,
    /// First-time setup: state dir, storage key, TLS key and CSR (safe to re-run).
    Provision {
        /// Owner of the created secrets (default: user `facegate` when run as root).
        #[arg(long)]
        owner: Option<String>,
        /// Create the storage key sealed as a systemd credential (needs
        /// `[storage] key_source = "credential"`; runs `systemd-creds encrypt`).
        #[arg(long)]
        seal: bool,
        /// Where the sealed credential is written.
        #[arg(long, requires = "seal", default_value = facegate::credential::DEFAULT_SEALED_PATH)]
        seal_to: PathBuf,
        /// What seals it: `auto` (TPM2 where present, else the host key), `host`, `tpm2`, `host+tpm2`.
        #[arg(long, requires = "seal", default_value = "auto",
              value_parser = clap::builder::PossibleValuesParser::new(["auto", "host", "tpm2", "host+tpm2"]))]
        with_key: String,
    },
    /// Check this terminal (files, certificates, clock, disk, broker); non-zero on failure.
    Doctor,
    /// Talk to the running daemon over its control socket.
    Ctl {
        #[command(subcommand)]
        command: Ctl,
    },
    /// Fleet managers' tool: keys, consent tokens, signed commands, broker ACL.
    #[cfg(feature = "fleet")]
    Fleet {
        #[command(subcommand)]
        command: Fleet,
    },
}

#[derive(Subcommand)]
pub(crate) enum Ctl {
    /// Outbox, consents and counters.
    Status {
        /// Print the raw status object.
        #[arg(long)]
        json: bool,
    },
    /// Consent tokens held by the device.
    Consent {
        #[command(subcommand)]
        command: CtlConsent,
    },
    /// Purge queued captures of one subject, or all; consents stay.
    Purge {
        /// Subject id; `-` reads it from stdin, `@FILE` from a file (keeps it out of `ps`).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        subject: Option<String>,
        /// Purge every queued capture.
        #[arg(long)]
        all: bool,
    },
    /// The hash-chained audit log.
    Audit {
        #[command(subcommand)]
        command: CtlAudit,
    },
    /// The encrypted outbox: queued and quarantined captures.
    Outbox {
        #[command(subcommand)]
        command: CtlOutbox,
    },
}

#[derive(Subcommand)]
pub(crate) enum CtlOutbox {
    /// List the captures in the outbox (id, state, size, age, refusals, parts); no subject, no image.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Put quarantined captures back in the queue with their refusals reset (fix the cause first).
    Retry {
        /// Capture id (see `ctl outbox list`).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        capture_id: Option<String>,
        /// Every quarantined capture.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Subcommand)]
pub(crate) enum CtlConsent {
    /// Verify and store a consent token (compact JWS).
    Add {
        /// The token; `-` reads it from stdin, `@FILE` from a file (keeps it out of `ps`).
        token: String,
    },
    /// List stored consents.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke every consent of a subject issued up to now and purge its captures.
    Revoke {
        /// Subject id; `-` reads it from stdin, `@FILE` from a file (keeps it out of `ps`).
        subject: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum CtlAudit {
    /// Check every entry of the hash chain; exits non-zero if any was altered or removed.
    Verify,
    /// Show the newest entries.
    Tail {
        /// How many entries.
        #[arg(short, default_value_t = 20)]
        n: usize,
        #[arg(long)]
        json: bool,
    },
}

#[cfg(feature = "fleet")]
#[derive(Subcommand)]
pub(crate) enum Fleet {
    /// Generate an Ed25519 signing key (PKCS#8 PEM, mode 0600) and print its public key.
    Keygen {
        /// Where to write the private key; never overwritten.
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a consent token for a subject.
    Consent(ConsentArgs),
    /// Sign a fleet command and print it (compact JWS).
    Sign(SignArgs),
    /// Sign a command, publish it over mutual TLS and print the replies.
    Send(Box<SendArgs>),
    /// Print the broker ACL (Mosquitto) confining each device to its own topics.
    #[command(long_about = ACL_ABOUT)]
    Acl(AclArgs),
    /// One line per device of a site from the retained status topics: state,
    /// last seen, outbox, quarantined, consent-log sync, counters.
    Status(Box<StatusArgs>),
    /// The reference receiver: store a site's captures once each (parts
    /// joined, sha256 checked) and delete a subject's copies when a purge
    /// receipt arrives, also those still in flight. Runs until SIGTERM.
    Receive(Box<ReceiveArgs>),
    /// The site consent log (reference back-end): publish its head, send
    /// devices what they miss, compact it.
    Log {
        #[command(subcommand)]
        command: FleetLog,
    },
}

#[cfg(feature = "fleet")]
#[derive(Subcommand)]
pub(crate) enum FleetLog {
    /// Publish the log's signed head, retained (run it from a timer, well
    /// within the devices' [consent] head_max_age).
    Head(Box<LogHeadArgs>),
    /// Read every device's retained status on the site and send each one
    /// the entries it misses (same seq, new jti); print what was done.
    Sync(Box<LogSyncArgs>),
    /// Raise the log's base past the entries whose consents have all expired.
    Compact(LogCompactArgs),
}

#[cfg(feature = "fleet")]
#[derive(Args)]
pub(crate) struct BrokerArgs {
    /// Broker as HOST or HOST:PORT (default port 8883).
    #[arg(long)]
    pub(crate) broker: String,
    /// CA certificate (PEM) that signed the broker's certificate.
    #[arg(long)]
    pub(crate) ca: PathBuf,
    /// The fleet's client certificate (PEM).
    #[arg(long)]
    pub(crate) cert: PathBuf,
    /// The fleet's TLS private key: a PEM file, or a key in a PKCS#11 token
    /// as an RFC 7512 URI (`pkcs11:token=fleet;object=fleet?pin-source=file:/path`).
    #[arg(long = "tls-key")]
    pub(crate) tls_key: String,
    /// The PKCS#11 provider library for a `pkcs11:` --tls-key (unless the URI
    /// has module-path=).
    #[arg(long = "pkcs11-module")]
    pub(crate) pkcs11_module: Option<PathBuf>,
    /// Topic prefix.
    #[arg(long, default_value = "facegate")]
    pub(crate) prefix: String,
}

#[cfg(feature = "fleet")]
#[derive(Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    pub(crate) broker: BrokerArgs,
    /// The site.
    #[arg(long)]
    pub(crate) site: String,
    /// One JSON object per device and line (the status as published, plus
    /// device, health, last_seen and last_seen_age_s) instead of the table.
    #[arg(long)]
    pub(crate) json: bool,
    /// Keep following the statuses and redraw the table in place (JSON: a
    /// line per status received); stop with Ctrl-C or SIGTERM.
    #[arg(long)]
    pub(crate) watch: bool,
    /// An online device whose last status is older than this is shown as
    /// SILENT (its status_interval is 60s by default).
    #[arg(long, default_value = "5m")]
    pub(crate) stale: humantime::Duration,
    /// How long to wait for the broker.
    #[arg(long, default_value = "10s")]
    pub(crate) timeout: humantime::Duration,
}

#[cfg(feature = "fleet")]
#[derive(Args)]
pub(crate) struct ReceiveArgs {
    #[command(flatten)]
    pub(crate) broker: BrokerArgs,
    /// The site.
    #[arg(long)]
    pub(crate) site: String,
    /// Where captures go: a directory DIR (DIR/{site}/{device}/{capture_id}.{jpg|png}
    /// and .json), or an object store by URL: file:///abs/path (build
    /// feature object-store) or s3://bucket/prefix (build feature s3; endpoint,
    /// region and credentials from the AWS_* environment variables).
    #[arg(long)]
    pub(crate) out: String,
    /// The receiver's own state, on a local disk: STATE/deletions.log and
    /// STATE/.receive (ids taken, parts, receipts). Default: the --out
    /// directory; required when --out is an s3:// URL.
    #[arg(long)]
    pub(crate) state: Option<PathBuf>,
    /// MQTT client id of the receiver's persistent session (default
    /// fleet-receive-SITE; a broker with use_username_as_clientid uses the
    /// certificate's name instead).
    #[arg(long = "client-id")]
    pub(crate) client_id: Option<String>,
    /// Largest message accepted: at least the devices' largest whole
    /// capture message (their mqtt.max_packet_size).
    #[arg(long = "max-packet-size", default_value_t = 16 * 1024 * 1024)]
    pub(crate) max_packet_size: usize,
    /// How often progress goes to stderr.
    #[arg(long, default_value = "10s")]
    pub(crate) progress: humantime::Duration,
    /// Run as one of several receivers on a shared subscription
    /// ($share/GROUP/...): each with its own certificate, all with the same
    /// --out and the same state directory (shared); each capture is stored once.
    #[arg(long)]
    pub(crate) share: Option<String>,
}

#[cfg(feature = "fleet")]
#[derive(Args)]
pub(crate) struct LogHeadArgs {
    #[command(flatten)]
    pub(crate) signer: SignerArgs,
    #[command(flatten)]
    pub(crate) broker: BrokerArgs,
    /// The site.
    #[arg(long)]
    pub(crate) site: String,
    /// The site's log file.
    #[arg(long)]
    pub(crate) log: PathBuf,
    /// How long the head stays valid (`exp - iat`).
    #[arg(long, default_value = "24h")]
    pub(crate) lifetime: humantime::Duration,
    /// How long to wait for the broker.
    #[arg(long, default_value = "10s")]
    pub(crate) timeout: humantime::Duration,
}

#[cfg(feature = "fleet")]
#[derive(Args)]
pub(crate) struct LogSyncArgs {
    #[command(flatten)]
    pub(crate) signer: SignerArgs,
    #[command(flatten)]
    pub(crate) broker: BrokerArgs,
    /// The site.
    #[arg(long)]
    pub(crate) site: String,
    /// The site's log file.
    #[arg(long)]
    pub(crate) log: PathBuf,
    /// Validity of an entry signed again at now (its own time being over).
    #[arg(long, default_value = "10m")]
    pub(crate) lifetime: humantime::Duration,
    /// How long to wait for the statuses and the replies.
    #[arg(long, default_value = "10s")]
    pub(crate) timeout: humantime::Duration,
}

#[cfg(feature = "fleet")]
#[derive(Args)]
pub(crate) struct LogCompactArgs {
    /// The site's log file.
    #[arg(long)]
    pub(crate) log: PathBuf,
}

#[cfg(feature = "fleet")]
const ACL_ABOUT: &str = "\
Print the Mosquitto acl_file that confines each device certificate to its own
site's and device's topics, from an inventory of `SITE DEVICE` lines (one
device per line, `#` starts a comment). A device may write its captures, reply
and status topics and read its own command topic, its site's command topic and
its site's consent-log head; each --fleet user reads and commands every site,
or only the sites given after `=`.

Mosquitto patterns (%u, %c) cannot name \"the site of this device\", hence one
block per device. Device ids are certificate CNs and broker user names: they
must be unique on the broker (also across sites) and must not be a fleet user's
name or `fleet`. The file is correct only with these mosquitto.conf lines on the
TLS listener (they are also printed in its header):

  require_certificate true
  use_identity_as_username true
  use_username_as_clientid true
  acl_file /etc/mosquitto/facegate.acl

With use_username_as_clientid every connection of a certificate is the session
named by its CN, so a back-end program that connects more than once at a time
needs one certificate (and --fleet user) per connection.";

#[cfg(feature = "fleet")]
#[derive(Args)]
pub(crate) struct AclArgs {
    /// Inventory file, one `SITE DEVICE` per line; `-` reads it from stdin.
    #[arg(long)]
    pub(crate) inventory: PathBuf,
    /// Topic prefix.
    #[arg(long, default_value = "facegate")]
    pub(crate) prefix: String,
    /// A fleet back-end user (certificate CN): `NAME` for every site, or
    /// `NAME=SITE[,SITE…]`; repeat for several.
    #[arg(long = "fleet", default_value = "fleet")]
    pub(crate) fleet: Vec<String>,
}

#[cfg(feature = "fleet")]
#[derive(Args)]
pub(crate) struct SendArgs {
    #[command(flatten)]
    pub(crate) signer: SignerArgs,
    #[command(flatten)]
    pub(crate) broker: BrokerArgs,
    /// Target site.
    #[arg(long)]
    pub(crate) site: String,
    /// Target device; without it the command goes to every device of the site.
    #[arg(long)]
    pub(crate) device: Option<String>,
    /// Command name (the possible values are the commands a device knows).
    #[arg(long, value_parser = command_names())]
    pub(crate) cmd: String,
    /// Arguments as a JSON object; `-` reads them from stdin, `@FILE` from a
    /// file (keeps subject ids and tokens out of `ps`).
    #[arg(long, default_value = "{}")]
    pub(crate) args: String,
    /// How long the command stays valid.
    #[arg(long, default_value = "10m")]
    pub(crate) lifetime: humantime::Duration,
    /// How long to wait for replies (a whole site: always this long).
    #[arg(long, default_value = "10s")]
    pub(crate) timeout: humantime::Duration,
    /// Print each reply as one JSON line.
    #[arg(long)]
    pub(crate) json: bool,
    /// The site's consent log file: the command (consent.grant or
    /// consent.revoke, to the whole site) gets the next `seq`, is appended
    /// (fsync'd) before it is published, and the new head is published after
    /// it. Needs a `fleet` key.
    #[arg(long)]
    pub(crate) log: Option<PathBuf>,
    /// With --log: how long a revocation stays in the log when the log
    /// holds no earlier grant of its subject (the devices' [consent]
    /// max_lifetime).
    #[arg(long, default_value = "365d")]
    pub(crate) max_consent_lifetime: humantime::Duration,
    /// With --log: how long the published head stays valid.
    #[arg(long, default_value = "24h")]
    pub(crate) head_lifetime: humantime::Duration,
}

#[cfg(feature = "fleet")]
#[derive(Args)]
pub(crate) struct SignerArgs {
    /// Private key file written by `fleet keygen`.
    #[arg(long)]
    pub(crate) key: PathBuf,
    /// Key id, as configured in the devices' [[trust]] entries.
    #[arg(long)]
    pub(crate) kid: String,
}

#[cfg(feature = "fleet")]
#[derive(Args)]
pub(crate) struct ConsentArgs {
    #[command(flatten)]
    pub(crate) signer: SignerArgs,
    /// Subject id the consent is about.
    #[arg(long)]
    pub(crate) subject: String,
    /// Audience: a site id or `site/device`; repeat for several.
    #[arg(long = "aud", required = true)]
    pub(crate) audience: Vec<String>,
    /// Space-separated scopes.
    #[arg(long, default_value = consent::UPLOAD_SCOPE)]
    pub(crate) scope: String,
    /// How long the consent lasts (`30d`, `12h`).
    #[arg(long, default_value = "365d")]
    pub(crate) lifetime: humantime::Duration,
    /// The devices' `[consent] max_lifetime`: a longer --lifetime is refused
    /// (devices would refuse the token `lifetime_too_long`).
    #[arg(long, default_value = "365d")]
    pub(crate) max_lifetime: humantime::Duration,
    /// Issuer (`iss`).
    #[arg(long, default_value = "facegate-fleet")]
    pub(crate) issuer: String,
    /// Consent id (`jti`); a random UUID if omitted.
    #[arg(long)]
    pub(crate) jti: Option<String>,
}

#[cfg(feature = "fleet")]
#[derive(Args)]
pub(crate) struct SignArgs {
    #[command(flatten)]
    pub(crate) signer: SignerArgs,
    /// Audience: a site id or `site/device`.
    #[arg(long)]
    pub(crate) aud: String,
    /// Command name (the possible values are the commands a device knows).
    #[arg(long, value_parser = command_names())]
    pub(crate) cmd: String,
    /// Arguments as a JSON object; `-` reads them from stdin, `@FILE` from a
    /// file (keeps subject ids and tokens out of `ps`).
    #[arg(long, default_value = "{}")]
    pub(crate) args: String,
    /// How long the command stays valid.
    #[arg(long, default_value = "1h")]
    pub(crate) lifetime: humantime::Duration,
}

#[cfg(feature = "fleet")]
/// The `--cmd` values, from the protocol's list of commands: a new command
/// shows up in `--help` and is accepted without touching this file.
fn command_names() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(
        facegate::protocol::CommandName::ALL.map(facegate::protocol::CommandName::as_str),
    )
}
