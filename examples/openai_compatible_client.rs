//! Implementing `ModelClient` for an OpenAI-compatible chat-completions API.
//!
//! downshift performs no network I/O: you bring the HTTP client (reqwest, hyper...), here behind a
//! small `HttpTransport` trait. Shown: the request from `ModelRequest`, the deadline as a timeout,
//! the answer, usage and headers back, every failure classified, and an engine-fitted
//! `AgentState` (`ModelRequest::context`) rendered as chat messages; a canned transport replays real
//! provider responses through an `Engine` over `examples/policies`. Run it with
//! `cargo run --example openai_compatible_client`.

use std::{collections::HashMap, io::ErrorKind, sync::Arc, time::Duration};

use async_trait::async_trait;
use downshift::checkpoint::{AgentState, Message, Role};
use downshift::engine::{
    Call, CallResult, Chunk, ChunkStream, Engine, FinishReason, ModelClient, ModelError,
    ModelRequest, ModelResponse, StreamEvent, TokenUsage,
};
use downshift::policy::PolicySet;
use downshift::{Clock, Endpoint, OutcomeClass, SystemClock, classify_http, classify_stream_event};
use downshift::{classify_connection_failure as connection, classify_transport_timeout as timeout};
use futures::StreamExt;
use parking_lot::Mutex;
use serde_json::{Value, json};

/// An HTTP response as any HTTP client returns it: status, headers, body.
type HttpResponse = (u16, Vec<(String, String)>, Vec<u8>);
type Request = ModelRequest<Value>;
const JSON: (&str, &str) = ("content-type", "application/json");

/// All the client needs from an HTTP library. `timeout` bounds the whole exchange; an `Err` is a
/// failure before any response (`TimedOut`, or a refused connection, TLS, DNS...).
#[async_trait]
trait HttpTransport: Send + Sync {
    async fn post(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
        timeout: Option<Duration>,
    ) -> std::io::Result<HttpResponse>;
}

/// A `ModelClient` for the catalog's OpenAI-compatible endpoints. Its output is the answer's text.
struct OpenAiCompatible<T> {
    transport: T,
    /// Catalog endpoint id → chat-completions URL.
    urls: HashMap<String, String>,
    api_key: String,
    clock: Arc<dyn Clock>,
}

impl<T: HttpTransport> OpenAiCompatible<T> {
    /// Sends one request; every failure comes back as a classified `ModelError`.
    async fn send(&self, req: &Request, stream: bool) -> Result<HttpResponse, ModelError> {
        let url = self.urls.get(req.endpoint.as_str());
        let url = url.ok_or_else(|| ModelError::of(OutcomeClass::BadRequest, "no URL"))?;
        let mut body = req.payload.clone();
        if let Some(o) = body.as_object_mut() {
            o.insert("model".into(), json!(req.model));
            // An agent state (fitted to this endpoint by the engine) replaces the payload's messages.
            if let Some(state) = &req.context {
                o.insert("messages".into(), chat_messages(state));
                if !state.tools.is_empty() {
                    o.insert("tools".into(), chat_tools(state));
                }
                if state.json_mode {
                    o.insert("response_format".into(), json!({"type": "json_object"}));
                }
            }
            if stream {
                o.insert("stream".into(), json!(true));
                o.insert("stream_options".into(), json!({"include_usage": true}));
            }
            // Continuing another endpoint's cut answer: the partial text opens the reply.
            if let (Some(t), Some(Value::Array(m))) = (&req.continue_from, o.get_mut("messages")) {
                m.push(json!({"role": "assistant", "content": t}));
            }
        }
        // The deadline is absolute: the provider should stop when the engine stops waiting.
        let left = req.deadline.map(|d| d.duration_since(self.clock.now()));
        let auth = format!("Bearer {}", self.api_key);
        let headers = [("authorization", auth.as_str()), JSON];
        let body = serde_json::to_vec(&body).unwrap_or_default();
        let sent = self.transport.post(url, &headers, body, left).await;
        let (status, headers, body) = sent.map_err(|e| match e.kind() {
            ErrorKind::TimedOut => ModelError::classified(timeout(), e.to_string()),
            _ => ModelError::classified(connection(), e.to_string()),
        })?;
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (&k[..], &v[..])).collect();
        // Error statuses, and (when the body is whole) an error body sent with a 200. A stream's
        // body has not arrived yet: its errors come as events (see `call_stream`).
        let whole = if stream { &[][..] } else { &body[..] };
        if classify_http(status, &h, whole).class != OutcomeClass::Ok {
            return Err(ModelError::from_http(status, &h, &body));
        }
        Ok((status, headers, body))
    }
}

