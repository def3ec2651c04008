//! The fleet a fault test runs on: the real API server, one operator, NATS with JetStream and
//! three dataplanes; one tenant with a command and a telemetry channel, 106 Things with their
//! grants; and the faults, done to those processes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::ledger::ClientIdx;
use super::load::{Publishing, Role};
use super::mqtt::{Login5, publish_once};
use crate::fleetward::{Dataplane, DataplaneConfig, OPERATOR_NAMESPACE, Operator, http_status};
use crate::{ControlPlane, Kubectl, LogDir, Nats, wait_until};

/// The tenant (and its namespace).
pub const TENANT: &str = "fleet";
/// Devices receiving commands, each subscribed to its own command topic.
pub const DEVICES: usize = 50;
/// Devices publishing telemetry, each to its own topic.
pub const SENSORS: usize = 50;
/// Services publishing the commands, one starting on each pod.
pub const COMMANDERS: usize = 3;
/// Services subscribed to all the telemetry, one starting on each pod.
pub const COLLECTORS: usize = 3;
/// Dataplane pods.
pub const PODS: usize = 3;
/// The PolicySync token.
const TOKEN: &str = "e2e-fault-token";
/// Session expiry of every client: long enough to outlive any fault of a test.
const SESSION_EXPIRY: u32 = 300;
/// A Thing outside the load, publishing to `m/fleet/c/telemetry/probe`.
pub const PROBE: &str = "probe";
/// Its Connection.
pub const PROBE_GRANT: &str = "probe-grant";
/// How long convergence may take.
pub const SETTLE: Duration = Duration::from_secs(120);

/// The processes of a fault test and the tenant's credentials.
pub struct FaultCluster {
    /// etcd and kube-apiserver.
    pub plane: ControlPlane,
    /// kubectl on it.
    pub kubectl: Kubectl,
    /// The bus, with JetStream.
    pub nats: Nats,
    /// The operator (one replica: the leader).
    pub operator: Operator,
    /// The dataplane pods.
    pub dataplanes: Vec<Dataplane>,
    keys: HashMap<String, String>,
    log_dir: PathBuf,
    starts: HashMap<String, u32>,
}

/// Every client's name, in ledger order: devices, collectors, sensors, commanders.
pub fn client_names() -> Vec<String> {
    let mut names: Vec<String> = (0..DEVICES).map(|i| format!("dev-{i:02}")).collect();
    names.extend((0..COLLECTORS).map(|i| format!("col-{i}")));
    names.extend((0..SENSORS).map(|i| format!("sensor-{i:02}")));
    names.extend((0..COMMANDERS).map(|i| format!("cmd-{i}")));
    names
}

fn object(kind: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "fleetward.io/v1alpha1", "kind": kind,
        "metadata": {"name": name, "namespace": TENANT}, "spec": spec,
    })
}

fn grant(name: &str, thing: &str, channel: &str, action: &str, subtopic: Option<&str>) -> Value {
    let mut spec = json!({
        "subject": {"kind": "Thing", "name": thing}, "channel": channel, "actions": [action],
    });
    if let Some(sub) = subtopic {
        spec["subtopics"] = json!({"allow": [sub]});
    }
    object("Connection", name, spec)
}

/// The tenant, its two channels, the Things and one Connection per Thing (devices and sensors
/// limited to their own subtopic).
fn manifests() -> Value {
    let mut items = vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": TENANT}}),
        json!({
            "apiVersion": "fleetward.io/v1alpha1", "kind": "Tenant", "metadata": {"name": TENANT},
            "spec": {"namespace": TENANT, "limits": {
                "maxThings": 2000, "publishRate": 100000, "publishBurst": 100000,
            }},
        }),
    ];
    for channel in ["commands", "telemetry"] {
        items.push(object(
            "Channel",
            channel,
            json!({"maxQos": 1, "retained": false}),
        ));
    }
    for name in client_names() {
        items.push(object("Thing", &name, json!({})));
        let g = format!("{name}-grant");
        items.push(match &name[..3] {
            "dev" => grant(&g, &name, "commands", "subscribe", Some(&name)),
            "col" => grant(&g, &name, "telemetry", "subscribe", None),
            "sen" => grant(&g, &name, "telemetry", "publish", Some(&name)),
            _ => grant(&g, &name, "commands", "publish", None),
        });
    }
    // What the cut-off test revokes while the operator is away.
    items.push(object("Thing", PROBE, json!({})));
    items.push(grant(
        PROBE_GRANT,
        PROBE,
        "telemetry",
        "publish",
        Some(PROBE),
    ));
    list(items)
}

