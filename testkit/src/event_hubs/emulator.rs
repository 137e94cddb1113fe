//! An in-process Azure Event Hubs emulator speaking AMQP 1.0 (on `fe2o3-amqp`'s acceptor), for
//! the Event Hubs source tests.
//!
//! It is a stand-in because no real Event Hubs, nor Microsoft's Event Hubs emulator, can run
//! here (no cloud, no Docker engine). The client that talks to it is the real
//! `azure_messaging_eventhubs` SDK, connected with `.with_custom_endpoint("amqp://127.0.0.1:<port>")`
//! (plain TCP, SASL ANONYMOUS), so the connector's source is exercised end to end: claims-based
//! security, management reads, partition receivers with offset filters, checkpoint resumption.
//!
//! What it answers:
//! - `$cbs` `put-token`: recorded (token type, audience, token, expiration; see
//!   [`EventHubsEmulator::put_tokens`]) and answered `status-code` 202, or 401 when a check set
//!   with [`EventHubsEmulator::check_tokens`] refuses the token (every token is accepted
//!   without one);
//! - `$management` `READ` of `com.microsoft:eventhub` and `com.microsoft:partition`: 200 with
//!   the map body the SDK reads (partition ids, begin/last sequence numbers, offsets, times);
//! - producer links with target `<hub>` (round robin over partitions) or `<hub>/Partitions/<n>`;
//! - consumer links with source `<hub>/ConsumerGroups/<cg>/Partitions/<n>` and the
//!   `apache.org:selector-filter:string` filter on `x-opt-offset`, `x-opt-sequence-number` or
//!   `x-opt-enqueued-time` (`>` or `>=`), e.g. resuming from a checkpoint;
//! - every stored event carries `x-opt-sequence-number` (0, 1, 2, ... per partition),
//!   `x-opt-offset` (the sequence number as a string) and `x-opt-enqueued-time`;
//! - a consumer link with an owner level (`com.microsoft:epoch`) displaces the older one on the
//!   same partition and consumer group, which is detached with `amqp:link:stolen` — how a
//!   processor instance learns at once that another took its partition;
//! - link detaches and session ends are answered (the SDK's `close()` waits for them);
//! - which consumer links are attached to a partition, by link name
//!   ([`EventHubsEmulator::receivers`]), so a test can wait for the receivers to settle.
//!
//! Events stay in memory for the emulator's lifetime, which is the test's: it outlives
//! connector restarts, as a real hub would. Consumer links deliver pre-settled, as fast as the
//! link credit (the SDK's prefetch) allows; consumer groups share the stored events and keep no
//! state of their own (the connector's checkpoint store is what remembers progress).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fe2o3_amqp::acceptor::{
    ConnectionAcceptor, LinkAcceptor, LinkEndpoint, SaslAnonymousMechanism, SessionAcceptor,
};
use fe2o3_amqp::types::messaging::annotations::OwnedKey;
use fe2o3_amqp::types::messaging::{
    AmqpValue, ApplicationProperties, Body, Message, MessageAnnotations, Properties,
};
use fe2o3_amqp::types::primitives::{Array, OrderedMap, SimpleValue, Symbol, Timestamp, Value};
use fe2o3_amqp::{Receiver, Sender};
use tokio::sync::{mpsc, watch};

type Event = Message<Body<Value>>;

struct Partition {
    events: Mutex<Vec<(Event, i64)>>,
    len: watch::Sender<usize>,
    /// Per consumer group, the generation of its newest epoch receiver: a newer one displaces
    /// the older (`amqp:link:stolen`), as Event Hubs does with owner levels.
    epochs: Mutex<HashMap<String, watch::Sender<u64>>>,
    /// The consumer links attached now: link number → link name.
    receivers: Mutex<HashMap<u64, String>>,
}

/// Numbers consumer links, for [`Partition::receivers`].
static NEXT_LINK: AtomicU64 = AtomicU64::new(0);

/// A consumer link's entry in [`Partition::receivers`], removed when the link ends.
struct Attached<'a> {
    partition: &'a Partition,
    link: u64,
}

