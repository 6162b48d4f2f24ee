//! The parameters panel's data: the list as JSON, and the feed that says when to read it
//! again.
//!
//! Parameters publish nothing on pub/sub and are not part of the follow API; their changes are
//! in the audit log, which [`tatbot_state::params::Watch`] tails. The hub (`hub.rs`) holds the
//! process's one [`ParamsFeed`]: a task that holds a watch and wakes the hub on every change.
//! The hub then reads the whole list and publishes it as one `params` event to every stream,
//! so the page never folds changes itself and a burst of changes (a `param load`) costs one
//! read, not one per change: the wake-up is a [`Notify`] permit, which does not count.
//!
//! The task opens its watch first and only then wakes the hub for the first read, so no
//! change falls between the list a page shows and the changes that follow it.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tatbot_state::params::Prefix;
use tatbot_state::{CorruptEntry, StateManager};
use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, DropGuard};

/// First wait before retrying after the watch failed.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// `{"params": [Param, ...], "corrupt": [{"key", "error"}, ...]}`: every parameter, by name,
/// as the library serializes it; a stored parameter that does not decode is listed in
/// `corrupt` and never hides the others.
///
/// # Errors
///
/// The library's error as text: Redis unreachable.
pub(crate) async fn list(manager: &StateManager) -> Result<Value, String> {
    let entries = manager
        .params()
        .list_entries(&Prefix::all())
        .await
        .map_err(|err| err.report().to_string())?;
    let mut params = Vec::with_capacity(entries.len());
    let mut corrupt = Vec::new();
    for entry in entries {
        match entry.value {
            Ok(param) => params.push(param),
            Err(err) => corrupt.push(CorruptEntry {
                key: entry.key,
                error: err.report().to_string(),
            }),
        }
    }
    Ok(json!({ "params": params, "corrupt": corrupt }))
}

/// Wakes the hub when parameters change; dropping it stops the watch and closes its
/// connection.
pub(crate) struct ParamsFeed {
    /// Notified by the watch task once its watch is open and after every change; the hub
    /// waits on it. A permit is stored, so a change while the hub is busy is not lost.
    changed: Arc<Notify>,
    /// Cancels the watch task when the feed is dropped.
    _stop: DropGuard,
}

impl ParamsFeed {
    /// Starts watching; the task ends with the feed or at `shutdown`.
    pub(crate) fn start(manager: &StateManager, shutdown: &CancellationToken) -> ParamsFeed {
        let changed = Arc::new(Notify::new());
        let stop = shutdown.child_token();
        tokio::spawn(watch(manager.clone(), changed.clone(), stop.clone()));
        ParamsFeed {
            changed,
            _stop: stop.drop_guard(),
        }
    }

    /// Waits until the list may have changed since the last call.
    pub(crate) async fn changed(&self) {
        self.changed.notified().await;
    }
}

/// Opens a watch on every parameter, retrying with capped exponential backoff, then wakes the
/// hub on every change until `stop`.
///
/// An open watch reconnects by itself and resumes after the last change it read, so after a
/// connection error this only waits and reads on. Other errors (the log was trimmed past the
/// watch, an entry does not decode) may hide a change, so they wake the hub too.
async fn watch(manager: StateManager, changed: Arc<Notify>, stop: CancellationToken) {
    let params = manager.params();
    let all = Prefix::all();
    let mut backoff = MIN_BACKOFF;
    let mut watch = loop {
        let attempt = tokio::select! {
            () = stop.cancelled() => return,
            attempt = params.watch(&all) => attempt,
        };
        match attempt {
            Ok(watch) => break watch,
            Err(err) => {
                tracing::debug!(error = %err, retry_in = ?backoff, "cannot watch parameter changes yet");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    };
    changed.notify_one();
    backoff = MIN_BACKOFF;
    loop {
        let next = tokio::select! {
            () = stop.cancelled() => return,
            next = watch.next() => next,
        };
        match next {
            Ok(_) => {
                backoff = MIN_BACKOFF;
                changed.notify_one();
            }
            Err(err) => {
                tracing::debug!(error = %err, retry_in = ?backoff, "parameter watch failed; resuming");
                if !err.is_connection_error() {
                    changed.notify_one();
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}
