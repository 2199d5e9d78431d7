//! Delivering a [`Watcher`] over HTTP, the same way in every block: Server-Sent Events,
//! long-poll and WebSocket.
//!
//! * **Resume**: a client says where it is with the `Last-Event-ID` header (what `EventSource`
//!   sends when it reconnects) or `?cursor=`; a malformed one is a 400 problem ([`resume`]).
//!   Every delivered item carries its cursor (SSE `id:`, JSON `id`).
//! * **Resets**: when changes may have been missed the client gets an item with event `reset`
//!   (see [`crate::watch`]) and should re-read the state before carrying on.
//! * **SSE** ([`sse`]): `text/event-stream`, `event:` = the change's event name, `data:` its
//!   JSON, keep-alive comments every [`Hub::keepalive`] (kept below the HTTP idle timeout).
//! * **Long-poll** ([`poll`]): waits up to `wait_ms` for the first item, returns what is ready
//!   (at most `limit`) and the cursor to send next time.
//! * **WebSocket** ([`websocket`]): one JSON text message per item; a ping every keep-alive;
//!   at most [`WS_SEND_BUFFER`] messages wait for a slow client — beyond that it is closed with
//!   1008 and the reason `slow consumer`, so a client that stops reading never grows the
//!   server's memory. 1001 (`node shutting down`) when the node stops.
//!
//! Every stream ends when the node begins to stop, so draining never waits on a stream.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt as _, StreamExt as _};
use http::HeaderMap;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::problem::{FieldError, Problem};
use crate::watch::{Change, Cursor, Hub, Item, Watcher};

/// Messages that may wait for a WebSocket client before it is dropped as too slow.
pub const WS_SEND_BUFFER: usize = 256;
/// Longest `wait_ms` a long-poll accepts.
pub const MAX_WAIT_MS: u64 = 60_000;

/// One delivered item, as long-poll and WebSocket clients receive it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Delivered {
    /// The cursor to resume after this item.
    pub id: String,
    /// The change's event name, or `reset` (changes may have been missed: re-read the state).
    pub event: String,
    /// What the change is about (a queue, a key); empty for a reset.
    pub subject: String,
    /// The change's payload (`null` for a reset).
    #[schema(value_type = Value)]
    pub data: Box<serde_json::value::RawValue>,
}

impl Delivered {
    fn of(item: &Item, cursor: Cursor) -> Self {
        let null = || serde_json::value::RawValue::from_string("null".into()).expect("null");
        match item {
            Item::Change(c) => Self {
                id: cursor.to_string(),
                event: c.event.clone(),
                subject: c.subject.clone(),
                data: serde_json::value::RawValue::from_string(c.data.clone())
                    .unwrap_or_else(|_| null()),
            },
            Item::Reset { cursor } => Self {
                id: cursor.to_string(),
                event: "reset".into(),
                subject: String::new(),
                data: null(),
            },
        }
    }
}

/// One SSE event as the OpenAPI document describes a `text/event-stream` response: each
/// event's fields (what SSE-aware tools such as schemathesis validate).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SseFrame {
    /// The cursor to resume from (`Last-Event-ID`).
    pub id: Option<String>,
    /// The event name.
    pub event: Option<String>,
    /// The event's JSON, as text.
    pub data: String,
}

/// A long-poll's answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Polled {
    pub items: Vec<Delivered>,
    /// Send it back as `cursor` to continue after these items.
    pub cursor: String,
}

/// Where the client resumes: `Last-Event-ID`, else `?cursor=`; `None`: from now.
pub fn resume(headers: &HeaderMap, cursor: Option<&str>) -> Result<Option<Cursor>, Problem> {
    let (field, raw) = match headers.get("last-event-id") {
        Some(v) => ("Last-Event-ID", v.to_str().unwrap_or("\u{fffd}")),
        None => match cursor {
            Some(c) => ("cursor", c),
            None => return Ok(None),
        },
    };
    if raw.is_empty() {
        return Ok(None);
    }
    raw.parse().map(Some).map_err(|e: String| {
        let why = format!("{e} (send back an `id` this stream gave you)");
        Problem::bad_request(format!("{field}: {why}"))
            .with_errors(vec![FieldError::new(field, why)])
    })
}

/// The next item that passes `keep`, after which `watcher.cursor()` is its cursor.
async fn next_kept(watcher: &mut Watcher, keep: &mut impl FnMut(&Change) -> bool) -> Item {
    loop {
        let item = watcher.next().await;
        match &item {
            Item::Change(c) if !keep(c) => {}
            _ => return item,
        }
    }
}