/// The provider-neutral state as OpenAI chat messages: system messages first, then the goal,
/// plan, findings and rolling summary as one more system message, then the conversation with
/// tool calls and results paired by id.
fn chat_messages(state: &AgentState) -> Value {
    let mut out: Vec<Value> = state
        .messages
        .iter()
        .filter(|m| m.role == Role::System)
        .map(|m| json!({"role": "system", "content": m.content}))
        .collect();
    let mut brief = format!("Goal: {}", state.goal);
    if let Some(step) = &state.current_step {
        brief.push_str(&format!("\nCurrent step: {}", step.description));
    }
    for f in &state.findings {
        brief.push_str(&format!("\nFinding: {f}"));
    }
    if let Some(s) = &state.summary {
        brief.push_str(&format!("\nSummary of earlier conversation: {}", s.text));
    }
    out.push(json!({"role": "system", "content": brief}));
    out.extend(
        state
            .messages
            .iter()
            .filter(|m| m.role != Role::System)
            .map(chat_message),
    );
    Value::Array(out)
}

fn chat_message(m: &Message) -> Value {
    match m.role {
        Role::Tool => json!({"role": "tool", "tool_call_id": m.tool_call_id, "content": m.content}),
        Role::Assistant if !m.tool_calls.is_empty() => {
            let calls: Vec<Value> = m
                .tool_calls
                .iter()
                .map(|c| {
                    json!({"id": c.id, "type": "function",
                "function": {"name": c.name, "arguments": c.arguments.to_string()}})
                })
                .collect();
            json!({"role": "assistant", "content": null, "tool_calls": calls})
        }
        Role::Assistant => json!({"role": "assistant", "content": m.content}),
        _ => json!({"role": "user", "content": m.content}),
    }
}

fn chat_tools(state: &AgentState) -> Value {
    state
        .tools
        .iter()
        .map(|t| {
            json!({"type": "function", "function":
        {"name": t.name, "description": t.description, "parameters": t.parameters}})
        })
        .collect()
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer)?.as_str()
}

fn usage_of(v: &Value) -> Option<TokenUsage> {
    let tokens = |k: &str| v.pointer(&format!("/usage/{k}"))?.as_u64();
    Some(TokenUsage {
        input_tokens: tokens("prompt_tokens")?,
        output_tokens: tokens("completion_tokens")?,
    })
}

#[async_trait]
impl<T: HttpTransport> ModelClient<Value, String> for OpenAiCompatible<T> {
    async fn call(&self, req: Request) -> Result<ModelResponse<String>, ModelError> {
        let (_, headers, body) = self.send(&req, false).await?;
        let v: Value = serde_json::from_slice(&body).map_err(|e| {
            ModelError::of(OutcomeClass::ServerError, format!("unreadable body: {e}"))
        })?;
        let text = str_at(&v, "/choices/0/message/content");
        Ok(ModelResponse {
            output: text.unwrap_or_default().into(),
            usage: usage_of(&v).unwrap_or_default(),
            headers, // passed through to the caller in `Completed::response`
        })
    }

    /// The answer's text: lets the engine write summaries when it fits a context to a smaller
    /// window, and diff replayed steps.
    fn output_text(&self, output: &String) -> Option<String> {
        Some(output.clone())
    }

    /// A sketch: the canned transport hands over the whole `text/event-stream` body at once; a
    /// real client maps `sse_chunk` over the body's lines as they arrive.
    async fn call_stream(&self, req: Request) -> Result<ChunkStream<String>, ModelError> {
        let (_, _, body) = self.send(&req, true).await?;
        let text = String::from_utf8_lossy(&body);
        let data = text.lines().filter_map(|l| l.strip_prefix("data:"));
        let data = data.map(str::trim).take_while(|&d| d != "[DONE]");
        let mut chunks: Vec<_> = data.map(sse_chunk).collect();
        if let Some(failed) = chunks.iter().position(Result::is_err) {
            chunks.truncate(failed + 1); // a stream ends at its first failure
        }
        Ok(futures::stream::iter(chunks).boxed())
    }
}

