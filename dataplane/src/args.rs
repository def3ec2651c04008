//! Command-line arguments of `fleetward dataplane`.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::ingress::MqttConfig;
use crate::listener::HttpLimits;

/// Arguments of a dataplane pod.
#[derive(Clone, Debug, clap::Args)]
pub struct DataplaneArgs {
    /// Address of the plain MQTT listener (v3.1.1 and v5 on one port).
    #[arg(long, default_value = "0.0.0.0:1883", env = "FLEETWARD_MQTT_LISTEN")]
    pub mqtt_listen: SocketAddr,
    /// Address of the MQTT-over-TLS listener; needs --tls-cert and --tls-key.
    #[arg(long, env = "FLEETWARD_MQTTS_LISTEN", requires_all = ["tls_cert", "tls_key"])]
    pub mqtts_listen: Option<SocketAddr>,
    /// Address of the HTTPS listener (HTTP publish, WebSocket streams, MQTT over secure
    /// WebSocket, sign-in); needs --tls-cert and --tls-key.
    #[arg(long, env = "FLEETWARD_HTTPS_LISTEN", requires_all = ["tls_cert", "tls_key"])]
    pub https_listen: Option<SocketAddr>,
    /// PEM file with the server certificate chain for --mqtts-listen and --https-listen.
    /// Both listeners ask for client certificates (a thing's from its tenant's deviceCA) and
    /// take clients without one.
    #[arg(long, env = "FLEETWARD_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM file with the server's private key for --mqtts-listen and --https-listen.
    #[arg(long, env = "FLEETWARD_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Address of HTTP publish, MQTT over WebSocket (`/mqtt`) and WebSocket streams.
    #[arg(long, default_value = "0.0.0.0:8080", env = "FLEETWARD_HTTP_LISTEN")]
    pub http_listen: SocketAddr,
    /// Address of /healthz, /readyz and /metrics (they name tenants: loopback unless told;
    /// the chart passes the pod's address for probes and scraping).
    #[arg(long, default_value = "127.0.0.1:8081", env = "FLEETWARD_ADMIN_LISTEN")]
    pub admin_listen: SocketAddr,
    /// Directory for the last-known-good policy snapshot [default: /var/lib/fleetward when
    /// this user may write there, else $XDG_STATE_HOME/fleetward, else
    /// ~/.local/state/fleetward; the chart passes its own].
    #[arg(long, value_name = "DIR", env = "FLEETWARD_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// PolicySync endpoints of the operator replicas, comma-separated, each
    /// `http://HOST:PORT` (`https://` with --operator-ca); every one is tried.
    #[arg(long, value_delimiter = ',', env = "FLEETWARD_OPERATOR")]
    pub operator: Vec<String>,
    /// Connection, message, session and HTTP limits (shared with `fleetward start`).
    #[command(flatten)]
    pub limits: LimitArgs,
    /// NATS servers of the cross-pod bus, comma-separated (nats://host:4222); absent, this pod
    /// is the only one (in-process bus). Retained messages across pods need JetStream.
    #[arg(long, value_delimiter = ',', env = "FLEETWARD_NATS")]
    pub nats: Vec<String>,
    /// With --nats: keep persistent sessions, and the QoS 1/2 messages queued for them, in NATS
    /// JetStream, so any pod resumes a session and a publish is acknowledged only once stored
    /// (BUS.md, "Persistent sessions"). `false` keeps sessions on their pod, as without NATS.
    #[arg(long, env = "FLEETWARD_DURABLE_SESSIONS", default_value_t = true, action = clap::ArgAction::Set)]
    pub durable_sessions: bool,
    /// Bytes of QoS 1/2 messages each tenant's JetStream stream keeps for its persistent
    /// sessions; past them its oldest go first (its own sessions only).
    #[arg(long, default_value_t = 256 << 20, value_parser = clap::value_parser!(i64).range(1..))]
    pub durable_tenant_bytes: i64,
    /// Replicas of each tenant's stream: 3 on a clustered NATS, 1 on a single server.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=5))]
    pub durable_replicas: u64,
    /// The PostgreSQL the history reader (`GET …/messages`) reads, as `fleetward writer`
    /// writes it: `postgres://user:password@host/db[?sslmode=verify-full]`. Absent, the reader
    /// answers 503 `no_history_store`. With --nats, messages of channels with history go to
    /// the JetStream stream the writer consumes, whether or not this is set.
    #[arg(long, env = "FLEETWARD_HISTORY_POSTGRES_URL", hide_env_values = true)]
    pub history_postgres_url: Option<String>,
    /// Connections of the history reader's pool.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub history_postgres_pool_size: u32,
    /// The CA that signs PostgreSQL's certificate (`sslmode=verify-ca` or `verify-full`).
    #[arg(long, env = "FLEETWARD_HISTORY_POSTGRES_CA")]
    pub history_postgres_ca: Option<std::path::PathBuf>,

