//! Fixtures of the HTTP and WebSocket tests: a dataplane with its HTTP listener, curl, and a
//! tokio-tungstenite WebSocket client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use fleetward_dataplane::{Dataplane, History, MqttConfig, RunningDataplane};
use fleetward_policy::{Resources, Snapshot};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::common::{key, resources, snapshot};

pub struct Adapters {
    pub policy: watch::Sender<Arc<Snapshot>>,
    pub dataplane: RunningDataplane,
    pub mqtt: SocketAddr,
    pub http: SocketAddr,
    version: u64,
}

impl Adapters {
    pub async fn start() -> Self {
        Self::start_with(resources()).await
    }

    pub async fn start_with(resources: Resources) -> Self {
        Self::start_with_cors(resources, &[]).await
    }

    /// With `--cors-allowed-origins` set to `origins`.
    pub async fn start_with_cors(resources: Resources, origins: &[&str]) -> Self {
        Self::start_full(resources, origins, History::default()).await
    }

    /// Keeping the history of channels that ask for it through `history`.
    pub async fn start_with_history(resources: Resources, history: History) -> Self {
        Self::start_full(resources, &[], history).await
    }

    async fn start_full(resources: Resources, origins: &[&str], history: History) -> Self {
        let (policy, rx) = watch::channel(snapshot(1, resources));
        let dataplane = Dataplane::new(rx)
            .history(history)
            .mqtt_listen(SocketAddr::from(([127, 0, 0, 1], 0)))
            .http_listen(Some(SocketAddr::from(([127, 0, 0, 1], 0))))
            .mqtt_config(MqttConfig::default())
            .cors_allowed_origins(origins.iter().map(|o| (*o).to_owned()).collect())
            .start()
            .await
            .expect("dataplane starts");
        Self {
            mqtt: dataplane.mqtt_addr,
            http: dataplane.http_addr.expect("an HTTP listener"),
            policy,
            dataplane,
            version: 1,
        }
    }

    pub fn apply(&mut self, resources: Resources) {
        self.version += 1;
        self.policy.send_replace(snapshot(self.version, resources));
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.http)
    }
}

/// What curl saw: status, headers (lower-case names) and body.
#[derive(Debug)]
pub struct Curl {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Curl {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("a JSON body ({e}): {self:?}"))
    }
}

/// Runs curl with `args` (the URL among them) and parses status, headers and body.
pub async fn curl(args: &[&str]) -> Curl {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-i", "--max-time", "10"])
        .args(args)
        .output()
        .await
        .expect("curl runs (apt-get install curl)");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Curl {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// Publishes `body` as `text/plain` over HTTP as thing `tenant/thing`, on `path` (and query).
pub async fn publish_text(
    fx: &Adapters,
    tenant: &str,
    thing: &str,
    path: &str,
    body: &str,
) -> Curl {
    curl(&[
        "-H",
        &thing_auth(tenant, thing),
        "-H",
        "Content-Type: text/plain",
        "--data-binary",
        body,
        &fx.url(path),
    ])
    .await
}

/// `Authorization: Thing <key>` for a thing.
pub fn thing_auth(tenant: &str, thing: &str) -> String {
    format!("Authorization: Thing {}", key(tenant, thing))
}

/// curl's `-u` value for HTTP Basic.
pub fn basic_user(tenant: &str, thing: &str) -> String {
    format!("{tenant}/{thing}:{}", key(tenant, thing))
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How a WebSocket client presents credentials.
pub enum WsAuth<'a> {
    None,
    Basic(&'a str, &'a str),
    /// The browser way: the `fleetward.auth.<base64url>` subprotocol.
    Subprotocol(&'a str, &'a str),
}

/// Opens a WebSocket; `Err` carries the HTTP status of a refused handshake.
pub async fn ws_connect(url: &str, auth: WsAuth<'_>) -> Result<(Ws, Option<String>), u16> {
    ws_connect_from(url, auth, None).await
}

/// Opens a WebSocket as a page of `origin` would (a browser sends `Origin` on every
/// handshake).
pub async fn ws_connect_from(
    url: &str,
    auth: WsAuth<'_>,
    origin: Option<&str>,
) -> Result<(Ws, Option<String>), u16> {
    let mut request = url.into_client_request().expect("a WebSocket URL");
    let headers = request.headers_mut();
    if let Some(origin) = origin {
        headers.insert("origin", HeaderValue::from_str(origin).expect("header"));
    }
    match auth {
        WsAuth::None => {}
        WsAuth::Basic(t, th) => {
            let v = base64::engine::general_purpose::STANDARD.encode(basic_user(t, th));
            headers.insert(
                "authorization",
                HeaderValue::from_str(&format!("Basic {v}")).expect("header"),
            );
        }
        WsAuth::Subprotocol(t, th) => {
            let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(basic_user(t, th));
            headers.insert(
                "sec-websocket-protocol",
                HeaderValue::from_str(&format!("fleetward.v1, fleetward.auth.{token}"))
                    .expect("header"),
            );
        }
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, response)) => {
            let protocol = response
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            Ok((ws, protocol))
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(e) => panic!("WebSocket handshake failed: {e}"),
    }
}

/// What the next frame within `wait` was.
#[derive(Debug)]
pub enum Frame {
    Json(serde_json::Value),
    Closed(Option<(u16, String)>),
    Nothing,
}

pub async fn next_frame(ws: &mut Ws, wait: Duration) -> Frame {
    let until = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(until, ws.next()).await {
            Err(_) => return Frame::Nothing,
            Ok(None) | Ok(Some(Err(_))) => return Frame::Closed(None),
            Ok(Some(Ok(WsMessage::Text(t)))) => {
                return Frame::Json(serde_json::from_str(t.as_str()).expect("a JSON frame"));
            }
            Ok(Some(Ok(WsMessage::Close(c)))) => {
                return Frame::Closed(c.map(|c| (u16::from(c.code), c.reason.to_string())));
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// The next JSON frame, or a panic saying what came instead.
pub async fn next_json(ws: &mut Ws, wait: Duration) -> serde_json::Value {
    match next_frame(ws, wait).await {
        Frame::Json(v) => v,
        other => panic!("expected a JSON frame, got {other:?}"),
    }
}

pub async fn send_json(ws: &mut Ws, v: serde_json::Value) {
    ws.send(WsMessage::Text(v.to_string().into()))
        .await
        .expect("frame sent");
}
