//! Wiring: a `Dataplane` builder that starts the router, the MQTT, HTTP and admin listeners.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use fleetward_policy::{PolicyEvaluator, Snapshot};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::admin::{self, AdminState};
use crate::args::{DataplaneArgs, LimitArgs};
use crate::bus::{Bus, BusRouter, Inbound, LocalBus, NatsBus, NatsConfig};
use crate::ingress::refresh::RefreshStore;
use crate::ingress::{
    History, HistorySink, Ingress, MqttConfig, RetainedStore, Users, UsersConfig,
};
use crate::listener::{self, Gate, GatedListener, HttpLimits, Listener, ListenerMetrics};
use crate::metrics::{AtScrape, Metrics};
use crate::mqtt::{self, Broker};
use crate::router::{Router, RumqttdConfig, RumqttdRouter};
use crate::shutdown::{self, DrainConfig, DrainReport};
use crate::sync::SyncStatus;
use crate::web;
use fleetward_history::stream::{Publisher, PublisherConfig};

/// The default of `--max-pending-connections` when the connection cap allows it.
pub const DEFAULT_MAX_PENDING: usize = 1_000;
/// Sockets the admin listener holds at once (probes and scrapes).
const ADMIN_SOCKETS: usize = 64;

/// A dataplane to start: listeners, limits, and the policy it enforces.
///
/// The policy arrives on a `watch` channel of snapshots: the sync client publishes there, and
/// tests and the single-binary mode feed it directly. A snapshot of version 0 means "none yet":
/// every CONNECT is refused and `/readyz` says not ready until a real one arrives.
pub struct Dataplane {
    policy: watch::Receiver<Arc<Snapshot>>,
    mqtt: MqttConfig,
    router: RumqttdConfig,
    mqtt_listen: SocketAddr,
    mqtts: Option<(SocketAddr, PathBuf, PathBuf)>,
    https: Option<(SocketAddr, PathBuf, PathBuf)>,
    admin_listen: Option<SocketAddr>,
    http_listen: Option<SocketAddr>,
    sync_status: Option<Arc<SyncStatus>>,
    nats: Option<NatsConfig>,
    users: UsersConfig,
    max_pending: Option<usize>,
    http_limits: HttpLimits,
    cors_allowed_origins: Vec<String>,
    node_id: Option<String>,
    admin_routes: Option<axum::Router>,
    history: History,
    provisioner: Option<Arc<dyn crate::provisioning::Provisioner>>,
    drain: DrainConfig,
    drain_server_reference: Option<String>,
    sessions_file: Option<PathBuf>,
}

/// The front-end of a started dataplane.
type Front = Arc<Broker<BusRouter<RumqttdRouter>>>;

impl Dataplane {
    /// A dataplane with default limits on 0.0.0.0:1883, no TLS, no HTTP and no admin listener.
    pub fn new(policy: watch::Receiver<Arc<Snapshot>>) -> Self {
        Self {
            policy,
            mqtt: MqttConfig::default(),
            router: RumqttdConfig::default(),
            mqtt_listen: SocketAddr::from(([0, 0, 0, 0], 1883)),
            mqtts: None,
            https: None,
            admin_listen: None,
            http_listen: None,
            sync_status: None,
            nats: None,
            users: UsersConfig::default(),
            max_pending: None,
            http_limits: HttpLimits::default(),
            cors_allowed_origins: Vec::new(),
            node_id: None,
            admin_routes: None,
            history: History::default(),
            provisioner: None,
            drain: DrainConfig::default(),
            drain_server_reference: None,
            sessions_file: None,
        }
    }

    /// Where persistent sessions are kept across a restart (`fleetward start`): read at start,
    /// before the listeners accept, and written by [`SessionSaver::save`] at shutdown. Off by
    /// default: a pod's sessions then live in its memory only.
    pub fn sessions_file(mut self, path: Option<PathBuf>) -> Self {
        self.sessions_file = path;
        self
    }

