//! Token counting: the [`TokenCounter`] trait and its documented heuristic default,
//! [`HeuristicCounter`].
//!
//! Fitting a context to a window needs token counts before any provider has seen the request.
//! Callers with a real tokenizer (tiktoken, a SentencePiece model) implement [`TokenCounter`]; the
//! default is a deliberately simple, deterministic estimate.

use super::state::{AgentState, Message};

/// Counts tokens. Implement it with a real tokenizer for exact fitting; the engine uses
/// [`HeuristicCounter`] unless given another (`EngineBuilder::token_counter`).
pub trait TokenCounter: Send + Sync {
    /// A stable name for this counter (recorded in [`AgentState::token_counter`], so estimates by
    /// another counter are recounted rather than trusted).
    fn name(&self) -> &str;

    /// Tokens in a piece of text.
    fn count_text(&self, text: &str) -> u32;

    /// Tokens one message costs: its content, its tool calls (name and arguments as JSON) and a
    /// per-message overhead for the role and framing.
    fn count_message(&self, message: &Message) -> u32 {
        let mut n = self
            .message_overhead()
            .saturating_add(self.count_text(&message.content));
        for c in &message.tool_calls {
            n = n
                .saturating_add(self.count_text(&c.id))
                .saturating_add(self.count_text(&c.name))
                .saturating_add(self.count_text(&c.arguments.to_string()));
        }
        if let Some(id) = &message.tool_call_id {
            n = n.saturating_add(self.count_text(id));
        }
        n
    }

    /// Tokens of framing each message costs beyond its text (default 4, as OpenAI documents for
    /// its chat format).
    fn message_overhead(&self) -> u32 {
        4
    }
}

/// The default estimate: one token per 4 ASCII bytes (rounded up) plus one token per non-ASCII
/// character, plus 4 tokens of framing per message.
///
/// Four characters per token is the usual rule of thumb for English with BPE tokenizers (OpenAI
/// and Anthropic both quote it); counting every non-ASCII character as a whole token keeps the
/// estimate on the safe (high) side for CJK and other scripts, where one character is often one
/// or more tokens. It is an estimate: fitting keeps the reserved output tokens as a margin, and a
/// caller who needs exact fitting plugs in a real tokenizer.
///
/// ```
/// use downshift::checkpoint::{HeuristicCounter, TokenCounter};
/// assert_eq!(HeuristicCounter.count_text("abcdefgh"), 2);
/// assert_eq!(HeuristicCounter.count_text("abcde"), 2);
/// assert_eq!(HeuristicCounter.count_text("日本"), 2);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct HeuristicCounter;

impl TokenCounter for HeuristicCounter {
    fn name(&self) -> &str {
        "heuristic-4cpt"
    }

    fn count_text(&self, text: &str) -> u32 {
        let ascii = text.bytes().filter(u8::is_ascii).count();
        let other = text.chars().filter(|c| !c.is_ascii()).count();
        let n = ascii.div_ceil(4).saturating_add(other);
        u32::try_from(n).unwrap_or(u32::MAX)
    }
}

/// The token estimate of one message: its cached [`Message::tokens`] when `trusted` (made by the
/// same counter), otherwise counted now.
pub(crate) fn message_tokens(counter: &dyn TokenCounter, m: &Message, trusted: bool) -> u64 {
    match m.tokens {
        Some(t) if trusted => u64::from(t),
        _ => u64::from(counter.count_message(m)),
    }
}

/// Tokens of everything in a state except its messages and summary: goal, plan, current step,
/// completed steps, findings, tool declarations. Fitting never drops these.
pub(crate) fn header_tokens(counter: &dyn TokenCounter, s: &AgentState) -> u64 {
    let mut n = u64::from(counter.count_text(&s.goal));
    for p in &s.plan {
        n += u64::from(counter.count_text(p));
    }
    if let Some(c) = &s.current_step {
        n += u64::from(counter.count_text(&c.id)) + u64::from(counter.count_text(&c.description));
    }
    for c in &s.completed_steps {
        n += u64::from(counter.count_text(&c.step.description))
            + u64::from(counter.count_text(&c.output.reference));
    }
    for f in &s.findings {
        n += u64::from(counter.count_text(f));
    }
    for t in &s.tools {
        n += u64::from(counter.count_text(&t.name))
            + u64::from(counter.count_text(&t.description))
            + u64::from(counter.count_text(&t.parameters.to_string()));
    }
    n
}

/// Tokens of the summary.
pub(crate) fn summary_tokens(counter: &dyn TokenCounter, s: &AgentState, trusted: bool) -> u64 {
    s.summary.as_ref().map_or(0, |x| match x.tokens {
        Some(t) if trusted => u64::from(t),
        _ => u64::from(counter.count_text(&x.text)) + u64::from(counter.message_overhead()),
    })
}

/// The whole state's estimate, in tokens.
#[must_use]
pub fn estimate(state: &AgentState, counter: &dyn TokenCounter) -> u64 {
    let trusted = state.token_counter.as_deref() == Some(counter.name());
    header_tokens(counter, state)
        + summary_tokens(counter, state, trusted)
        + state
            .messages
            .iter()
            .map(|m| message_tokens(counter, m, trusted))
            .sum::<u64>()
}

impl AgentState {
    /// Records `counter`'s estimate on every message and the summary, and its name in
    /// [`AgentState::token_counter`], so later fitting need not recount.
    pub fn annotate_tokens(&mut self, counter: &dyn TokenCounter) {
        for m in &mut self.messages {
            m.tokens = Some(counter.count_message(m));
        }
        if let Some(s) = &mut self.summary {
            s.tokens = Some(
                counter
                    .count_text(&s.text)
                    .saturating_add(counter.message_overhead()),
            );
        }
        self.token_counter = Some(counter.name().to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_from_another_counter_are_recounted() {
        let mut s = AgentState::new("goal");
        s.messages.push(Message::user("x".repeat(400)));
        let fresh = estimate(&s, &HeuristicCounter);
        s.messages[0].tokens = Some(1);
        s.token_counter = Some("other".into());
        assert_eq!(estimate(&s, &HeuristicCounter), fresh);
        s.annotate_tokens(&HeuristicCounter);
        assert_eq!(s.messages[0].tokens, Some(104));
        assert_eq!(estimate(&s, &HeuristicCounter), fresh);
    }
}