/// One `data:` event of an OpenAI-compatible stream.
fn sse_chunk(data: &str) -> Result<Chunk<String>, ModelError> {
    // An error event after the 200 (overloaded, server error, content filter).
    if let Some(c) = classify_stream_event(data.as_bytes()) {
        return Err(ModelError::classified(c, "error event mid-stream"));
    }
    let garbled = |_| ModelError::classified(connection(), "garbled event");
    let v: Value = serde_json::from_str(data).map_err(garbled)?;
    let mut chunk = Chunk::delta(str_at(&v, "/choices/0/delta/content").unwrap_or_default());
    if let Some(f) = str_at(&v, "/choices/0/finish_reason") {
        chunk = chunk.finished(FinishReason::parse(f));
    }
    if let Some(u) = usage_of(&v) {
        chunk = chunk.with_usage(u);
    }
    Ok(chunk)
}

/// A 200 answer; the canned transport puts the requested model in it.
const OK: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from MODEL"},"finish_reason":"stop"}],"usage":{"prompt_tokens":912,"completion_tokens":41,"total_tokens":953}}"#;
/// OpenAI's answer to a request longer than the model's context window.
const TOO_LONG: &str = r#"{"error":{"message":"This model's maximum context length is 200000 tokens. However, your messages resulted in 231012 tokens. Please reduce the length of the messages.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;
/// OpenAI's rate limit, with its headers.
const THROTTLED: &str = r#"{"error":{"message":"Rate limit reached for requests per min (RPM): Limit 10000, Used 10000, Requested 1. Please try again in 20s.","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
const THROTTLED_HEADERS: Headers = &[
    ("retry-after", "20"),
    ("x-ratelimit-remaining-requests", "0"),
    ("x-ratelimit-reset-requests", "20s"),
    ("x-ratelimit-remaining-tokens", "1480000"),
    ("x-ratelimit-reset-tokens", "15.6s"),
];
/// A stream that completes (the usage event follows the finish), and one cut by an error event.
const SSE_OK: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"Fresh bread, \"}}]}\n\n\
    data: {\"choices\":[{\"delta\":{\"content\":\"every morning.\"},\"finish_reason\":\"stop\"}]}\n\n\
    data: {\"choices\":[],\"usage\":{\"prompt_tokens\":40,\"completion_tokens\":6}}\n\ndata: [DONE]\n\n";
const SSE_CUT: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"Fresh bread, \"}}]}\n\n\
    data: {\"error\":{\"message\":\"The server had an error processing your request.\",\"type\":\"server_error\"}}\n\n";

/// Scripted responses: a request takes the first one scripted for its endpoint (`None`: any
/// endpoint), as (endpoint, status, headers, body); with none left, a 200.
type Scripted = (Option<&'static str>, u16, Headers, &'static str);
type Headers = &'static [(&'static str, &'static str)];

#[derive(Default)]
struct Canned {
    script: Mutex<Vec<Scripted>>,
    requests: Mutex<usize>,
}

impl Canned {
    fn then(&self, scripted: Scripted) {
        self.script.lock().push(scripted);
    }
}

#[async_trait]
impl HttpTransport for Arc<Canned> {
    async fn post(
        &self,
        url: &str,
        _: &[(&str, &str)],
        body: Vec<u8>,
        _: Option<Duration>,
    ) -> std::io::Result<HttpResponse> {
        *self.requests.lock() += 1;
        let mut script = self.script.lock();
        let mine = |s: &Scripted| s.0.is_none_or(|e| url.contains(&format!("//{e}/")));
        let (status, headers, body) = match script.iter().position(mine) {
            Some(i) => {
                let (_, status, headers, body) = script.remove(i);
                (status, headers, body.to_string())
            }
            None => {
                let req: Value = serde_json::from_slice(&body).unwrap_or_default();
                let model = str_at(&req, "/model").unwrap_or("?");
                let stream = req["stream"] == json!(true);
                let ok = OK.replace("MODEL", model);
                let body = if stream { SSE_OK.into() } else { ok };
                (200, &[][..], body)
            }
        };
        let headers = headers.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Ok((status, headers.collect(), body.into_bytes()))
    }
}