    /// A dataplane configured from the command line.
    pub fn from_args(args: &DataplaneArgs, policy: watch::Receiver<Arc<Snapshot>>) -> Self {
        let mut d = Self::new(policy)
            .mqtt_listen(args.mqtt_listen)
            .admin_listen(Some(args.admin_listen))
            .http_listen(Some(args.http_listen))
            .limits(&args.limits);
        if let (Some(addr), Some(cert), Some(key)) =
            (args.mqtts_listen, &args.tls_cert, &args.tls_key)
        {
            d = d.mqtts_listen(addr, cert.clone(), key.clone());
        }
        if let (Some(addr), Some(cert), Some(key)) =
            (args.https_listen, &args.tls_cert, &args.tls_key)
        {
            d = d.https_listen(addr, cert.clone(), key.clone());
        }
        d = d.users(args.users_config()).node_id(args.node_id.clone());
        if !args.nats.is_empty() {
            let node_id = args.node_id.clone().unwrap_or_else(random_node_id);
            let mut nats = NatsConfig::new(args.nats.clone(), node_id);
            nats.durable = args.durable_sessions.then(|| crate::bus::DurableConfig {
                tenant_bytes: args.durable_tenant_bytes,
                replicas: usize::try_from(args.durable_replicas).unwrap_or(1),
                ..Default::default()
            });
            d = d.nats(Some(nats));
        }
        d
    }

    /// The limits the command-line flags give (`fleetward dataplane` and `fleetward start`).
    pub fn limits(self, limits: &LimitArgs) -> Self {
        self.mqtt_config(limits.mqtt_config())
            .drain(
                Duration::from_secs(limits.drain_timeout_secs),
                limits.drain_server_reference.clone(),
            )
            .http_limits(limits.http_limits())
            .max_pending_connections(limits.max_pending_connections)
            .cors_allowed_origins(limits.cors_allowed_origins.clone())
    }

    /// How a drain ([`RunningDataplane::drain`]) goes: its bound, and where v5 clients are told
    /// to go instead (DISCONNECT 0x9C) if anywhere, else they are told 0x8B.
    pub fn drain(mut self, timeout: Duration, server_reference: Option<String>) -> Self {
        self.drain = DrainConfig { timeout };
        self.drain_server_reference = server_reference;
        self
    }

    /// The cross-pod bus: NATS with this configuration, or (`None`, the default) none, for a
    /// single pod.
    pub fn nats(mut self, config: Option<NatsConfig>) -> Self {
        self.nats = config;
        self
    }

    /// The pod's name in audit events (default `POD_NAME`, else the host's name).
    pub fn node_id(mut self, id: Option<String>) -> Self {
        self.node_id = id;
        self
    }

    /// How users sign in and how long their tokens last.
    pub fn users(mut self, config: UsersConfig) -> Self {
        self.users = config;
        self
    }

    /// Where the plain MQTT listener binds (port 0 picks a free one).
    pub fn mqtt_listen(mut self, addr: SocketAddr) -> Self {
        self.mqtt_listen = addr;
        self
    }

    /// Adds the TLS listener with a PEM certificate chain and key.
    pub fn mqtts_listen(mut self, addr: SocketAddr, cert: PathBuf, key: PathBuf) -> Self {
        self.mqtts = Some((addr, cert, key));
        self
    }

    /// The HTTPS listener (what the HTTP listener serves, over TLS, with client
    /// certificates asked for), with the server chain and key in PEM files.
    pub fn https_listen(mut self, addr: SocketAddr, cert: PathBuf, key: PathBuf) -> Self {
        self.https = Some((addr, cert, key));
        self
    }

    /// Where the admin listener binds, if anywhere.
    pub fn admin_listen(mut self, addr: Option<SocketAddr>) -> Self {
        self.admin_listen = addr;
        self
    }

    /// Makes Things for fleet provisioning requests (`POST /provisioning/{tenant}/{claim}`)
    /// with `provisioner`; without one they are answered 503.
    pub fn provisioner(mut self, provisioner: Arc<dyn crate::provisioning::Provisioner>) -> Self {
        self.provisioner = Some(provisioner);
        self
    }

