//! Fitting an [`AgentState`] into a smaller context window: [`fit`].
//!
//! The rules, in order:
//! - The budget is the target's context window minus the output tokens reserved for the answer
//!   ([`FitPolicy::reserve_output_tokens`], capped at the target's maximum output).
//! - A state within the budget is returned unchanged.
//! - Never dropped: the goal, the plan, the current step, completed steps, findings, tool
//!   declarations, every system message, the latest summary and the newest message (with the
//!   tool exchange it belongs to). When these alone exceed the budget, nothing valid fits and
//!   [`Fitted::DoesNotFit`] says so: an over-long request is never returned.
//! - A tool call and its results are one unit: kept or dropped together.
//! - Units holding tool results go first, oldest first; then the other messages, oldest first;
//!   until what is kept is within [`FitPolicy::summarize_at`] of the budget, leaving the rest
//!   of the budget for a summary of what was dropped.
//! - The report says exactly what was dropped (count, tokens, the messages themselves and a
//!   digest of them) and whether a summary is needed (anything was dropped).
//!
//! ```
//! use downshift::catalog::Capabilities;
//! use downshift::checkpoint::{AgentState, FitPolicy, Fitted, HeuristicCounter, Message, fit};
//!
//! let mut s = AgentState::new("triage the ticket queue");
//! s.messages.push(Message::system("You are a support agent."));
//! for i in 0..50 {
//!     s.messages.push(Message::user(format!("ticket {i}: {}", "details ".repeat(50))));
//! }
//! let small = Capabilities { context_window: 2_000, max_output_tokens: 500, tools: false,
//!     parallel_tool_calls: false, vision: false, json_mode: false };
//! match fit(&s, &small, &HeuristicCounter, &FitPolicy::default()) {
//!     Fitted::Fits(r) => {
//!         assert!(r.tokens_after <= r.budget);
//!         assert!(r.summary_needed && r.dropped.count > 0);
//!         assert_eq!(r.state.messages[0], s.messages[0]); // the system prompt stays
//!     }
//!     Fitted::DoesNotFit { .. } => unreachable!(),
//! }
//! ```

use std::collections::HashMap;

use serde::Serialize;

use super::state::{AgentState, Message, Role};
use super::tokens::{TokenCounter, header_tokens, message_tokens, summary_tokens};
use crate::catalog::Capabilities;
use crate::digest::ContentDigest;

/// How to fit (from the policy's `continuity` section).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitPolicy {
    /// Output tokens kept free for the answer (capped at the target's maximum output).
    pub reserve_output_tokens: u32,
    /// When messages must be dropped, drop until what is kept is within this fraction of the
    /// budget (0 < x <= 1), so a summary of the dropped messages fits in the rest.
    pub summarize_at: f64,
}

impl Default for FitPolicy {
    fn default() -> Self {
        FitPolicy {
            reserve_output_tokens: 4096,
            summarize_at: 0.8,
        }
    }
}

/// What fitting dropped. Never written to the audit log beyond its counts and digest.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Dropped {
    /// Messages dropped.
    pub count: u32,
    /// Their tokens.
    pub tokens: u64,
    /// SHA-256 of the dropped messages' canonical JSON (`None` when nothing was dropped).
    pub digest: Option<ContentDigest>,
    /// The dropped messages, oldest first (what a summary must cover).
    #[serde(skip)]
    pub messages: Vec<Message>,
}

/// A state that fits.
#[derive(Debug, Clone, PartialEq)]
pub struct FitReport {
    /// The fitted state (messages kept in their original order).
    pub state: AgentState,
    /// Tokens of the state given.
    pub tokens_before: u64,
    /// Tokens of the fitted state (at most [`budget`](FitReport::budget)).
    pub tokens_after: u64,
    /// The budget: the window minus the reserved output.
    pub budget: u64,
    /// What was dropped.
    pub dropped: Dropped,
    /// Messages were dropped: a summary of them should take their place.
    pub summary_needed: bool,
}

/// The result of [`fit`].
#[derive(Debug, Clone, PartialEq)]
pub enum Fitted {
    /// The state fits (unchanged, or with messages dropped).
    Fits(Box<FitReport>),
    /// Nothing valid fits: what may never be dropped exceeds the budget.
    DoesNotFit {
        /// Tokens of what may never be dropped.
        needed: u64,
        /// The budget.
        budget: u64,
        /// Why, in words.
        reason: String,
    },
}

/// One unit of messages that is kept or dropped whole.
struct Unit {
    members: Vec<usize>,
    tokens: u64,
    mandatory: bool,
    has_tool_result: bool,
}