impl<'a> Attached<'a> {
    fn new(partition: &'a Partition, name: String) -> Self {
        let link = NEXT_LINK.fetch_add(1, Ordering::Relaxed);
        partition.receivers.lock().unwrap().insert(link, name);
        Attached { partition, link }
    }
}

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        self.partition.receivers.lock().unwrap().remove(&self.link);
    }
}

/// One `$cbs` `put-token` request as the emulator received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutToken {
    /// `type`: `jwt` (Azure AD) or `servicebus.windows.net:sastoken` (shared access key).
    pub token_type: String,
    /// `name`: the audience (the entity URL the token is for).
    pub audience: String,
    /// The body: the token itself.
    pub token: String,
    /// `expiration`, Unix milliseconds.
    pub expiration_ms: Option<i64>,
}

type TokenCheck = dyn Fn(&PutToken) -> bool + Send + Sync;

struct Hub {
    name: String,
    partitions: Vec<Partition>,
    created_ms: i64,
    round_robin: AtomicUsize,
    put_tokens: Mutex<Vec<PutToken>>,
    token_check: Mutex<Option<Arc<TokenCheck>>>,
    /// Message ids stored so far: an event sent again (the same id) is stored once.
    message_ids: Mutex<std::collections::HashSet<String>>,
}

/// A running emulator of one event hub.
pub struct EventHubsEmulator {
    /// The loopback port it listens on.
    pub port: u16,
    hub: Arc<Hub>,
    task: tokio::task::JoinHandle<()>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}

impl EventHubsEmulator {
    /// Starts an emulator of hub `name` with `partitions` partitions on a free loopback port.
    pub async fn start(name: &str, partitions: usize) -> EventHubsEmulator {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind the Event Hubs emulator");
        let port = listener.local_addr().unwrap().port();
        let hub = Arc::new(Hub {
            name: name.to_string(),
            partitions: (0..partitions)
                .map(|_| Partition {
                    events: Mutex::new(Vec::new()),
                    len: watch::channel(0).0,
                    epochs: Mutex::new(HashMap::new()),
                    receivers: Mutex::new(HashMap::new()),
                })
                .collect(),
            created_ms: now_ms(),
            round_robin: AtomicUsize::new(0),
            put_tokens: Mutex::new(Vec::new()),
            token_check: Mutex::new(None),
            message_ids: Mutex::new(std::collections::HashSet::new()),
        });
        let h = hub.clone();
        let task = tokio::spawn(async move {
            let acceptor = ConnectionAcceptor::builder()
                .container_id("iomt-eventhubs-emulator")
                .max_frame_size(65536u32)
                .sasl_acceptor(SaslAnonymousMechanism::new())
                .build();
            let acceptor = Arc::new(acceptor);
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let hub = h.clone();
                tokio::spawn(async move {
                    match acceptor.accept(stream).await {
                        Ok(connection) => serve_connection(connection, hub).await,
                        Err(e) => eprintln!("emulator: connection refused: {e:?}"),
                    }
                });
            }
        });
        EventHubsEmulator { port, hub, task }
    }

    /// The custom endpoint to give the SDK.
    pub fn endpoint(&self) -> String {
        format!("amqp://127.0.0.1:{}", self.port)
    }

    /// A connection string for the emulated hub (any key is accepted).
    pub fn connection_string(&self) -> String {
        format!(
            "Endpoint=sb://iomt-emulator.servicebus.windows.net/;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=ZW11bGF0b3I=;EntityPath={}",
            self.hub.name
        )
    }

    /// Every `put-token` request so far, in order.
    pub fn put_tokens(&self) -> Vec<PutToken> {
        self.hub.put_tokens.lock().unwrap().clone()
    }

    /// From now on, a `put-token` whose token `check` refuses is answered 401 (as a hub
    /// answers a token it does not accept), so links needing it cannot be opened.
    pub fn check_tokens(&self, check: impl Fn(&PutToken) -> bool + Send + Sync + 'static) {
        *self.hub.token_check.lock().unwrap() = Some(Arc::new(check));
    }

    /// The hub's partition count.
    pub fn partition_count(&self) -> usize {
        self.hub.partitions.len()
    }

    /// Events stored in partition `p`.
    pub fn len(&self, p: usize) -> usize {
        self.hub.partitions[p].events.lock().unwrap().len()
    }

    /// The names of the consumer links attached to partition `p` now (the SDK names a
    /// receiver's link after its consumer client's instance id), sorted.
    pub fn receivers(&self, p: usize) -> Vec<String> {
        let mut names: Vec<String> = self.hub.partitions[p]
            .receivers
            .lock()
            .unwrap()
            .values()
            .cloned()
            .collect();
        names.sort();
        names
    }

    /// Events stored in every partition.
    pub fn total(&self) -> usize {
        (0..self.hub.partitions.len()).map(|p| self.len(p)).sum()
    }
}