/// The watcher's items (those `keep` passes) as an SSE response.
pub fn sse(
    hub: &Hub,
    watcher: Watcher,
    keep: impl FnMut(&Change) -> bool + Send + 'static,
) -> Response {
    let stopping = hub.stopping.clone();
    let items =
        futures_util::stream::unfold((watcher, keep), |(mut watcher, mut keep)| async move {
            let item = next_kept(&mut watcher, &mut keep).await;
            let cursor = watcher.cursor().to_string();
            let event = match &item {
                Item::Change(c) => SseEvent::default().event(&c.event).id(cursor).data(&c.data),
                Item::Reset { .. } => SseEvent::default()
                    .event("reset")
                    .id(&cursor)
                    .data(format!("{{\"cursor\":\"{cursor}\"}}")),
            };
            Some((Ok::<_, Infallible>(event), (watcher, keep)))
        })
        .take_until(async move { stopping.wait().await });
    Sse::new(items)
        .keep_alive(KeepAlive::new().interval(hub.keepalive()))
        .into_response()
}

/// Long-poll: waits up to `wait` for the first item `keep` passes, then returns it and what
/// else is ready (at most `limit`), with the cursor to continue from.
pub async fn poll(
    hub: &Hub,
    mut watcher: Watcher,
    wait: Duration,
    limit: usize,
    mut keep: impl FnMut(&Change) -> bool,
) -> Polled {
    let mut items = Vec::new();
    let first = tokio::select! {
        item = next_kept(&mut watcher, &mut keep) => Some(item),
        () = tokio::time::sleep(wait) => None,
        () = hub.stopping.wait() => None,
    };
    if let Some(item) = first {
        items.push(Delivered::of(&item, watcher.cursor()));
        while items.len() < limit.max(1) {
            match watcher.try_next() {
                Some(Item::Change(c)) if !keep(&c) => {}
                Some(item) => items.push(Delivered::of(&item, watcher.cursor())),
                None => break,
            }
        }
    }
    Polled {
        items,
        cursor: watcher.cursor().to_string(),
    }
}

/// Upgrades to a WebSocket that delivers the watcher's items (those `keep` passes).
pub fn websocket(
    upgrade: WebSocketUpgrade,
    hub: Arc<Hub>,
    watcher: Watcher,
    keep: impl FnMut(&Change) -> bool + Send + 'static,
) -> Response {
    upgrade
        .max_message_size(64 * 1024)
        .on_upgrade(move |socket| serve_ws(socket, hub, watcher, keep))
}

const SLOW: u16 = 1008;
const GOING_AWAY: u16 = 1001;