/// Fits `state` into `target`'s context window (see the module docs for the rules).
#[must_use]
pub fn fit(
    state: &AgentState,
    target: &Capabilities,
    counter: &dyn TokenCounter,
    policy: &FitPolicy,
) -> Fitted {
    let trusted = state.token_counter.as_deref() == Some(counter.name());
    let reserve = policy.reserve_output_tokens.min(target.max_output_tokens);
    let budget = u64::from(target.context_window.saturating_sub(reserve));
    let fixed = header_tokens(counter, state) + summary_tokens(counter, state, trusted);
    let tokens: Vec<u64> = state
        .messages
        .iter()
        .map(|m| message_tokens(counter, m, trusted))
        .collect();
    let before = fixed + tokens.iter().sum::<u64>();
    if before <= budget {
        return Fitted::Fits(Box::new(FitReport {
            state: state.clone(),
            tokens_before: before,
            tokens_after: before,
            budget,
            dropped: Dropped::default(),
            summary_needed: false,
        }));
    }

    let units = units(&state.messages, &tokens);
    let mandatory: u64 = fixed
        + units
            .iter()
            .filter(|u| u.mandatory)
            .map(|u| u.tokens)
            .sum::<u64>();
    if mandatory > budget {
        return Fitted::DoesNotFit {
            needed: mandatory,
            budget,
            reason: format!(
                "the goal, plan, steps, findings, tools, system messages, summary and newest message need {mandatory} tokens; the window of {} minus {reserve} reserved output tokens leaves {budget}",
                target.context_window
            ),
        };
    }
    let fraction = if policy.summarize_at.is_finite() {
        policy.summarize_at.clamp(0.0, 1.0)
    } else {
        1.0
    };
    // The floor of a fraction of a u64 that fits in f64's integer range; saturates otherwise.
    let target_tokens = ((budget as f64) * fraction).floor() as u64;
    let target_tokens = target_tokens.min(budget);

    let mut order: Vec<&Unit> = units.iter().filter(|u| !u.mandatory).collect();
    order.sort_by_key(|u| (!u.has_tool_result, u.members.first().copied().unwrap_or(0)));
    let mut kept = before;
    let mut drop = vec![false; state.messages.len()];
    for u in order {
        if kept <= target_tokens {
            break;
        }
        kept -= u.tokens;
        for &i in &u.members {
            if let Some(d) = drop.get_mut(i) {
                *d = true;
            }
        }
    }
    let mut out = state.clone();
    out.messages.clear();
    let mut dropped = Dropped::default();
    for (i, m) in state.messages.iter().enumerate() {
        if drop.get(i).copied().unwrap_or(false) {
            dropped.count += 1;
            dropped.tokens += tokens.get(i).copied().unwrap_or(0);
            dropped.messages.push(m.clone());
        } else {
            out.messages.push(m.clone());
        }
    }
    if dropped.count > 0 {
        dropped.digest = ContentDigest::of_json(&dropped.messages).ok();
    }
    let summary_needed = dropped.count > 0;
    Fitted::Fits(Box::new(FitReport {
        state: out,
        tokens_before: before,
        tokens_after: kept,
        budget,
        dropped,
        summary_needed,
    }))
}

/// Groups messages into units: an assistant message with tool calls together with the results
/// that answer them; every other message alone. System messages and the newest message's unit
/// are mandatory.
fn units(messages: &[Message], tokens: &[u64]) -> Vec<Unit> {
    let mut units: Vec<Unit> = Vec::new();
    let mut call_unit: HashMap<&str, usize> = HashMap::new();
    for (i, m) in messages.iter().enumerate() {
        let owner = match (&m.role, &m.tool_call_id) {
            (Role::Tool, Some(id)) => call_unit.get(id.as_str()).copied(),
            _ => None,
        };
        let u = match owner {
            Some(u) => u,
            None => {
                units.push(Unit {
                    members: Vec::new(),
                    tokens: 0,
                    mandatory: false,
                    has_tool_result: false,
                });
                units.len() - 1
            }
        };
        for c in &m.tool_calls {
            call_unit.insert(c.id.as_str(), u);
        }
        if let Some(unit) = units.get_mut(u) {
            unit.members.push(i);
            unit.tokens += tokens.get(i).copied().unwrap_or(0);
            unit.mandatory |= m.role == Role::System || i + 1 == messages.len();
            unit.has_tool_result |= m.role == Role::Tool;
        }
    }
    units
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{HeuristicCounter, ToolCall};

    fn caps(window: u32) -> Capabilities {
        Capabilities {
            context_window: window,
            max_output_tokens: 1000,
            tools: true,
            parallel_tool_calls: true,
            vision: false,
            json_mode: false,
        }
    }

    #[test]
    fn tool_results_go_before_older_plain_messages() {
        let mut s = AgentState::new("g");
        s.messages.push(Message::system("sys"));
        s.messages
            .push(Message::user("a".repeat(400)).with_id("old-user"));
        s.messages.push(Message::tool_calls(vec![ToolCall {
            id: "c1".into(),
            name: "search".into(),
            arguments: serde_json::json!({"q": "x"}),
        }]));
        s.messages
            .push(Message::tool_result("c1", "r".repeat(2000)));
        s.messages.push(Message::user("now"));
        let p = FitPolicy {
            reserve_output_tokens: 100,
            summarize_at: 1.0,
        };
        let Fitted::Fits(r) = fit(&s, &caps(300), &HeuristicCounter, &p) else {
            panic!()
        };
        assert_eq!(r.dropped.count, 2, "the call and its result go together");
        assert_eq!(r.state.messages[1].id.as_deref(), Some("old-user"));
        assert!(r.tokens_after <= r.budget);
    }

    #[test]
    fn when_the_mandatory_part_is_too_large_it_says_so() {
        let mut s = AgentState::new("g".repeat(4000));
        s.messages.push(Message::user("hi"));
        match fit(&s, &caps(1100), &HeuristicCounter, &FitPolicy::default()) {
            Fitted::DoesNotFit { needed, budget, .. } => {
                assert_eq!(budget, 100);
                assert!(needed > budget);
            }
            Fitted::Fits(_) => panic!("an over-long request was returned"),
        }
    }
}