/// A `v1/List` of `items`, for one `kubectl apply`.
pub fn list(items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": "List", "items": items})
}

/// Thing `name` of the tenant with its generated key.
pub fn thing(name: &str) -> Value {
    object("Thing", name, json!({}))
}

/// Connection `name` letting `thing` publish to its own subtopic of the telemetry channel.
pub fn telemetry_grant(name: &str, thing: &str) -> Value {
    grant(name, thing, "telemetry", "publish", Some(thing))
}

impl FaultCluster {
    /// Starts everything and waits until every Thing is enforced on every dataplane.
    pub fn start(logs: &LogDir) -> Result<Self> {
        let plane = ControlPlane::start_with_crds(logs)?;
        let kubectl = plane.kubectl();
        kubectl.run(&["create", "namespace", OPERATOR_NAMESPACE])?;
        let operator = Operator::start("operator-0", plane.kubeconfig(), TOKEN, logs.path())?;
        kubectl.apply(&manifests().to_string())?;
        let nats = Nats::start_jetstream(logs.path())?;
        let config = DataplaneConfig {
            operators: vec![operator.sync_url()],
            sync_token: TOKEN.to_owned(),
            nats_url: Some(nats.url()),
        };
        let dataplanes = (0..PODS)
            .map(|i| {
                let id = format!("dataplane-{i}");
                let state = logs.path().join("state").join(&id);
                Dataplane::start(&id, &state, config.clone(), logs.path())
            })
            .collect::<Result<Vec<_>>>()?;
        let mut cluster = Self {
            plane,
            kubectl,
            nats,
            operator,
            dataplanes,
            keys: HashMap::new(),
            log_dir: logs.path().to_owned(),
            starts: HashMap::new(),
        };
        cluster.wait_enforced()?;
        cluster.keys = cluster.read_keys()?;
        Ok(cluster)
    }

    /// Waits until every Thing of the tenant is `Enforced` (on every dataplane).
    pub fn wait_enforced(&self) -> Result<()> {
        let out = self.kubectl.call(
            &[
                "wait",
                "things",
                "--all",
                "-n",
                TENANT,
                "--for=condition=Enforced",
                &format!("--timeout={}s", SETTLE.as_secs()),
            ],
            None,
        )?;
        if !out.success {
            bail!(
                "the Things were not all Enforced within {SETTLE:?}: {}",
                out.stderr
            );
        }
        Ok(())
    }

    /// Reads the keys again (after Things were added).
    pub fn refresh_keys(&mut self) -> Result<()> {
        self.keys = self.read_keys()?;
        Ok(())
    }

    /// How Thing `name` signs in for a probe: a clean session.
    pub fn login(&self, name: &str) -> Result<Login5> {
        Ok(Login5 {
            client_id: format!("{name}-probe"),
            username: format!("{TENANT}/{name}"),
            password: self
                .keys
                .get(name)
                .with_context(|| format!("no key read for {name}"))?
                .clone(),
            session_expiry: 0,
            clean_start: true,
        })
    }

    /// Thing `name` publishes once to the telemetry subtopic `subtopic` on every dataplane; the
    /// reason code each answered with (0 accepted, 0x87 not authorized, 0x86 unknown thing).
    pub fn probe(&self, name: &str, subtopic: &str) -> Result<Vec<u8>> {
        let login = self.login(name).unwrap_or(Login5 {
            client_id: format!("{name}-probe"),
            username: format!("{TENANT}/{name}"),
            password: "not-a-key".to_owned(),
            session_expiry: 0,
            clean_start: true,
        });
        let topic = format!("m/{TENANT}/c/telemetry/{subtopic}");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("start a runtime for a probe")?;
        self.pods()
            .into_iter()
            .map(|addr| runtime.block_on(publish_once(addr, &login, &topic)))
            .collect()
    }

    /// Each Thing's key, from the Secrets the operator generated.
    fn read_keys(&self) -> Result<HashMap<String, String>> {
        let template = r#"{{range .items}}{{if .data.key}}{{.metadata.name}} {{.data.key | base64decode}}{{"\n"}}{{end}}{{end}}"#;
        let text = self.kubectl.run(&[
            "get",
            "secrets",
            "-n",
            TENANT,
            "-o",
            &format!("go-template={template}"),
        ])?;
        let keys: HashMap<String, String> = text
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter_map(|(secret, key)| {
                Some((
                    secret.strip_suffix("-credentials")?.to_owned(),
                    key.to_owned(),
                ))
            })
            .collect();
        if let Some(missing) = client_names().into_iter().find(|n| !keys.contains_key(n)) {
            bail!("no key in the Secret {missing}-credentials");
        }
        Ok(keys)
    }