fn report(what: &str, r: &CallResult<String>) {
    println!("\n== {what}");
    match r {
        CallResult::Completed(c) => {
            let (s, n) = (&c.served_by, c.attempts);
            println!("{:?}, {n} attempt(s)", c.response.output);
            println!("by tier {} `{}` ({})", s.tier, s.tier_name, s.endpoint);
            for (k, v) in c.headers() {
                println!("  {k}: {v}"); // what a gateway would add to its response
            }
        }
        CallResult::Rejected(rej) => println!("rejected ({:?}): {}", rej.kind, rej.message),
        other => println!("{}", other.outcome()),
    }
}

fn show(event: StreamEvent<String>) {
    match event {
        StreamEvent::Chunk(c) if c.text.is_empty() => {}
        StreamEvent::Chunk(c) => println!("  chunk {:?}", c.text),
        StreamEvent::Switched { to, .. } => println!("  continued on {}", to.endpoint),
        StreamEvent::End(end) => {
            let by: Vec<_> = end.segments.iter().map(|s| &s.served_by.endpoint).collect();
            let (outcome, partial) = (end.outcome_name(), end.partial);
            println!("  {outcome}, partial: {partial}, by {by:?}");
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let set = PolicySet::load(&[concat!(env!("CARGO_MANIFEST_DIR"), "/examples/policies")])?;
    let url = |e: &Endpoint| {
        (
            e.id.to_string(),
            format!("https://{}/v1/chat/completions", e.id),
        )
    };
    let urls = set.catalog().endpoints().iter().map(url).collect();
    let canned = Arc::new(Canned::default());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let client = OpenAiCompatible {
        transport: Arc::clone(&canned),
        urls,
        api_key: "sk-example".into(),
        clock: clock.clone(),
    };
    // NoSleep (the default): the client enforces the deadline with its HTTP timeout. Under Tokio,
    // `.sleeper(Arc::new(TokioSleeper))` (feature `tokio`) also races every call against it.
    let builder = Engine::builder(set, Arc::new(client)).clock(clock);
    let engine: Engine<Value, String> = builder.build()?;
    let ask = |text: &str| json!({"messages": [{"role": "user", "content": text}]});
    let copy = |text: &str| Call::new("marketing-agency", "copywriting", ask(text)).session("s-1");

    futures::executor::block_on(async {
        let r = engine.call(copy("A tagline")).await;
        report("healthy: the primary answers", &r);

        canned.then((Some("frontier-vendor-eu"), 400, &[], TOO_LONG));
        *canned.requests.lock() = 0;
        let r = engine.call(copy("<900 pages>")).await;
        report("a request too long for any model", &r);
        let sent = *canned.requests.lock();
        println!("HTTP requests sent: {sent} (a request error is never retried elsewhere)");

        for ep in ["frontier-vendor-eu", "frontier-vendor-us"] {
            canned.then((Some(ep), 429, THROTTLED_HEADERS, THROTTLED));
        }
        let r = engine.call(copy("Subject lines")).await;
        report("the vendor throttles (429, retry-after 20s)", &r);
        let r = engine.call(copy("One more")).await;
        report("the next call skips the throttled vendor", &r);

        // An agent session: the engine sizes it, checks tool support, fits it to the endpoint,
        // and the client renders it (see `chat_messages`).
        let mut state = AgentState::new("Write three subject lines for the spring sale");
        state
            .messages
            .push(Message::system("You are a copywriter."));
        state
            .messages
            .push(Message::user("Keep them under 50 characters."));
        let r = engine.call(copy("").agent_state(state)).await;
        report("an agent state, rendered as chat messages", &r);

        let sse = &[("content-type", "text/event-stream")];
        canned.then((None, 200, sse, SSE_CUT));
        for what in ["cut by an error event (policy: surface)", "clean"] {
            println!("\n== a stream, {what}");
            let mut events = engine.call_stream(copy("A slogan"));
            while let Some(event) = events.next().await {
                show(event);
            }
        }
    });
    Ok(())
}