    /// Keeps the history of channels with `spec.history` through `history`, and reads it
    /// there (`GET /m/{tenant}/c/{channel}/messages`).
    pub fn history(mut self, history: History) -> Self {
        self.history = history;
        self
    }

    /// Serves `routes` on the admin listener too, beside `/healthz`, `/readyz` and `/metrics`
    /// (`fleetward start` adds `/can-i` there).
    pub fn admin_routes(mut self, routes: axum::Router) -> Self {
        self.admin_routes = Some(routes);
        self
    }

    /// Where the HTTP listener (HTTP publish, MQTT over WebSocket at `/mqtt`, WebSocket
    /// streams) binds, if anywhere.
    pub fn http_listen(mut self, addr: Option<SocketAddr>) -> Self {
        self.http_listen = addr;
        self
    }

    /// The policy sync client's status, whose staleness metrics `/metrics` then shows.
    pub fn sync_status(mut self, status: Arc<SyncStatus>) -> Self {
        self.sync_status = Some(status);
        self
    }

    /// The MQTT front-end's limits.
    pub fn mqtt_config(mut self, config: MqttConfig) -> Self {
        self.mqtt = config;
        self
    }

    /// The most sockets not authenticated yet (`None`: a quarter of the connections, at most
    /// [`DEFAULT_MAX_PENDING`]). When it is full the oldest is closed to make room.
    pub fn max_pending_connections(mut self, max: Option<usize>) -> Self {
        self.max_pending = max;
        self
    }

    /// The HTTP listener's timeouts and request cap.
    pub fn http_limits(mut self, limits: HttpLimits) -> Self {
        self.http_limits = limits;
        self
    }

    /// Origins whose pages may call every tenant's HTTP API (CORS), besides each Tenant's
    /// `spec.web.allowedOrigins`; each as a browser sends it (`https://dash.example.com`).
    pub fn cors_allowed_origins(mut self, origins: Vec<String>) -> Self {
        self.cors_allowed_origins = origins;
        self
    }

    /// Sizes the socket caps below the open-files limit, and the router's session table from
    /// them; logs what it chose.
    fn size_caps(&mut self) -> (usize, usize) {
        let limit = rlimit::Resource::NOFILE.get().ok().map(|(soft, _)| soft);
        let wanted = self.mqtt.max_connections;
        let max = listener::sockets_within(wanted, limit);
        let pending = self
            .max_pending
            .unwrap_or((max / 4).clamp(1, DEFAULT_MAX_PENDING))
            .clamp(1, max);
        if max < wanted {
            tracing::warn!(
                open_files_limit = limit.unwrap_or_default(),
                wanted,
                max_connections = max,
                "--max-connections is above the open-files limit less {} reserved; raise the \
                 limit (ulimit -n, or the container's) to hold more",
                listener::RESERVED_FILES
            );
        }
        tracing::info!(
            open_files_limit = limit.unwrap_or_default(),
            max_connections = max,
            max_pending_connections = pending,
            "socket caps"
        );
        self.mqtt.max_connections = max;
        // Every router link belongs to a counted socket (an MQTT session, a WebSocket stream)
        // and each tenant's are capped by its maxConnections; the rest is room for links the
        // pod opens itself (wills, expiring sessions).
        self.router.max_links = max.saturating_add(max / 8).saturating_add(64);
        (max, pending)
    }