    /// The dataplanes' MQTT listeners.
    pub fn pods(&self) -> Vec<SocketAddr> {
        self.dataplanes.iter().map(|d| d.mqtt_addr).collect()
    }

    /// The load's clients: devices receiving and sensors publishing, `rate` messages a second
    /// each (the commanders send each device `rate` commands a second).
    pub fn roles(&self, rate: f64) -> Result<Vec<Role>> {
        let names = client_names();
        let idx = |n: &str| -> Result<ClientIdx> {
            names
                .iter()
                .position(|x| x == n)
                .context("a client of the load")
        };
        let collectors: Arc<[ClientIdx]> = (0..COLLECTORS)
            .map(|i| idx(&format!("col-{i}")))
            .collect::<Result<Vec<_>>>()?
            .into();
        let every = Duration::from_secs_f64(1.0 / rate);
        let mut roles = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let login = Login5 {
                client_id: name.clone(),
                username: format!("{TENANT}/{name}"),
                password: self
                    .keys
                    .get(name)
                    .context("a key for every client")?
                    .clone(),
                session_expiry: SESSION_EXPIRY,
                clean_start: false,
            };
            let (mut subscribe, mut publish) = (None, None);
            match &name[..3] {
                "dev" => subscribe = Some(format!("m/{TENANT}/c/commands/{name}")),
                "col" => subscribe = Some(format!("m/{TENANT}/c/telemetry/#")),
                "sen" => {
                    let topic = format!("m/{TENANT}/c/telemetry/{name}");
                    publish = Some(Publishing {
                        topics: vec![(topic, collectors.clone())],
                        every,
                    });
                }
                _ => {
                    let c: usize = name[4..].parse().context("a commander's number")?;
                    let topics: Vec<_> = (0..DEVICES)
                        .filter(|d| d % COMMANDERS == c)
                        .map(|d| {
                            let dev = format!("dev-{d:02}");
                            let to: Arc<[ClientIdx]> = Arc::from(vec![idx(&dev)?]);
                            Ok((format!("m/{TENANT}/c/commands/{dev}"), to))
                        })
                        .collect::<Result<_>>()?;
                    let n = topics.len() as f64;
                    publish = Some(Publishing {
                        topics,
                        every: Duration::from_secs_f64(1.0 / (rate * n)),
                    });
                }
            }
            roles.push(Role {
                idx: i,
                login,
                subscribe,
                publish,
                first_pod: i % PODS,
            });
        }
        Ok(roles)
    }

    fn attempt(&mut self, name: &str) -> u32 {
        let n = self.starts.entry(name.to_owned()).or_insert(1);
        *n += 1;
        *n
    }

    /// `kill -9` of dataplane `i`.
    pub fn kill_dataplane(&mut self, i: usize) -> Result<()> {
        self.dataplanes[i].process.kill().map(|_| ())
    }

    /// SIGTERM to dataplane `i`, waiting for it to exit (SIGKILL after the harness's grace).
    pub fn terminate_dataplane(&mut self, i: usize) -> Result<std::process::ExitStatus> {
        self.dataplanes[i].terminate()
    }

    /// Starts dataplane `i` again on its ports and state, and waits until ready.
    pub fn start_dataplane(&mut self, i: usize) -> Result<()> {
        let attempt = self.attempt(&format!("dataplane-{i}"));
        let log_dir = self.log_dir.clone();
        self.dataplanes[i].start_again(&log_dir, attempt)
    }

    /// `kill -9` of the operator.
    pub fn kill_operator(&mut self) -> Result<()> {
        self.operator.process.kill().map(|_| ())
    }

    /// A new operator replica on the killed one's listeners (the dataplanes' `--operator`),
    /// waiting until ready; returns when it became ready.
    pub fn start_operator(&mut self) -> Result<Instant> {
        let n = self.attempt("operator");
        let (sync, admin) = (self.operator.sync_addr, self.operator.admin_addr);
        let id = format!("operator-{}", n - 1);
        self.operator = Operator::launch(
            &id,
            self.plane.kubeconfig(),
            TOKEN,
            &self.log_dir,
            sync,
            admin,
        )?;
        wait_until(&format!("{id} ready"), SETTLE, || {
            if !self.operator.process.is_running() {
                bail!(
                    "{id} exited; see {}",
                    self.operator.process.log_path().display()
                );
            }
            Ok(http_status(admin, "/readyz").is_ok_and(|s| s == 200))
        })?;
        Ok(Instant::now())
    }
}
