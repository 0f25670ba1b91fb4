//! The scripted providers: one [`ModelClient`] answering for every endpoint of the catalog as
//! the scenario's fault windows say, in virtual time. Errors are real provider responses
//! (status, headers, body) turned into a [`ModelError`] by
//! [`classify_http`](crate::trigger::classify_http), exactly as a real client does.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::catalog::EndpointIdx;
use crate::clock::Timestamp;
use crate::engine::{
    Chunk, ChunkStream, FinishReason, ModelClient, ModelError, ModelRequest, ModelResponse,
    TokenUsage,
};
use crate::policy::StatusPageState;

use super::exec::VirtualTime;
use super::scenario::{ErrorResponse, HttpResponse, Preset, RateLimitFault};

/// A fault window resolved against the catalog and the clock.
#[derive(Debug, Clone)]
pub(crate) struct Window {
    pub(crate) endpoints: Vec<EndpointIdx>,
    pub(crate) from: u64,
    pub(crate) until: u64,
    pub(crate) error: Option<HttpResponse>,
    pub(crate) error_rate: f64,
    pub(crate) error_latency: Duration,
    pub(crate) added_latency: Duration,
    pub(crate) queue_depth: Option<u64>,
    pub(crate) status_page: Option<StatusPageState>,
    pub(crate) rate_limit: Option<RateLimitFault>,
    pub(crate) cut_stream_after: Option<u32>,
}

impl Window {
    fn covers(&self, e: EndpointIdx, t: u64) -> bool {
        t >= self.from && t < self.until && self.endpoints.contains(&e)
    }
}

/// One request a provider received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sent {
    pub(crate) at: u64,
    pub(crate) endpoint: EndpointIdx,
    pub(crate) probe: bool,
}

/// The scripted providers.
#[derive(Debug)]
pub(crate) struct ScriptedProviders {
    pub(crate) time: VirtualTime,
    pub(crate) windows: Vec<Window>,
    /// Normal latency and jitter per endpoint index.
    pub(crate) normal: Vec<(Duration, f64)>,
    pub(crate) seed: u64,
    pub(crate) counter: AtomicU64,
    pub(crate) sent: Mutex<Vec<Sent>>,
}

/// What one attempt will do.
enum Plan {
    Fail(Duration, HttpResponse),
    Answer {
        latency: Duration,
        headers: Vec<(String, String)>,
        cut: Option<(u32, HttpResponse)>,
    },
}

pub(crate) fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A uniform draw in [0, 1) from a 64-bit value.
pub(crate) fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

impl ScriptedProviders {
    fn plan(&self, e: EndpointIdx, probe: bool) -> Plan {
        let now = self.time.now().as_millis();
        self.sent.lock().push(Sent {
            at: now,
            endpoint: e,
            probe,
        });
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let r1 = splitmix(self.seed ^ splitmix(n));
        let r2 = splitmix(r1);
        let (base, jitter) = self
            .normal
            .get(e.0 as usize)
            .copied()
            .unwrap_or((Duration::from_secs(2), 0.25));
        let spread = 1.0 + jitter.clamp(0.0, 1.0) * (2.0 * unit(r1) - 1.0);
        let mut latency = base.mul_f64(spread.max(0.0));
        let mut headers = Vec::new();
        let mut cut = None;
        for w in self.windows.iter().filter(|w| w.covers(e, now)) {
            latency += w.added_latency;
            if let Some(err) = &w.error {
                if w.cut_stream_after.is_none() && unit(r2) < w.error_rate {
                    return Plan::Fail(w.error_latency, err.clone());
                }
            }
            if let Some(n) = w.cut_stream_after {
                if cut.is_none() && unit(r2) < w.error_rate {
                    let err = w
                        .error
                        .clone()
                        .unwrap_or_else(|| preset(Preset::AnthropicOverloaded));
                    cut = Some((n, err));
                }
            }
            if let Some(rl) = &w.rate_limit {
                let span = w.until.saturating_sub(w.from).max(1) as f64;
                let f = (now.saturating_sub(w.from)) as f64 / span;
                let from = rl.remaining_from as f64;
                let to = rl.remaining_to as f64;
                let remaining = (from + (to - from) * f).round().max(0.0) as u64;
                headers = vec![
                    (
                        "x-ratelimit-limit-requests".to_string(),
                        rl.requests_limit.to_string(),
                    ),
                    (
                        "x-ratelimit-remaining-requests".to_string(),
                        remaining.to_string(),
                    ),
                    ("x-ratelimit-reset-requests".to_string(), "20s".to_string()),
                ];
            }
        }
        Plan::Answer {
            latency,
            headers,
            cut,
        }
    }
}