    /// Binds every listener and starts serving.
    pub async fn start(mut self) -> anyhow::Result<RunningDataplane> {
        let (max_sockets, max_pending) = self.size_caps();
        let listener_metrics = Arc::new(ListenerMetrics::default());
        let gate = Arc::new(Gate::new(
            max_sockets,
            max_pending,
            listener_metrics.clone(),
        ));
        // The admin listener has a budget of its own: a flood of the public ports must not
        // keep probes and scrapes out.
        let admin_gate = Arc::new(Gate::new(
            ADMIN_SOCKETS,
            ADMIN_SOCKETS,
            listener_metrics.clone(),
        ));
        let inner =
            Arc::new(RumqttdRouter::start(&self.router).context("starting the message router")?);
        let metrics = Arc::new(Metrics::default());
        let retained = Arc::new(RetainedStore::default());
        let bus = self.start_bus(&inner, &retained, &metrics).await?;
        let shared = self.front_end(inner.clone(), bus.bus, retained, bus.nats_client, &metrics);
        let sessions = match &self.sessions_file {
            None => None,
            Some(path) => Some(restore_sessions(&shared, &inner, path).await),
        };
        let mut tasks = JoinSet::new();
        spawn_background(&mut tasks, &shared);
        // Bound now, accepting once the bus is joined: a client that connects early waits in
        // the backlog instead of being served by a pod that cannot reach the others.
        let mut listeners = Listeners {
            tasks: JoinSet::new(),
            joined: bus.joined.clone(),
        };
        let mqtt_addr = self.serve_mqtt(&mut listeners, &shared, &gate).await?;
        let mqtts_addr = self.serve_mqtts(&mut listeners, &shared, &gate).await?;
        let http_addr = self.serve_http(&mut listeners, &shared, &gate).await?;
        let https_addr = self.serve_https(&mut listeners, &shared, &gate).await?;
        tasks.spawn(crate::ingress::purge_deleted_channels(
            shared.retained.clone(),
            self.policy.clone(),
            bus.retained_purger,
        ));
        tasks.spawn(follow_snapshot_version(
            self.policy.clone(),
            metrics.clone(),
        ));
        let admin_addr = match self.admin_listen {
            None => None,
            Some(addr) => {
                let registry = metrics_registry(
                    &shared,
                    &listener_metrics,
                    vec![gate.clone(), admin_gate.clone()],
                    self.sync_status.clone(),
                );
                let listener = mqtt::bind(addr, "the admin API").await?;
                let addr = listener.local_addr()?;
                tasks.spawn(admin::serve(
                    GatedListener::new(listener, admin_gate.clone(), Listener::Admin),
                    admin_state(&shared, registry, bus.joined.clone()),
                    self.admin_routes.take().unwrap_or_default(),
                ));
                Some(addr)
            }
        };
        Ok(RunningDataplane {
            mqtt_addr,
            mqtts_addr,
            admin_addr,
            http_addr,
            https_addr,
            metrics,
            gate,
            tasks,
            listeners: listeners.tasks,
            shared,
            nats: bus.nats,
            drain: self.drain,
            sessions,
        })
    }

    /// The bus between pods: NATS when configured (other pods' messages and retained ones come
    /// in through it), else none.
    async fn start_bus(
        &self,
        inner: &Arc<RumqttdRouter>,
        retained: &Arc<RetainedStore>,
        metrics: &Arc<Metrics>,
    ) -> anyhow::Result<StartedBus> {
        let Some(config) = &self.nats else {
            return Ok(StartedBus {
                bus: Arc::new(LocalBus),
                nats_client: None,
                retained_purger: None,
                nats: None,
                joined: watch::channel(true).1,
            });
        };
        let store = retained.clone();
        let inbound = Inbound {
            deliver: BusRouter::deliver_to(inner.clone()),
            retain: Arc::new(move |tenant: &str, channel: &str, topic: &str, message| {
                store.set(tenant, channel, topic, message);
            }),
        };
        let mut config = config.clone();
        if let Some(durable) = &mut config.durable {
            // Stored messages are kept as long as a session may be away.
            durable.max_age = self.mqtt.max_session_expiry;
        }
        let bus = NatsBus::start(config, inbound, metrics.clone())
            .await
            .context("starting the NATS bus")?;
        let (joined_tx, joined) = watch::channel(false);
        tokio::spawn(note_joined(bus.client(), joined_tx));
        let bus = Arc::new(bus);
        Ok(StartedBus {
            nats_client: Some(bus.client()),
            retained_purger: Some(bus.retained_purger()),
            bus: bus.clone(),
            nats: Some(bus),
            joined,
        })
    }