async fn serve_ws(
    socket: WebSocket,
    hub: Arc<Hub>,
    mut watcher: Watcher,
    mut keep: impl FnMut(&Change) -> bool + Send + 'static,
) {
    let (mut sink, mut incoming) = socket.split();
    let (tx, mut rx) = mpsc::channel::<Message>(WS_SEND_BUFFER);
    let (close_tx, close_rx) = tokio::sync::oneshot::channel::<(u16, &'static str)>();
    // The writer: queued messages in order; a close jumps the queue (a client being dropped
    // for reading too slowly would never get to it otherwise), bounded by a timeout.
    let writer = tokio::spawn(async move {
        tokio::pin!(close_rx);
        loop {
            tokio::select! {
                biased;
                close = &mut close_rx => {
                    if let Ok((code, reason)) = close {
                        let frame = CloseFrame { code, reason: reason.into() };
                        let _ = tokio::time::timeout(
                            Duration::from_secs(5),
                            sink.send(Message::Close(Some(frame))),
                        )
                        .await;
                    }
                    return;
                }
                m = rx.recv() => match m {
                    Some(m) => if sink.send(m).await.is_err() { return },
                    None => return,
                },
            }
        }
    });
    let mut ping = tokio::time::interval(hub.keepalive());
    ping.tick().await;
    let close = loop {
        tokio::select! {
            item = next_kept(&mut watcher, &mut keep) => {
                let d = Delivered::of(&item, watcher.cursor());
                let text = serde_json::to_string(&d).unwrap_or_default();
                if tx.try_send(Message::Text(text.into())).is_err() {
                    break Some((SLOW, "slow consumer: too many messages waiting to be sent"));
                }
            }
            _ = ping.tick() => {
                if tx.try_send(Message::Ping(bytes::Bytes::new())).is_err() {
                    break Some((SLOW, "slow consumer: too many messages waiting to be sent"));
                }
            }
            m = incoming.next() => match m {
                Some(Ok(Message::Close(_)) | Err(_)) | None => break None,
                Some(Ok(_)) => {}
            },
            () = hub.stopping.wait() => break Some((GOING_AWAY, "node shutting down")),
        }
    };
    if let Some((code, reason)) = close {
        tracing::debug!(code, reason, "closing WebSocket");
        let _ = close_tx.send((code, reason));
    }
    drop(tx);
    let _ = writer.await;
}

/// A watch route's WebSocket upgrade, if the request asks for one (extract it as is).
pub type Upgrade =
    Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>;

/// The query every watch route takes (besides its own filters).
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WatchParams {
    /// Resume after this cursor (an `id` the stream gave); `Last-Event-ID` takes precedence.
    /// Omitted or empty: from now.
    #[param(pattern = r"^([0-9]{1,20}(-[0-9]{1,20})?)?$")]
    pub cursor: Option<String>,
    /// Long-poll instead of streaming: wait up to this long (0 to 60000 ms) for the first
    /// change, answer JSON `{items, cursor}`.
    #[param(minimum = 0, maximum = 60_000)]
    pub wait_ms: Option<u64>,
    /// Long-poll: at most this many items (1 to 1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// One watch route, three transports: a WebSocket when the request asks to upgrade, a
/// long-poll when it has `wait_ms`, else SSE — each delivering the changes of `topic` that
/// `keep` passes, from where the client says it is.
pub async fn respond(
    hub: &Arc<Hub>,
    topic: &str,
    durable: bool,
    headers: &HeaderMap,
    p: &WatchParams,
    upgrade: Upgrade,
    keep: impl FnMut(&Change) -> bool + Send + 'static,
) -> Result<Response, Problem> {
    let upgrade = match upgrade {
        Ok(ws) => Some(ws),
        Err(_) if !headers.contains_key(http::header::UPGRADE) => None,
        Err(rejection) => return Ok(rejection.into_response()),
    };
    let from = resume(headers, p.cursor.as_deref())?;
    let wait = match p.wait_ms {
        Some(ms) if ms > MAX_WAIT_MS => {
            return Err(Problem::validation(vec![FieldError::new(
                "wait_ms",
                format!("must be 0 to {MAX_WAIT_MS}"),
            )]));
        }
        w => w.map(Duration::from_millis),
    };
    let limit = crate::api::page_limit(p.limit, 100, 1000)?;
    let watcher = hub.watch(topic, durable, from);
    Ok(match (upgrade, wait) {
        (Some(ws), _) => websocket(ws, hub.clone(), watcher, keep),
        (None, Some(wait)) => {
            axum::Json(poll(hub, watcher, wait, limit as usize, keep).await).into_response()
        }
        (None, None) => sse(hub, watcher, keep),
    })
}

/// Declares a block's watch route — `GET <path>` as SSE, long-poll or WebSocket (see
/// [`respond`]) over the topic `topic`, filtered by the optional query field `field` of
/// `filter` (matched against each change's subject) — with its OpenAPI operation. The block's
/// service must have `fn hub(&self) -> &Arc<Hub>`.
#[macro_export]
macro_rules! watch_route {
    (
        $(#[doc = $doc:tt])*
        fn $name:ident, path = $path:tt, tag = $tag:tt, service = $svc:ty, topic = $topic:expr,
        filter = $filter:ty, field = $field:ident, item = $item:tt $(,)?
    ) => {
        $(#[doc = $doc])*
        ///
        /// SSE by default (`text/event-stream`, `id:` the cursor to resume from with
        /// `Last-Event-ID`); a long-poll with `wait_ms`; a WebSocket (one JSON `Delivered` per
        /// change) when the request upgrades. An event named `reset` says changes may have been
        /// missed (the cursor is too old or from another node): re-read the state.
        #[utoipa::path(get, path = $path, tag = $tag,
            params($crate::stream::WatchParams, $filter),
            responses(
                (status = 200, description = $item,
                    content(
                        ($crate::stream::SseFrame = "text/event-stream"),
                        ($crate::stream::Polled = "application/json"),
                    )),
                (status = 101, description = "switched to a WebSocket"),
                (status = 400, body = $crate::Problem, description = "a malformed cursor or `Last-Event-ID`"),
                (status = 422, body = $crate::Problem, description = "`wait_ms` or `limit` out of range"),
            ))]
        pub(crate) async fn $name(
            axum::extract::State(svc): axum::extract::State<std::sync::Arc<$svc>>,
            headers: axum::http::HeaderMap,
            $crate::extract::ApiQuery(p): $crate::extract::ApiQuery<$crate::stream::WatchParams>,
            $crate::extract::ApiQuery(f): $crate::extract::ApiQuery<$filter>,
            upgrade: $crate::stream::Upgrade,
        ) -> Result<axum::response::Response, $crate::Problem> {
            let keep = move |c: &$crate::watch::Change| {
                f.$field.as_ref().is_none_or(|s| *s == c.subject)
            };
            $crate::stream::respond(svc.hub(), $topic, false, &headers, &p, upgrade, keep).await
        }
    };
}
