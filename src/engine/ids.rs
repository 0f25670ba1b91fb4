//! Where the engine's identifiers come from: resume tokens and its default replica name.
//!
//! By default ([`RandomIds`]) they are unguessable: a resume token mixes a per-process seed from
//! the operating system's randomness, a counter and the wall clock, so no caller can stumble onto
//! another session's token. A reproducible run (a simulation, a golden-file test, a CI check of
//! an audit log) instead gives the builder [`SeededIds`]: every identifier is then a pure
//! function of the seed and what it names, so the same run gives byte-identical checkpoints and
//! audit logs on every machine.
//!
//! ```
//! use std::sync::Arc;
//! use downshift::engine::{IdSource, SeededIds};
//! use downshift::id::SessionId;
//!
//! let ids = SeededIds::new(7);
//! let s = SessionId::new("acme/s1");
//! assert_eq!(ids.resume_token(&s, 3), SeededIds::new(7).resume_token(&s, 3));
//! assert_ne!(ids.resume_token(&s, 3), ids.resume_token(&s, 4));
//! // Engine::builder(set, client).ids(Arc::new(SeededIds::new(7))) ...
//! # let _: Arc<dyn IdSource> = Arc::new(ids);
//! ```

use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::checkpoint::ResumeToken;
use crate::id::SessionId;

/// The source of the identifiers an engine hands out. Give one to
/// [`EngineBuilder::ids`](super::EngineBuilder::ids).
///
/// An implementation must return a token that no other session or checkpoint version shares;
/// whether it is guessable is its own choice (and must be documented).
pub trait IdSource: Send + Sync + fmt::Debug {
    /// The resume token for `session` suspended at checkpoint `version` (the version the
    /// suspension's checkpoint is saved at).
    fn resume_token(&self, session: &SessionId, version: u64) -> ResumeToken;

    /// The name of a replica built without [`EngineBuilder::replica`](super::EngineBuilder::replica):
    /// two engines sharing a health exchange must never get the same one.
    fn replica_name(&self) -> String;
}

/// The default: unguessable resume tokens ([`ResumeToken::generate`]) and a replica name drawn
/// at random for each engine of the process.
#[derive(Debug, Clone, Copy, Default)]
pub struct RandomIds;

impl IdSource for RandomIds {
    fn resume_token(&self, session: &SessionId, version: u64) -> ResumeToken {
        ResumeToken::generate(session, version)
    }

    fn replica_name(&self) -> String {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let r = std::collections::hash_map::RandomState::new().hash_one((std::process::id(), n));
        format!("replica-{r:016x}")
    }
}

/// Reproducible identifiers: each is derived (SHA-256, through [`ResumeToken::derive`]) from a
/// seed and what it names, so the same seed, session and version always give the same token,
/// whatever the order or the thread the calls come in, and different sessions or versions never
/// share one.
///
/// The tokens are only as secret as the seed: use this for simulations, tests and
/// reproducible drills, or with a seed kept as secret as any other credential.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SeededIds {
    seed: u64,
}

impl SeededIds {
    /// Identifiers derived from `seed`.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        SeededIds { seed }
    }

    /// The seed.
    #[must_use]
    pub fn seed(&self) -> u64 {
        self.seed
    }

    fn entropy(&self) -> [u8; 16] {
        let mut e = [0u8; 16];
        e[..8].copy_from_slice(b"seeded\0\0");
        e[8..].copy_from_slice(&self.seed.to_le_bytes());
        e
    }
}

impl fmt::Debug for SeededIds {
    // The seed is what makes the tokens unguessable: never print it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SeededIds").finish_non_exhaustive()
    }
}

impl IdSource for SeededIds {
    fn resume_token(&self, session: &SessionId, version: u64) -> ResumeToken {
        ResumeToken::derive(session, version, &self.entropy())
    }

    fn replica_name(&self) -> String {
        let t = ResumeToken::derive(&SessionId::new("\0replica"), 0, &self.entropy());
        let hex = t.as_str().trim_start_matches("rt_");
        format!("replica-{}", hex.get(..16).unwrap_or(hex))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_tokens_are_reproducible_and_unique_per_session_and_version() {
        let a = SeededIds::new(42);
        let s1 = SessionId::new("t/1");
        let s2 = SessionId::new("t/2");
        assert_eq!(
            a.resume_token(&s1, 1),
            SeededIds::new(42).resume_token(&s1, 1)
        );
        assert_ne!(a.resume_token(&s1, 1), a.resume_token(&s1, 2));
        assert_ne!(a.resume_token(&s1, 1), a.resume_token(&s2, 1));
        assert_ne!(
            a.resume_token(&s1, 1),
            SeededIds::new(43).resume_token(&s1, 1)
        );
        assert_eq!(a.replica_name(), SeededIds::new(42).replica_name());
        assert_ne!(a.replica_name(), SeededIds::new(43).replica_name());
    }

    #[test]
    fn seeded_tokens_keep_the_resume_token_format() {
        let t = SeededIds::new(1).resume_token(&SessionId::new("t/1"), 9);
        let rt = RandomIds.resume_token(&SessionId::new("t/1"), 9);
        for t in [&t, &rt] {
            let s = t.as_str();
            assert!(s.starts_with("rt_") && s.len() == 35, "{s}");
            assert!(s[3..].bytes().all(|b| b.is_ascii_hexdigit()), "{s}");
        }
    }

    #[test]
    fn random_ids_never_repeat() {
        let s = SessionId::new("t/1");
        assert_ne!(RandomIds.resume_token(&s, 1), RandomIds.resume_token(&s, 1));
        assert_ne!(RandomIds.replica_name(), RandomIds.replica_name());
    }

    #[test]
    fn the_seed_is_not_printed() {
        assert!(!format!("{:?}", SeededIds::new(123_456_789)).contains("123456789"));
    }
}