    /// The state every adapter shares ([`Ingress`]: the router, the policy and its evaluator's
    /// decision cache, limits, sign-in, the audit trail), under the MQTT front-end's own.
    fn front_end(
        &self,
        inner: Arc<RumqttdRouter>,
        bus: Arc<dyn Bus>,
        retained: Arc<RetainedStore>,
        nats_client: Option<async_nats::Client>,
        metrics: &Arc<Metrics>,
    ) -> Arc<Broker<BusRouter<RumqttdRouter>>> {
        // With a bus, records of channels with history go to the JetStream stream that
        // `fleetward writer` consumes, unless the builder was given a sink.
        let history = match (&self.history.sink, &nats_client) {
            (HistorySink::Off, Some(client)) => History {
                sink: HistorySink::Stream(Publisher::start(
                    async_nats::jetstream::new(client.clone()),
                    PublisherConfig::default(),
                )),
                reader: self.history.reader.clone(),
            },
            _ => self.history.clone(),
        };
        // Persistent sessions live in JetStream where the bus stores QoS 1/2 messages there.
        let durable = match (&self.nats, &nats_client) {
            (
                Some(NatsConfig {
                    durable: Some(config),
                    node_id,
                    ..
                }),
                Some(client),
            ) => Some(Arc::new(
                crate::mqtt::DurableSessions::new(
                    client.clone(),
                    node_id.clone(),
                    config.clone(),
                    self.mqtt.max_inflight,
                )
                .with_interest(bus.durable().map(crate::bus::DurableOut::interest)),
            )),
            _ => None,
        };
        let refresh = RefreshStore::for_bus(nats_client, self.users.tokens.refresh_ttl);
        let users = Arc::new(Users::new(self.users.clone(), refresh));
        let router = BusRouter::new(inner, bus);
        let ingress = Arc::new(
            Ingress::new(
                self.mqtt.clone(),
                router,
                self.policy.clone(),
                metrics.clone(),
            )
            .with_retained(retained)
            .with_users(users)
            .with_pod(&crate::audit::pod_name(self.node_id.as_deref()))
            .with_history(history)
            .with_provisioner(self.provisioner.clone())
            .with_drain_server_reference(self.drain_server_reference.clone()),
        );
        Arc::new(Broker::new(ingress).with_durable(durable))
    }

    /// The plain MQTT listener.
    async fn serve_mqtt(
        &self,
        tasks: &mut Listeners,
        shared: &Arc<Broker<BusRouter<RumqttdRouter>>>,
        gate: &Arc<Gate>,
    ) -> anyhow::Result<SocketAddr> {
        let listener = mqtt::bind(self.mqtt_listen, "MQTT").await?;
        let addr = listener.local_addr()?;
        tasks.spawn(mqtt::accept_loop(
            shared.clone(),
            GatedListener::new(listener, gate.clone(), Listener::Mqtt),
            None,
        ));
        Ok(addr)
    }

    /// The MQTT over TLS listener, if configured.
    async fn serve_mqtts(
        &self,
        tasks: &mut Listeners,
        shared: &Arc<Broker<BusRouter<RumqttdRouter>>>,
        gate: &Arc<Gate>,
    ) -> anyhow::Result<Option<SocketAddr>> {
        let Some((addr, cert, key)) = &self.mqtts else {
            return Ok(None);
        };
        let acceptor = crate::tls::acceptor(cert, key)?;
        let listener = mqtt::bind(*addr, "MQTT over TLS").await?;
        let addr = listener.local_addr()?;
        tasks.spawn(mqtt::accept_loop(
            shared.clone(),
            GatedListener::new(listener, gate.clone(), Listener::Mqtts),
            Some(acceptor),
        ));
        Ok(Some(addr))
    }