    /// The PolicySync token (prefer --token-file or the environment to keep it out of `ps`).
    #[arg(
        long,
        env = "FLEETWARD_SYNC_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    pub token: Option<String>,
    /// A file holding the PolicySync token: the operator's `--token-file` (as mounted from the
    /// chart's Secret).
    #[arg(long, env = "FLEETWARD_SYNC_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// This dataplane's id in PolicySync and the operator's metrics; default the pod name.
    #[arg(long, env = "POD_NAME")]
    pub node_id: Option<String>,
    /// CA certificate (PEM) that signed the operator's PolicySync certificate; enables TLS.
    #[arg(long, env = "FLEETWARD_OPERATOR_CA")]
    pub operator_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS to the operator.
    #[arg(long, env = "FLEETWARD_OPERATOR_CERT", requires_all = ["operator_ca", "operator_key"])]
    pub operator_cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS to the operator.
    #[arg(long, env = "FLEETWARD_OPERATOR_KEY", requires = "operator_cert")]
    pub operator_key: Option<PathBuf>,

    /// The `iss` of user tokens; every pod that should accept a token must share it.
    #[arg(long, default_value = "fleetward", env = "FLEETWARD_TOKEN_ISSUER")]
    pub token_issuer: String,
    /// The `aud` of user tokens.
    #[arg(long, default_value = "fleetward", env = "FLEETWARD_TOKEN_AUDIENCE")]
    pub token_audience: String,
    /// Seconds an access token lasts.
    #[arg(long, default_value_t = 900)]
    pub access_token_ttl_secs: u64,
    /// Seconds a refresh token lasts (each refresh hands out a new one).
    #[arg(long, default_value_t = 86_400)]
    pub refresh_token_ttl_secs: u64,
    /// Sign-in attempts allowed per user per minute, on this pod.
    #[arg(long, default_value_t = 10)]
    pub logins_per_user_per_minute: u32,
    /// Sign-in attempts allowed per client address per minute, on this pod.
    #[arg(long, default_value_t = 60)]
    pub logins_per_address_per_minute: u32,
}

impl DataplaneArgs {
    /// `--state-dir`, or the default a user outside a pod can write (see the flag's help).
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir.clone().unwrap_or_else(|| {
            default_state_dir(
                Path::new(SYSTEM_STATE_DIR),
                std::env::var_os("XDG_STATE_HOME"),
                std::env::var_os("HOME"),
            )
        })
    }

    /// The users' settings the arguments give.
    pub fn users_config(&self) -> crate::ingress::UsersConfig {
        crate::ingress::UsersConfig {
            tokens: fleetward_policy::tokens::TokenSettings {
                issuer: self.token_issuer.clone(),
                audience: self.token_audience.clone(),
                access_ttl: std::time::Duration::from_secs(self.access_token_ttl_secs.max(1)),
                refresh_ttl: std::time::Duration::from_secs(self.refresh_token_ttl_secs.max(1)),
            },
            logins_per_user_per_minute: self.logins_per_user_per_minute,
            logins_per_address_per_minute: self.logins_per_address_per_minute,
            login_window: std::time::Duration::from_secs(60),
        }
    }
}

/// Where a dataplane run as root (or in a pod) keeps its snapshot.
const SYSTEM_STATE_DIR: &str = "/var/lib/fleetward";

/// [`SYSTEM_STATE_DIR`] when it can be written, else the XDG state directory (an absolute
/// `$XDG_STATE_HOME`, else `$HOME/.local/state`): a normal user needs no flag.
fn default_state_dir(
    system: &Path,
    xdg_state_home: Option<OsString>,
    home: Option<OsString>,
) -> PathBuf {
    if writable(system) {
        return system.to_owned();
    }
    let xdg = xdg_state_home
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            home.filter(|h| !h.is_empty())
                .map(|h| PathBuf::from(h).join(".local/state"))
        });
    // Without either, the system directory stays, and the error on it names it.
    xdg.map_or_else(|| system.to_owned(), |dir| dir.join("fleetward"))
}

