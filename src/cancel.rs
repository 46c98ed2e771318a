//! Cooperative cancellation, below every module that does long work. The runner
//! hands one [`CancelToken`] to everything it starts; Ctrl-C / SIGTERM set it, and
//! long loops call [`CancelToken::check`] between units of work.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The error returned by work that stopped because its token was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("interrupted")]
pub struct Cancelled;

/// A shared flag: cheap to clone, set once, never reset.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }

    /// Ask everything holding this token to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// `Err(Cancelled)` once the token is cancelled: `token.check()?` between steps.
    pub fn check(&self) -> Result<(), Cancelled> {
        if self.is_cancelled() {
            Err(Cancelled)
        } else {
            Ok(())
        }
    }

    /// The flag itself, for signal handlers that set it (`signal_hook::flag`).
    pub fn flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_one_flag() {
        let token = CancelToken::new();
        let other = token.clone();
        assert_eq!(other.check(), Ok(()));
        token.cancel();
        assert_eq!(other.check(), Err(Cancelled));
        assert!(other.is_cancelled());
    }

    #[test]
    fn a_signal_handler_sets_the_token_through_its_flag() {
        let token = CancelToken::new();
        token.flag().store(true, Ordering::SeqCst);
        assert!(token.is_cancelled());
    }
}