    /// The HTTP listener (HTTP publish, WebSocket streams, MQTT over WebSocket, sign-in,
    /// the audit trail), if configured.
    async fn serve_http(
        &self,
        tasks: &mut Listeners,
        shared: &Arc<Broker<BusRouter<RumqttdRouter>>>,
        gate: &Arc<Gate>,
    ) -> anyhow::Result<Option<SocketAddr>> {
        let Some(addr) = self.http_listen else {
            return Ok(None);
        };
        let listener = mqtt::bind(addr, "HTTP and WebSocket").await?;
        let addr = listener.local_addr()?;
        tasks.spawn(web::serve(
            GatedListener::new(listener, gate.clone(), Listener::Http),
            shared.clone(),
            self.http_limits,
            self.cors_allowed_origins.clone(),
            None,
        ));
        Ok(Some(addr))
    }

    /// The HTTPS listener, if configured.
    async fn serve_https(
        &self,
        tasks: &mut Listeners,
        shared: &Arc<Broker<BusRouter<RumqttdRouter>>>,
        gate: &Arc<Gate>,
    ) -> anyhow::Result<Option<SocketAddr>> {
        let Some((addr, cert, key)) = &self.https else {
            return Ok(None);
        };
        let acceptor = crate::tls::acceptor(cert, key)?;
        let listener = mqtt::bind(*addr, "HTTPS and secure WebSocket").await?;
        let addr = listener.local_addr()?;
        tasks.spawn(web::serve(
            GatedListener::new(listener, gate.clone(), Listener::Https),
            shared.clone(),
            self.http_limits,
            self.cors_allowed_origins.clone(),
            Some(acceptor),
        ));
        Ok(Some(addr))
    }
}

/// The bus a dataplane started, and what of NATS the rest of the pod uses.
struct StartedBus {
    bus: Arc<dyn Bus>,
    /// The NATS bus itself, flushed by a drain.
    nats: Option<Arc<NatsBus>>,
    /// Whether the bus has joined NATS once (always, without NATS).
    joined: watch::Receiver<bool>,
    /// Refresh-token families live in NATS with the bus.
    nats_client: Option<async_nats::Client>,
    retained_purger: Option<Arc<dyn Fn(Vec<String>) + Send + Sync>>,
}

/// The public listeners' accept loops, which start accepting once the bus has joined NATS,
/// and which a drain stops first.
struct Listeners {
    tasks: JoinSet<()>,
    joined: watch::Receiver<bool>,
}

impl Listeners {
    fn spawn(&mut self, accept: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut joined = self.joined.clone();
        self.tasks.spawn(async move {
            // A sender gone before the join means the bus stopped: nothing to accept for.
            if joined.wait_for(|joined| *joined).await.is_ok() {
                accept.await;
            }
        });
    }
}