impl Drop for EventHubsEmulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Hub {
    fn enqueue(&self, partition: usize, mut message: Event) {
        let p = &self.partitions[partition];
        let mut events = p.events.lock().unwrap();
        let seq = events.len() as i64;
        let enqueued = now_ms();
        let annotations = message
            .message_annotations
            .get_or_insert_with(|| MessageAnnotations(OrderedMap::new()));
        annotations.0.insert(
            OwnedKey::Symbol(Symbol::from("x-opt-sequence-number")),
            Value::Long(seq),
        );
        annotations.0.insert(
            OwnedKey::Symbol(Symbol::from("x-opt-offset")),
            Value::String(seq.to_string()),
        );
        annotations.0.insert(
            OwnedKey::Symbol(Symbol::from("x-opt-enqueued-time")),
            Value::Timestamp(Timestamp::from_milliseconds(enqueued)),
        );
        events.push((message, enqueued));
        let n = events.len();
        drop(events);
        p.len.send_replace(n);
    }
}

/// `amqps://host/a/b` or `a/b` → `a/b`.
fn path_of(address: &str) -> String {
    let rest = address
        .strip_prefix("amqps://")
        .or_else(|| address.strip_prefix("amqp://"))
        .or_else(|| address.strip_prefix("sb://"));
    match rest {
        Some(r) => r.split_once('/').map(|(_, p)| p).unwrap_or("").to_string(),
        None => address.trim_start_matches('/').to_string(),
    }
}

/// Response channels of the `$cbs` / `$management` nodes, per session.
#[derive(Default)]
struct Nodes {
    channels: HashMap<
        String,
        (
            mpsc::UnboundedSender<Event>,
            Option<mpsc::UnboundedReceiver<Event>>,
        ),
    >,
}

impl Nodes {
    fn sender(&mut self, node: &str) -> mpsc::UnboundedSender<Event> {
        self.channels
            .entry(node.to_string())
            .or_insert_with(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                (tx, Some(rx))
            })
            .0
            .clone()
    }

    fn receiver(&mut self, node: &str) -> Option<mpsc::UnboundedReceiver<Event>> {
        self.sender(node);
        self.channels.get_mut(node).and_then(|c| c.1.take())
    }
}

async fn serve_connection(
    mut connection: fe2o3_amqp::acceptor::ListenerConnectionHandle,
    hub: Arc<Hub>,
) {
    let session_acceptor = SessionAcceptor::new();
    while let Some(incoming) = connection.next_incoming_session().await {
        match session_acceptor
            .accept_incoming_session(incoming, &mut connection)
            .await
        {
            Ok(session) => {
                tokio::spawn(serve_session(session, hub.clone()));
            }
            Err(e) => {
                eprintln!("emulator: session refused: {e:?}");
                break;
            }
        }
    }
    let _ = connection.close().await;
}