fn usage_of(payload: &Value) -> TokenUsage {
    TokenUsage {
        input_tokens: payload
            .get("input_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(1_000),
        output_tokens: payload
            .get("output_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(200),
    }
}

fn to_error(r: &HttpResponse) -> ModelError {
    let headers: Vec<(&str, &str)> = r
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let body = match &r.body {
        Value::String(s) => s.clone().into_bytes(),
        Value::Null => Vec::new(),
        v => v.to_string().into_bytes(),
    };
    ModelError::from_http(r.status, &headers, &body)
}

/// The provider's answer to a request larger than its context window, when the engine did not
/// ask for it to be fitted (OpenAI's shape).
fn too_long(window: u32, asked: u64) -> HttpResponse {
    HttpResponse {
        status: 400,
        headers: [("content-type".to_string(), "application/json".to_string())]
            .into_iter()
            .collect(),
        body: json!({"error": {"message": format!("This model's maximum context length is {window} tokens. However, your messages resulted in {asked} tokens. Please reduce the length of the messages."), "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}),
    }
}

/// The tokens a request sends: as asked, or fitted to the window when the engine asks for it
/// (the context is cut to the window minus the reserved output); `Err` when it does not fit.
fn fitted(req: &ModelRequest<Value>) -> Result<TokenUsage, ModelError> {
    let mut u = usage_of(&req.payload);
    // A context the engine fitted (or a summary request) is what is sent.
    if let Some(ctx) = &req.context {
        u.input_tokens = crate::checkpoint::estimate(ctx, &crate::checkpoint::HeuristicCounter);
    }
    let window = u64::from(req.context_window);
    if window > 0 && u.input_tokens + u.output_tokens > window {
        if !req.fit_context {
            return Err(to_error(&too_long(
                req.context_window,
                u.input_tokens + u.output_tokens,
            )));
        }
        u.input_tokens = window.saturating_sub(u.output_tokens);
    }
    Ok(u)
}

#[async_trait]
impl ModelClient for ScriptedProviders {
    async fn call(&self, req: ModelRequest<Value>) -> Result<ModelResponse<Value>, ModelError> {
        let usage = fitted(&req)?;
        match self.plan(req.endpoint_idx, req.probe) {
            Plan::Fail(latency, r) => {
                self.time.sleep(latency).await;
                Err(to_error(&r))
            }
            Plan::Answer {
                latency, headers, ..
            } => {
                self.time.sleep(latency).await;
                let mut resp = ModelResponse::new(
                    json!({"endpoint": req.endpoint.as_str(), "text": format!("answer of {}", req.endpoint)}),
                    usage,
                );
                resp.headers = headers;
                Ok(resp)
            }
        }
    }

    fn output_text(&self, output: &Value) -> Option<String> {
        output
            .get("text")
            .and_then(Value::as_str)
            .map(str::to_string)
    }

    async fn call_stream(
        &self,
        req: ModelRequest<Value>,
    ) -> Result<ChunkStream<Value>, ModelError> {
        let usage = fitted(&req)?;
        let (latency, cut) = match self.plan(req.endpoint_idx, req.probe) {
            Plan::Fail(latency, r) => {
                self.time.sleep(latency).await;
                return Err(to_error(&r));
            }
            Plan::Answer { latency, cut, .. } => (latency, cut),
        };
        let chunks: u32 = 8;
        let step = latency / chunks;
        let time = self.time.clone();
        let continuing = req.continue_from.is_some();
        let stream = futures::stream::unfold(0u32, move |i| {
            let time = time.clone();
            let cut = cut.clone();
            async move {
                if i >= chunks {
                    return None;
                }
                time.sleep(step).await;
                if let Some((n, err)) = &cut {
                    if !continuing && i >= *n {
                        return Some((Err(to_error(err)), chunks));
                    }
                }
                let mut c = Chunk::delta(format!("part{i} "));
                if i + 1 == chunks {
                    c = c.finished(FinishReason::Stop).with_usage(usage);
                }
                Some((Ok(c), i + 1))
            }
        });
        Ok(stream.boxed())
    }
}

/// The real response of a named provider error.
#[must_use]
pub(crate) fn preset(p: Preset) -> HttpResponse {
    let h = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect()
    };
    match p {
        Preset::OpenaiRateLimited => HttpResponse {
            status: 429,
            headers: h(&[
                ("content-type", "application/json"),
                ("retry-after", "30"),
                ("x-request-id", "req_sim"),
                ("x-ratelimit-limit-requests", "10000"),
                ("x-ratelimit-remaining-requests", "0"),
                ("x-ratelimit-reset-requests", "30s"),
            ]),
            body: json!({"error": {"message": "Rate limit reached for requests per min (RPM). Please try again in 30s.", "type": "requests", "param": null, "code": "rate_limit_exceeded"}}),
        },
        Preset::OpenaiQuotaExhausted => HttpResponse {
            status: 429,
            headers: h(&[
                ("content-type", "application/json"),
                ("x-request-id", "req_sim"),
            ]),
            body: json!({"error": {"message": "You exceeded your current quota, please check your plan and billing details.", "type": "insufficient_quota", "param": null, "code": "insufficient_quota"}}),
        },
        Preset::OpenaiOverloaded => HttpResponse {
            status: 503,
            headers: h(&[
                ("content-type", "application/json"),
                ("x-request-id", "req_sim"),
            ]),
            body: json!({"error": {"message": "The engine is currently overloaded, please try again later", "type": "server_error", "param": null, "code": null}}),
        },
        Preset::AnthropicRateLimited => HttpResponse {
            status: 429,
            headers: h(&[
                ("content-type", "application/json"),
                ("retry-after", "30"),
                ("request-id", "req_sim"),
                ("anthropic-ratelimit-requests-limit", "4000"),
                ("anthropic-ratelimit-requests-remaining", "0"),
            ]),
            body: json!({"type": "error", "error": {"type": "rate_limit_error", "message": "Number of request tokens has exceeded your per-minute rate limit"}}),
        },
        Preset::AnthropicOverloaded => HttpResponse {
            status: 529,
            headers: h(&[
                ("content-type", "application/json"),
                ("request-id", "req_sim"),
            ]),
            body: json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        },
        Preset::AzureRateLimited => HttpResponse {
            status: 429,
            headers: h(&[
                ("content-type", "application/json"),
                ("retry-after-ms", "30000"),
                ("apim-request-id", "sim"),
                ("x-ms-region", "West Europe"),
            ]),
            body: json!({"error": {"code": "429", "message": "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have exceeded token rate limit of your current tier. Please retry after 30 seconds."}}),
        },
        Preset::BedrockThrottled => HttpResponse {
            status: 429,
            headers: h(&[
                ("content-type", "application/json"),
                ("x-amzn-requestid", "sim"),
                (
                    "x-amzn-errortype",
                    "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/",
                ),
            ]),
            body: json!({"message": "Too many requests, please wait before trying again."}),
        },
        Preset::GeminiUnavailable => HttpResponse {
            status: 503,
            headers: h(&[("content-type", "application/json; charset=UTF-8")]),
            body: json!({"error": {"code": 503, "message": "The model is overloaded. Please try again later.", "status": "UNAVAILABLE"}}),
        },
        Preset::ServerError => HttpResponse {
            status: 500,
            headers: h(&[("content-type", "application/json")]),
            body: json!({"error": {"message": "Internal server error", "type": "server_error"}}),
        },
        Preset::GatewayTimeout => HttpResponse {
            status: 504,
            headers: h(&[("content-type", "text/html")]),
            body: Value::String("<html><body><h1>504 Gateway Time-out</h1></body></html>".into()),
        },
    }
}

/// The HTTP response of an error given in a scenario.
pub(crate) fn response_of(e: &ErrorResponse) -> HttpResponse {
    match e {
        ErrorResponse::Preset(p) => preset(*p),
        ErrorResponse::Http(r) => r.clone(),
    }
}

/// The signals a window pushes at `t`, per endpoint: (queue depth, status page), the last
/// window in file order winning; endpoints that ever have such a window get 0 / operational
/// outside them.
pub(crate) fn signals_at(
    windows: &[Window],
    t: Timestamp,
) -> HashMap<EndpointIdx, (Option<u64>, Option<StatusPageState>)> {
    let t = t.as_millis();
    let mut out: HashMap<EndpointIdx, (Option<u64>, Option<StatusPageState>)> = HashMap::new();
    for w in windows {
        for &e in &w.endpoints {
            let entry = out.entry(e).or_default();
            let active = t >= w.from && t < w.until;
            if w.queue_depth.is_some() {
                let v = if active { w.queue_depth } else { Some(0) };
                if active || entry.0.is_none() {
                    entry.0 = v;
                }
            }
            if w.status_page.is_some() {
                let v = if active {
                    w.status_page
                } else {
                    Some(StatusPageState::Operational)
                };
                if active || entry.1.is_none() {
                    entry.1 = v;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trigger::OutcomeClass;

    #[test]
    fn every_preset_is_classified_as_the_provider_means_it() {
        let want = [
            (Preset::OpenaiRateLimited, OutcomeClass::RateLimited),
            (Preset::OpenaiQuotaExhausted, OutcomeClass::QuotaExhausted),
            (Preset::OpenaiOverloaded, OutcomeClass::Overloaded),
            (Preset::AnthropicRateLimited, OutcomeClass::RateLimited),
            (Preset::AnthropicOverloaded, OutcomeClass::Overloaded),
            (Preset::AzureRateLimited, OutcomeClass::RateLimited),
            (Preset::BedrockThrottled, OutcomeClass::RateLimited),
            (Preset::GeminiUnavailable, OutcomeClass::Overloaded),
            (Preset::ServerError, OutcomeClass::ServerError),
            (Preset::GatewayTimeout, OutcomeClass::Timeout),
        ];
        for (p, class) in want {
            assert_eq!(to_error(&preset(p)).class(), class, "{p:?}");
        }
        let e = to_error(&preset(Preset::OpenaiRateLimited));
        assert_eq!(e.classification.retry_after, Some(Duration::from_secs(30)));
    }
}
