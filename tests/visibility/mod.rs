//! Shared fixtures of the visibility tests: a two-tier ladder (big → small) with scripted
//! provider faults, a manual clock and an in-memory audit log.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use downshift::audit::MemoryAuditSink;
use downshift::engine::{
    Chunk, ChunkStream, Engine, EngineBuilder, FinishReason, ModelClient, ModelError, ModelRequest,
    ModelResponse, TokenUsage,
};
use downshift::policy::{PolicySet, Source};
use downshift::{ManualClock, OutcomeClass, Timestamp};
use futures::StreamExt;
use parking_lot::Mutex;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::sync::atomic::AtomicU64;

/// The prompt text every test call carries: it must never reach a span, an event or the stats.
pub const SECRET_PROMPT: &str = "PATIENT-7731 has a rare condition: summarise the chart";

/// Tokens every answer reports.
pub const USAGE: TokenUsage = TokenUsage {
    input_tokens: 1000,
    output_tokens: 200,
};

/// Endpoints listed here fail with the class; the rest answer with [`USAGE`].
#[derive(Default)]
pub struct Script {
    pub failing: Mutex<HashMap<String, (OutcomeClass, Option<Duration>)>>,
    pub calls: Mutex<Vec<String>>,
    /// Endpoints whose streams send one chunk, then end without a final chunk (a cut).
    pub cut: Mutex<HashSet<String>>,
    /// How long every answer takes on the world's clock (advanced as the answer ends: for a
    /// stream, when its final chunk is sent).
    pub answer_ms: AtomicU64,
    pub clock: Mutex<Option<ManualClock>>,
}

impl Script {
    pub fn fail(&self, id: &str, class: OutcomeClass, retry_after: Option<Duration>) {
        self.failing
            .lock()
            .insert(id.to_string(), (class, retry_after));
    }
    pub fn heal(&self, id: &str) {
        self.failing.lock().remove(id);
    }
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().clone()
    }
    pub fn cut(&self, id: &str, on: bool) {
        if on {
            self.cut.lock().insert(id.to_string());
        } else {
            self.cut.lock().remove(id);
        }
    }
    pub fn answer_takes(&self, d: Duration) {
        self.answer_ms
            .store(d.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
    }
    fn answer_time_passes(&self) {
        let ms = self.answer_ms.load(std::sync::atomic::Ordering::Relaxed);
        if let Some(c) = self.clock.lock().as_ref() {
            c.advance(Duration::from_millis(ms));
        }
    }
}

pub struct Scripted(pub Arc<Script>);

#[async_trait]
impl ModelClient for Scripted {
    async fn call(&self, req: ModelRequest<Value>) -> Result<ModelResponse<Value>, ModelError> {
        self.0.calls.lock().push(req.endpoint.to_string());
        if let Some((class, ra)) = self.0.failing.lock().get(req.endpoint.as_str()).copied() {
            let mut e = ModelError::of(class, format!("scripted {class}"));
            e.classification.retry_after = ra;
            return Err(e);
        }
        self.0.answer_time_passes();
        Ok(ModelResponse::new(json!({"text": "an answer"}), USAGE))
    }

    async fn call_stream(
        &self,
        req: ModelRequest<Value>,
    ) -> Result<ChunkStream<Value>, ModelError> {
        self.0.calls.lock().push(req.endpoint.to_string());
        if let Some((class, ra)) = self.0.failing.lock().get(req.endpoint.as_str()).copied() {
            let mut e = ModelError::of(class, format!("scripted {class}"));
            e.classification.retry_after = ra;
            return Err(e);
        }
        if self.0.cut.lock().contains(req.endpoint.as_str()) {
            return Ok(futures::stream::iter(vec![Ok(Chunk::delta("an "))]).boxed());
        }
        let script = Arc::clone(&self.0);
        let chunks = vec![
            Chunk::delta("an "),
            Chunk::delta("answer")
                .finished(FinishReason::Stop)
                .with_usage(USAGE),
        ];
        Ok(futures::stream::iter(chunks)
            .map(move |c| {
                if c.finish.is_some() {
                    script.answer_time_passes();
                }
                Ok(c)
            })
            .boxed())
    }
}

pub fn policy_sources() -> Vec<Source> {
    let catalog = json!({"kind": "catalog", "endpoints": [
        {"id": "big", "provider": "vendor-a", "model": "frontier-1", "region": "eu-west-1",
         "capabilities": {"context_window": 200000, "max_output_tokens": 8192},
         "pricing": {"input_per_mtok": 3.0, "output_per_mtok": 15.0}},
        {"id": "small", "provider": "selfhost", "model": "small-8b", "region": "eu-west-1",
         "capabilities": {"context_window": 32000, "max_output_tokens": 4096},
         "pricing": {"input_per_mtok": 0.25, "output_per_mtok": 1.25}},
        {"id": "elsewhere", "provider": "cheapco", "model": "small-8b", "region": "us-east-1",
         "capabilities": {"context_window": 32000, "max_output_tokens": 4096},
         "pricing": {"input_per_mtok": 0.1, "output_per_mtok": 0.2}}
    ]});
    let platform = json!({"kind": "policy", "id": "platform", "version": "1", "level": "platform",
        "tiers": [
            {"name": "primary", "endpoints": ["big"]},
            {"name": "fallback", "endpoints": ["small"]},
            {"name": "far", "endpoints": ["elsewhere"]}
        ],
        "suspension": {"max_duration": "4h"}});
    let acme = json!({"kind": "policy", "id": "acme", "version": "1", "level": "tenant",
        "extends": "platform", "constraints": {"allowed_regions": ["eu-*"]}});
    let hold = json!({"kind": "policy", "id": "hold", "version": "1", "level": "tenant",
        "extends": "platform", "constraints": {"floor": "primary", "when_exhausted": "suspend"}});
    [
        ("catalog.json", catalog),
        ("platform.json", platform),
        ("acme.json", acme),
        ("hold.json", hold),
    ]
    .into_iter()
    .map(|(n, v)| Source::new(n, serde_json::to_string(&v).unwrap()))
    .collect()
}

pub struct World {
    pub engine: Engine,
    pub script: Arc<Script>,
    pub clock: ManualClock,
    pub audit: Arc<MemoryAuditSink>,
}

pub const T0: u64 = 1_795_000_000_000;

pub fn world_with(
    f: impl FnOnce(EngineBuilder<Value, Value>) -> EngineBuilder<Value, Value>,
) -> World {
    let set = PolicySet::from_sources(policy_sources()).unwrap();
    let script = Arc::new(Script::default());
    let clock = ManualClock::new(Timestamp::from_millis(T0));
    *script.clock.lock() = Some(clock.clone());
    let audit = Arc::new(MemoryAuditSink::new());
    let builder = Engine::builder(set, Arc::new(Scripted(Arc::clone(&script))))
        .clock(Arc::new(clock.clone()))
        .audit(audit.clone());
    let engine = f(builder).build().unwrap();
    World {
        engine,
        script,
        clock,
        audit,
    }
}

pub fn world() -> World {
    world_with(|b| b)
}

pub fn payload() -> Value {
    json!({"messages": [{"role": "user", "content": SECRET_PROMPT}]})
}