async fn serve_session(mut session: fe2o3_amqp::acceptor::ListenerSessionHandle, hub: Arc<Hub>) {
    let link_acceptor = LinkAcceptor::builder()
        .max_message_size(1024u64 * 1024)
        .build();
    let nodes = Arc::new(Mutex::new(Nodes::default()));
    while let Some(attach) = session.next_incoming_attach().await {
        let source = attach
            .source
            .as_ref()
            .and_then(|s| s.address.clone())
            .unwrap_or_default();
        let target = match attach.target.as_deref() {
            Some(fe2o3_amqp::types::messaging::TargetArchetype::Target(t)) => {
                t.address.clone().unwrap_or_default()
            }
            _ => String::new(),
        };
        let filter = attach
            .source
            .as_ref()
            .and_then(|s| s.filter.as_ref())
            .and_then(selector_expression);
        let name = attach.name.clone();
        let epoch = attach
            .properties
            .as_ref()
            .is_some_and(|p| p.iter().any(|(k, _)| k.0 == "com.microsoft:epoch"));
        let link = match link_acceptor
            .accept_incoming_attach(attach, &mut session)
            .await
        {
            Ok(l) => l,
            Err(e) => {
                eprintln!("emulator: link refused: {e:?}");
                continue;
            }
        };
        let hub = hub.clone();
        match link {
            LinkEndpoint::Receiver(receiver) => {
                let path = path_of(&target);
                if path == "$cbs" || path == "$management" {
                    let tx = nodes.lock().unwrap().sender(&path);
                    tokio::spawn(serve_requests(receiver, tx, hub));
                } else {
                    tokio::spawn(serve_producer(receiver, path, hub));
                }
            }
            LinkEndpoint::Sender(sender) => {
                let path = path_of(&source);
                if path == "$cbs" || path == "$management" {
                    let rx = nodes.lock().unwrap().receiver(&path);
                    tokio::spawn(serve_responses(sender, rx));
                } else {
                    tokio::spawn(serve_consumer(sender, path, name, filter, epoch, hub));
                }
            }
        }
    }
    let _ = session.end().await;
}

/// The selector filter's expression, e.g. `amqp.annotation.x-opt-offset > '-1'`.
fn selector_expression(filter: &OrderedMap<Symbol, Value>) -> Option<String> {
    filter.iter().find_map(|(_, v)| match v {
        Value::Described(d) => match &d.value {
            Value::String(s) => Some(s.clone()),
            _ => None,
        },
        Value::String(s) => Some(s.clone()),
        _ => None,
    })
}

/// The index of the first event a consumer with `expression` receives.
fn start_index(expression: Option<&str>, events: &[(Event, i64)]) -> usize {
    let Some(expr) = expression else {
        return events.len(); // no filter: from the end, as `@latest`
    };
    let inclusive = expr.contains(">=");
    let value = expr.split('\'').nth(1).unwrap_or("").trim().to_string();
    if value == "@latest" {
        return events.len();
    }
    if expr.contains("x-opt-enqueued-time") {
        let t: i64 = value.parse().unwrap_or(0);
        return events
            .iter()
            .position(|(_, e)| if inclusive { *e >= t } else { *e > t })
            .unwrap_or(events.len());
    }
    // x-opt-offset and x-opt-sequence-number are the same number here.
    let n: i64 = value.parse().unwrap_or(-1);
    let first = if inclusive { n } else { n + 1 };
    first.clamp(0, events.len() as i64) as usize
}

fn partition_of(path: &str, hub: &Hub) -> Option<usize> {
    let p = path.rsplit_once("/Partitions/")?.1;
    let p: usize = p.parse().ok()?;
    (p < hub.partitions.len()).then_some(p)
}

async fn serve_producer(mut receiver: Receiver, path: String, hub: Arc<Hub>) {
    let fixed = partition_of(&path, &hub);
    // On an error (a remote detach), `recv` has answered it already.
    while let Ok(delivery) = receiver.recv::<Body<Value>>().await {
        accept_unhurried(&receiver, &delivery).await;
        let id = delivery
            .message()
            .properties
            .as_ref()
            .and_then(|p| p.message_id.as_ref())
            .map(|id| format!("{id:?}"));
        if let Some(id) = id {
            if !hub.message_ids.lock().unwrap().insert(id) {
                continue; // sent again after a lost answer: stored already
            }
        }
        let p = fixed.unwrap_or_else(|| {
            hub.round_robin.fetch_add(1, Ordering::Relaxed) % hub.partitions.len()
        });
        hub.enqueue(p, delivery.into_message());
    }
}