/// Whether `dir` exists or can be made, and a file can be created in it (permission bits
/// do not tell, for root or with ACLs; trying does).
fn writable(dir: &Path) -> bool {
    if std::fs::create_dir_all(dir).is_err() {
        return false;
    }
    let probe = dir.join(format!(".write-probe-{}", std::process::id()));
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .is_ok();
    if created {
        let _ = std::fs::remove_file(&probe);
    }
    created
}

/// What a pod holds for its clients, and how long it waits for them: the flags of
/// `fleetward dataplane` and `fleetward start` alike.
#[derive(Clone, Debug, clap::Args)]
pub struct LimitArgs {
    /// The most sockets this pod holds on its MQTT, MQTTS and HTTP listeners together (MQTT,
    /// MQTT over WebSocket, WebSocket streams, HTTP), counted from accept; lowered to the
    /// open-files limit less 128 when that is smaller.
    #[arg(long, default_value_t = 10_000)]
    pub max_connections: usize,
    /// The most of those not authenticated yet; when full, the oldest is closed to make room.
    /// Default: a quarter of --max-connections, at most 1,000.
    #[arg(long)]
    pub max_pending_connections: Option<usize>,
    /// Seconds a new connection has to authenticate: the TLS handshake and the CONNECT (also
    /// over WebSocket).
    #[arg(long, default_value_t = 10)]
    pub connect_timeout_secs: u64,
    /// Seconds an HTTP client has to send a request's headers; also how long a kept-alive
    /// HTTP connection may sit idle between requests.
    #[arg(long, default_value_t = 10)]
    pub http_header_timeout_secs: u64,
    /// Seconds an HTTP client has to send a request's whole body.
    #[arg(long, default_value_t = 30)]
    pub http_body_timeout_secs: u64,
    /// HTTP requests served at once; more are answered 503 with Retry-After.
    #[arg(long, default_value_t = 1024)]
    pub http_max_requests: usize,
    /// Origins whose browser pages may call the HTTP API of every tenant (CORS),
    /// comma-separated, each as a browser sends it (`https://dash.example.com`); a Tenant's
    /// `spec.web.allowedOrigins` adds its own.
    #[arg(
        long,
        value_delimiter = ',',
        value_parser = fleetward_policy::parse_origin,
        env = "FLEETWARD_CORS_ALLOWED_ORIGINS"
    )]
    pub cors_allowed_origins: Vec<String>,
    /// The largest MQTT packet accepted, in bytes (tenant and channel limits may be lower).
    #[arg(long, default_value_t = 1024 * 1024)]
    pub max_packet_size: usize,
    /// The most QoS 1/2 deliveries awaiting a client's acknowledgement.
    #[arg(long, default_value_t = 100)]
    pub max_inflight: u16,
    /// The most messages queued for a persistent session while its client was away that it is
    /// sent on resume; the rest are dropped and counted.
    #[arg(long, default_value_t = 1000)]
    pub max_offline_messages: usize,
    /// Entries of the authorization decision cache; 0 turns it off (every decision is
    /// evaluated, for measuring what the cache is worth).
    #[arg(long, default_value_t = 100_000)]
    pub decision_cache_entries: u64,
    /// The most user properties one MQTT v5 message (publish or will) may carry.
    #[arg(long, default_value_t = 32)]
    pub max_user_properties: usize,
    /// The longest a v5 will waits after its connection ends, in seconds (the session's
    /// expiry caps it too).
    #[arg(long, default_value_t = 300)]
    pub max_will_delay_secs: u64,
    /// The most subscriptions one MQTT session holds.
    #[arg(long, default_value_t = 100)]
    pub max_subscriptions_per_session: usize,
    /// The most v5 wills of one tenant waiting out their delay on this pod; a will past it is
    /// published when its connection ends, without the delay.
    #[arg(long, default_value_t = 1000)]
    pub max_pending_wills_per_tenant: usize,
    /// The most persistent sessions of one tenant kept on this pod while their clients are
    /// away; saving one more drops the tenant's oldest (its client resumes with session
    /// present 0).
    #[arg(long, default_value_t = 10_000)]
    pub max_saved_sessions_per_tenant: usize,
    /// The longest MQTT keep-alive a client may use, in seconds (unset: the client's own). A v5
    /// client asking more, or 0, is told this one in CONNACK (Server Keep Alive) and held to
    /// it; a v3.1.1 client asking more, or 0, is refused with CONNACK 0x02.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_keep_alive_secs: Option<u16>,
    /// The longest a drain on SIGTERM takes, in seconds: stop accepting and reading, let what
    /// was accepted reach its subscribers and the bus, say goodbye to every client, exit. Keep
    /// it below the pod's terminationGracePeriodSeconds, less the preStop sleep.
    #[arg(long, default_value_t = 20, env = "FLEETWARD_DRAIN_TIMEOUT_SECS")]
    pub drain_timeout_secs: u64,
    /// Where v5 clients are told to go when this pod drains (`host:port`): DISCONNECT 0x9C
    /// (Use another server) with this Server Reference instead of 0x8B (Server shutting down).
    #[arg(
        long,
        value_name = "HOST:PORT",
        env = "FLEETWARD_DRAIN_SERVER_REFERENCE"
    )]
    pub drain_server_reference: Option<String>,
}