/// Marks the bus joined once its NATS client has been answered by a server (it retries the
/// first connection in the background); readiness and the listeners wait for it.
async fn note_joined(client: async_nats::Client, joined: watch::Sender<bool>) {
    loop {
        let connected = client.connection_state() == async_nats::connection::State::Connected;
        if connected && client.flush().await.is_ok() {
            tracing::info!("joined the NATS bus: ready, and accepting clients");
            let _ = joined.send(true);
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The re-checks of the sessions each policy change concerns, the audit trail's summaries of
/// quiet subjects, its events published on each tenant's audit channel, and the session
/// takeovers other pods announce.
fn spawn_background(tasks: &mut JoinSet<()>, shared: &Arc<Broker<BusRouter<RumqttdRouter>>>) {
    // And the takeovers other pods announce (persistent sessions in JetStream).
    if let Some(takeovers) = shared.follow_takeovers() {
        tasks.spawn(async move {
            let _ = takeovers.await;
        });
    }
    tasks.spawn(crate::ingress::follow_rechecks(
        shared.rechecks.clone(),
        shared.policy.clone(),
        shared.metrics.clone(),
    ));
    tasks.spawn(crate::audit::summarize_every(shared.audit.clone()));
    let publisher = shared.clone();
    tasks.spawn(crate::audit::publish_on_channels(
        shared.audit.clone(),
        move |message| publisher.router.publish(message),
    ));
}

/// The snapshot version metric follows the policy channel.
async fn follow_snapshot_version(mut policy: watch::Receiver<Arc<Snapshot>>, m: Arc<Metrics>) {
    loop {
        let v = policy.borrow_and_update().version();
        m.set_snapshot_version(v);
        if policy.changed().await.is_err() {
            break;
        }
    }
}

/// `/readyz` (the router runs, a policy snapshot is applied) and `/metrics`.
fn admin_state(shared: &Front, registry: Registry, joined: watch::Receiver<bool>) -> AdminState {
    let s1 = shared.clone();
    AdminState {
        ready: Arc::new(move || {
            if !s1.router.is_alive() {
                return Err("the message router stopped".into());
            }
            if s1.drain.phase() != crate::ingress::Phase::Serving {
                return Err("draining: the pod is shutting down".into());
            }
            // Only the first join: a bus outage later does not take the pod out of service.
            if !*joined.borrow() {
                return Err("the NATS bus has not been joined yet".into());
            }
            if s1.snapshot().version() == 0 {
                return Err("no policy snapshot applied yet".into());
            }
            Ok(())
        }),
        metrics: Arc::new(move || crate::metrics::encode(&registry)),
    }
}

/// A started dataplane. Dropping it stops the listeners (live sessions end on their own).
pub struct RunningDataplane {
    /// The plain MQTT listener's address.
    pub mqtt_addr: SocketAddr,
    /// The TLS listener's address, if any.
    pub mqtts_addr: Option<SocketAddr>,
    /// The admin listener's address, if any.
    pub admin_addr: Option<SocketAddr>,
    /// The HTTP listener's address (HTTP publish, `/mqtt`, WebSocket streams), if any.
    pub http_addr: Option<SocketAddr>,
    /// The HTTPS listener's address, if any.
    pub https_addr: Option<SocketAddr>,
    metrics: Arc<Metrics>,
    gate: Arc<Gate>,
    /// Aborted when dropped.
    tasks: JoinSet<()>,
    /// The public listeners' accept loops: stopped first by a drain.
    listeners: JoinSet<()>,
    shared: Front,
    nats: Option<Arc<NatsBus>>,
    drain: DrainConfig,
    sessions: Option<SessionSaver>,
}

/// Writes a dataplane's persistent sessions to its sessions file (`Dataplane::sessions_file`).
#[derive(Clone)]
pub struct SessionSaver {
    shared: Arc<Broker<BusRouter<RumqttdRouter>>>,
    path: PathBuf,
}

impl SessionSaver {
    /// Writes every persistent session whose client is away, with what the router queued for
    /// it, and every waiting will; call it at shutdown once live sessions have ended (a
    /// session still connected is not written). They are taken out of the dataplane.
    pub async fn save(&self) -> anyhow::Result<crate::mqtt::SessionCounts> {
        let counts = self.shared.save_sessions(&self.path).await?;
        tracing::info!(
            file = %self.path.display(),
            sessions = counts.sessions,
            queued_messages = counts.messages,
            wills = counts.wills,
            "saved the persistent sessions for the next start"
        );
        Ok(counts)
    }
}

/// Makes the sessions of the file again, with what was queued for them; what writes them
/// at shutdown.
async fn restore_sessions(
    shared: &Arc<Broker<BusRouter<RumqttdRouter>>>,
    router: &Arc<RumqttdRouter>,
    path: &std::path::Path,
) -> SessionSaver {
    let counts = shared
        .restore_sessions(path, |key, queued| router.queue_offline(key, queued))
        .await;
    if counts != crate::mqtt::SessionCounts::default() {
        tracing::info!(
            file = %path.display(),
            sessions = counts.sessions,
            queued_messages = counts.messages,
            wills = counts.wills,
            expired = counts.expired,
            "restored the persistent sessions saved at the last shutdown"
        );
    }
    SessionSaver {
        shared: shared.clone(),
        path: path.to_owned(),
    }
}

/// Everything `/metrics` shows: the front-end's counters, and what the listeners, sessions,
/// retained store, router and sync client hold, read at scrape time.
fn metrics_registry(
    shared: &Arc<Broker<BusRouter<RumqttdRouter>>>,
    listeners: &ListenerMetrics,
    gates: Vec<Arc<Gate>>,
    sync_status: Option<Arc<SyncStatus>>,
) -> Registry {
    let mut registry = Registry::default();
    shared.metrics.register(&mut registry);
    let s = shared.clone();
    registry.register_collector(AtScrape::new(move |e| {
        let stats = s.cache.stats();
        crate::metrics::encode_decision_cache(e, stats.hits, stats.misses)?;
        s.encode_held(e)?;
        s.retained.encode_metrics(e)?;
        s.history.encode_metrics(e)?;
        crate::metrics::gauge(
            e,
            "fleetward_draining",
            "Whether the pod is draining (shutting down): 1 from SIGTERM on.",
            i64::from(s.drain.phase() != crate::ingress::Phase::Serving),
        )?;
        crate::metrics::counter(
            e,
            "fleetward_drain_sessions_ended",
            "MQTT sessions the pod's drain ended (DISCONNECT 0x8B or 0x9C, or closed for v3).",
            s.drain.sessions_ended(),
        )?;
        crate::metrics::gauge(
            e,
            "fleetward_router_filters",
            "Router filters held for sessions now.",
            s.router.filters(),
        )
    }));
    listeners.register(&mut registry, gates);
    if let Some(status) = sync_status {
        registry.register_collector(Box::new(status));
    }
    registry
}

impl RunningDataplane {
    /// Logs one line per listener.
    pub fn log_listeners(&self) {
        tracing::info!(addr = %self.mqtt_addr, "MQTT listening");
        if let Some(addr) = self.mqtts_addr {
            tracing::info!(%addr, "MQTT over TLS listening");
        }
        if let Some(addr) = self.http_addr {
            tracing::info!(
                %addr,
                "HTTP publish, MQTT over WebSocket (/mqtt) and WebSocket streams listening"
            );
        }
        if let Some(addr) = self.https_addr {
            tracing::info!(%addr, "HTTPS (the HTTP listener's API over TLS) listening");
        }
        if let Some(addr) = self.admin_addr {
            tracing::info!(%addr, "admin API (/healthz, /readyz, /metrics) listening");
        }
    }

    /// The front-end's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Sockets open now on the MQTT, MQTTS and HTTP listeners, and how many of them have not
    /// authenticated yet.
    pub fn sockets(&self) -> (usize, usize) {
        (self.gate.open(), self.gate.pending())
    }

    /// What writes the persistent sessions at shutdown, when a sessions file is configured.
    pub fn session_saver(&self) -> Option<SessionSaver> {
        self.sessions.clone()
    }

    /// Runs until a listener stops.
    pub async fn wait(&mut self) -> anyhow::Result<()> {
        let done = tokio::select! {
            Some(done) = self.tasks.join_next() => done,
            Some(done) = self.listeners.join_next() => done,
            else => return Ok(()),
        };
        done.context("a dataplane listener stopped")?;
        anyhow::bail!("a dataplane listener stopped; see the log above")
    }

    /// Drains the pod (SIGTERM): stops accepting on every listener, stops reading from every
    /// connection, lets what was accepted reach the router, the bus and the history stream,
    /// sends v5 clients DISCONNECT 0x8B (or 0x9C with the server reference), closes v3 clients
    /// and WebSocket streams (1001), and returns within the drain's bound. `/readyz` answers
    /// 503 from the start.
    pub async fn drain(mut self) -> DrainReport {
        self.listeners.abort_all();
        shutdown::drain(&self.shared, self.nats.as_deref(), self.drain).await
    }
}

/// A node id for a pod started without --node-id or POD_NAME: unique per process, so its own
/// messages are still recognised when they come back from the bus.
fn random_node_id() -> String {
    let mut bytes = [0u8; 6];
    // Without randomness, the process id and the time still tell pods apart.
    if getrandom::fill(&mut bytes).is_err() {
        let seed = u64::from(std::process::id()) ^ crate::router::now_ns();
        bytes.copy_from_slice(&seed.to_le_bytes()[..6]);
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("dataplane-{hex}")
}