/// Accepts a delivery after a short pause. fe2o3-amqp 0.16's sender can miss a disposition
/// that arrives before it has registered the delivery, and then waits for it forever; on
/// loopback an immediate answer is that fast (a real hub, over a network, never is).
async fn accept_unhurried(receiver: &Receiver, delivery: &fe2o3_amqp::Delivery<Body<Value>>) {
    tokio::time::sleep(Duration::from_millis(2)).await;
    let _ = receiver.accept(delivery).await;
}

async fn serve_consumer(
    mut sender: Sender,
    path: String,
    name: String,
    filter: Option<String>,
    epoch: bool,
    hub: Arc<Hub>,
) {
    let Some(p) = partition_of(&path, &hub) else {
        let _ = sender.close().await;
        return;
    };
    let partition = &hub.partitions[p];
    let _attached = Attached::new(partition, name);
    // `<hub>/ConsumerGroups/<cg>/Partitions/<n>`
    let group = path
        .split("/ConsumerGroups/")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or("$Default")
        .to_string();
    let mut displaced = epoch.then(|| {
        let mut epochs = partition.epochs.lock().unwrap();
        let tx = epochs
            .entry(group.clone())
            .or_insert_with(|| watch::channel(0).0);
        let mine = *tx.borrow() + 1;
        tx.send_replace(mine);
        (tx.subscribe(), mine)
    });
    let mut next = {
        let events = partition.events.lock().unwrap();
        start_index(filter.as_deref(), &events)
    };
    let mut len = partition.len.subscribe();
    loop {
        let message = partition
            .events
            .lock()
            .unwrap()
            .get(next)
            .map(|(m, _)| m.clone());
        if let Some((generation, mine)) = &displaced {
            if *generation.borrow() != *mine {
                let error = fe2o3_amqp::types::definitions::Error::new(
                    fe2o3_amqp::types::definitions::LinkError::Stolen,
                    Some(format!("New receiver with higher epoch of '0' is created (partition {p}, consumer group {group})")),
                    None,
                );
                let _ =
                    tokio::time::timeout(Duration::from_secs(2), sender.close_with_error(error))
                        .await;
                return;
            }
        }
        let Some(message) = message else {
            let stolen = async {
                match &mut displaced {
                    Some((generation, _)) => {
                        let _ = generation.changed().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = len.changed() => continue,
                _ = stolen => continue,
                e = sender.on_detach() => return answer_detach(sender, e).await,
            }
        };
        let sendable = fe2o3_amqp::Sendable::builder()
            .message(message)
            .settled(true)
            .build();
        match sender.send(sendable).await {
            Ok(_) => next += 1,
            Err(_) => return, // the link is gone; dropping it detaches what is left
        }
    }
}

/// Answers a remote detach (or close) of a link we send on.
async fn answer_detach(sender: Sender, remote: fe2o3_amqp::link::DetachError) {
    let reply = async {
        match remote {
            fe2o3_amqp::link::DetachError::DetachedByRemote => {
                let _ = sender.detach().await;
            }
            _ => {
                let _ = sender.close().await;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), reply).await;
}

fn app_property(message: &Event, key: &str) -> Option<String> {
    match message.application_properties.as_ref()?.0.get(key)? {
        SimpleValue::String(s) => Some(s.clone()),
        SimpleValue::Symbol(s) => Some(s.0.clone()),
        other => Some(format!("{other:?}")),
    }
}

fn response(request: &Event, status: i32, body: Option<Value>) -> Event {
    let props = Properties {
        correlation_id: request
            .properties
            .as_ref()
            .and_then(|p| p.message_id.clone()),
        ..Default::default()
    };
    let mut ap = OrderedMap::new();
    ap.insert("status-code".to_string(), SimpleValue::Int(status));
    ap.insert(
        "status-description".to_string(),
        SimpleValue::String(if status < 300 { "OK" } else { "Error" }.into()),
    );
    Message {
        header: None,
        delivery_annotations: None,
        message_annotations: None,
        properties: Some(props),
        application_properties: Some(ApplicationProperties(ap)),
        body: match body {
            Some(v) => Body::Value(AmqpValue(v)),
            None => Body::Value(AmqpValue(Value::Null)),
        },
        footer: None,
    }
}

fn map(entries: Vec<(&str, Value)>) -> Value {
    let mut m = OrderedMap::new();
    for (k, v) in entries {
        m.insert(Value::String(k.to_string()), v);
    }
    Value::Map(m)
}

fn answer(request: &Event, hub: &Hub) -> Event {
    let operation = app_property(request, "operation").unwrap_or_default();
    let entity = app_property(request, "type").unwrap_or_default();
    if operation == "put-token" {
        let put = PutToken {
            token_type: entity,
            audience: app_property(request, "name").unwrap_or_default(),
            token: match &request.body {
                Body::Value(AmqpValue(Value::String(t))) => t.clone(),
                other => format!("{other:?}"),
            },
            expiration_ms: request
                .application_properties
                .as_ref()
                .and_then(|p| p.0.get("expiration"))
                .and_then(|v| match v {
                    SimpleValue::Timestamp(t) => Some(t.milliseconds()),
                    _ => None,
                }),
        };
        let check = hub.token_check.lock().unwrap().clone();
        let accepted = check.is_none_or(|c| c(&put));
        hub.put_tokens.lock().unwrap().push(put);
        return response(request, if accepted { 202 } else { 401 }, None);
    }
    if operation != "READ" {
        return response(request, 501, None);
    }
    match entity.as_str() {
        "com.microsoft:eventhub" => response(
            request,
            200,
            Some(map(vec![
                ("name", Value::String(hub.name.clone())),
                (
                    "created_at",
                    Value::Timestamp(Timestamp::from_milliseconds(hub.created_ms)),
                ),
                ("partition_count", Value::Int(hub.partitions.len() as i32)),
                (
                    "partition_ids",
                    Value::Array(Array(
                        (0..hub.partitions.len())
                            .map(|p| Value::String(p.to_string()))
                            .collect(),
                    )),
                ),
            ])),
        ),
        "com.microsoft:partition" => {
            let id = app_property(request, "partition").unwrap_or_default();
            let Some(p) = id
                .parse::<usize>()
                .ok()
                .filter(|p| *p < hub.partitions.len())
            else {
                return response(request, 404, None);
            };
            let events = hub.partitions[p].events.lock().unwrap();
            let last = events.len() as i64 - 1;
            let last_time = events.last().map(|(_, t)| *t).unwrap_or(hub.created_ms);
            response(
                request,
                200,
                Some(map(vec![
                    ("name", Value::String(hub.name.clone())),
                    ("partition", Value::String(id.clone())),
                    ("type", Value::String("com.microsoft:partition".into())),
                    ("begin_sequence_number", Value::Long(0)),
                    ("last_enqueued_sequence_number", Value::Long(last)),
                    ("last_enqueued_sequence_number_epoch", Value::Long(0)),
                    ("last_enqueued_offset", Value::String(last.to_string())),
                    (
                        "last_enqueued_time_utc",
                        Value::Timestamp(Timestamp::from_milliseconds(last_time)),
                    ),
                    ("is_partition_empty", Value::Bool(events.is_empty())),
                ])),
            )
        }
        _ => response(request, 404, None),
    }
}

async fn serve_requests(
    mut receiver: Receiver,
    responses: mpsc::UnboundedSender<Event>,
    hub: Arc<Hub>,
) {
    // On an error (a remote detach), `recv` has answered it already.
    while let Ok(delivery) = receiver.recv::<Body<Value>>().await {
        accept_unhurried(&receiver, &delivery).await;
        let request = delivery.into_message();
        let _ = responses.send(answer(&request, &hub));
    }
}

async fn serve_responses(mut sender: Sender, responses: Option<mpsc::UnboundedReceiver<Event>>) {
    let Some(mut responses) = responses else {
        let _ = sender.close().await;
        return;
    };
    loop {
        let next = tokio::select! {
            r = responses.recv() => r,
            e = sender.on_detach() => return answer_detach(sender, e).await,
        };
        let Some(message) = next else { break };
        if sender.send(message).await.is_err() {
            return;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), sender.close()).await;
}