impl LimitArgs {
    /// The MQTT front-end's configuration these flags give.
    pub fn mqtt_config(&self) -> MqttConfig {
        MqttConfig {
            max_connections: self.max_connections,
            connect_timeout: Duration::from_secs(self.connect_timeout_secs),
            max_packet_size: self.max_packet_size,
            max_inflight: self.max_inflight.max(1),
            decision_cache_entries: self.decision_cache_entries,
            max_user_properties: self.max_user_properties,
            max_will_delay: Duration::from_secs(self.max_will_delay_secs),
            max_subscriptions_per_session: self.max_subscriptions_per_session,
            max_offline_messages: self.max_offline_messages,
            max_pending_wills_per_tenant: self.max_pending_wills_per_tenant,
            max_saved_sessions_per_tenant: self.max_saved_sessions_per_tenant,
            max_keep_alive: self.max_keep_alive_secs,
            ..MqttConfig::default()
        }
    }

    /// The HTTP listener's timeouts and request cap these flags give.
    pub fn http_limits(&self) -> HttpLimits {
        HttpLimits {
            header_timeout: Duration::from_secs(self.http_header_timeout_secs.max(1)),
            body_timeout: Duration::from_secs(self.http_body_timeout_secs.max(1)),
            max_requests: self.http_max_requests.max(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use std::ffi::OsString;
    use std::path::{Path, PathBuf};

    use super::{LimitArgs, default_state_dir};

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        limits: LimitArgs,
    }

    #[test]
    fn cors_origins_are_a_comma_separated_list_of_exact_origins() {
        let f = Flags::try_parse_from([
            "t",
            "--cors-allowed-origins",
            "https://dash.example.com,http://localhost:5173",
        ])
        .expect("two origins");
        assert_eq!(
            f.limits.cors_allowed_origins,
            ["https://dash.example.com", "http://localhost:5173"]
        );
        assert!(
            Flags::try_parse_from(["t"])
                .expect("none")
                .limits
                .cors_allowed_origins
                .is_empty()
        );
        for bad in ["*", "https://dash.example.com/", "dash.example.com"] {
            let e = Flags::try_parse_from(["t", "--cors-allowed-origins", bad])
                .err()
                .expect(bad)
                .to_string();
            assert!(e.contains("scheme://host[:port]"), "{e}");
        }
    }

    #[test]
    fn the_state_dir_falls_back_to_the_users_own_when_the_system_one_is_not_writable() {
        let base = std::env::temp_dir().join(format!("fleetward-state-{}", std::process::id()));
        std::fs::create_dir_all(&base).expect("a temp dir");
        let os = |p: &Path| Some(OsString::from(p));
        let system = base.join("var-lib-fleetward");
        assert_eq!(
            default_state_dir(&system, os(&base.join("xdg")), os(&base)),
            system,
            "writable (made here): the system directory"
        );
        // A regular file where the parent should be: nobody, not even root, can make it.
        let blocker = base.join("a-file");
        std::fs::write(&blocker, "").expect("write");
        let denied = blocker.join("fleetward");
        assert_eq!(
            default_state_dir(&denied, os(&base.join("xdg")), os(&base)),
            base.join("xdg/fleetward")
        );
        assert_eq!(
            default_state_dir(&denied, Some("relative".into()), os(&base)),
            base.join(".local/state/fleetward"),
            "a relative XDG_STATE_HOME is ignored, as the spec says"
        );
        assert_eq!(
            default_state_dir(&denied, None, None),
            PathBuf::from(&denied),
            "nothing better: the system directory, whose error names it"
        );
        std::fs::remove_dir_all(&base).ok();
    }
}
