//! [`Bridge`]: how an awaited call's result gets back to its asyncio loop without the GIL.
//!
//! The obvious bridge (a tokio task that takes the GIL and calls `loop.call_soon_threadsafe`)
//! hands the GIL from the tokio thread to the loop's thread on every call: on a loaded two-core
//! machine that measured about 100 us per awaited call, more than the Redis round trip itself.
//! Here a finished call only pushes its [`Reply`] onto a queue and writes one byte to a socket
//! pair whose reading end the loop watches (`loop.add_reader`); the loop's callback
//! ([`Bridge::drain`]) converts the replies and resolves the futures on its own thread, where it
//! holds the GIL anyway. No Python code runs on tokio threads.
//!
//! One bridge per event loop (`python/tatbot_state/_bridge.py` keeps them). A byte is written
//! only when the loop has not been told yet (`told`), so a burst of results costs one wake.

use std::io::{ErrorKind, Read as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;

use crate::{Call, Reply, runtime};

struct Shared {
    /// Results not handed to the loop yet, with the id `submit` gave their call.
    done: Mutex<Vec<(u64, PyResult<Reply>)>>,
    /// Written to (one byte) to wake the loop; non-blocking, so a full buffer never blocks a
    /// tokio thread (the loop is then already due to drain).
    wake: UnixStream,
    /// True from the first result after a drain until the next drain: the loop has been woken.
    told: AtomicBool,
}

/// Runs calls on the shared runtime and hands their results to one asyncio loop.
#[pyclass(frozen, module = "tatbot_state._native")]
pub(crate) struct Bridge {
    shared: Arc<Shared>,
    /// The end the loop watches; drained by `drain`.
    watched: UnixStream,
    next_id: AtomicU64,
}

/// The first wait before writing the wake byte again after the system refused it; it doubles
/// up to [`MAX_WAKE_RETRY`].
const FIRST_WAKE_RETRY: Duration = Duration::from_millis(1);
/// The longest wait between two tries, so that a refusal that does not pass costs one try every
/// 100 ms and no more.
const MAX_WAKE_RETRY: Duration = Duration::from_millis(100);

/// Writes the byte that wakes the loop, until it is written or the loop is gone.
///
/// A refusal that may pass (out of buffers or memory) is tried again, after a wait that grows
/// to [`MAX_WAKE_RETRY`]: `told` stays set meanwhile, so no other result writes, and giving up
/// would leave this result in `done` with nothing due to wake the loop: its `await` would hang
/// until some later call finished. A full buffer (`WouldBlock`) means the loop is woken anyway.
/// When the loop's end is closed (`BrokenPipe`), nobody is left to wake and `told` is cleared.
async fn wake_loop(shared: &Shared) {
    let mut retry = FIRST_WAKE_RETRY;
    loop {
        match (&shared.wake).write(&[1]) {
            Ok(_) => return,
            Err(err) if err.kind() == ErrorKind::WouldBlock => return,
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) if matches!(err.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => {
                shared.told.store(false, Ordering::SeqCst);
                return;
            }
            Err(_) => {
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(MAX_WAKE_RETRY);
            }
        }
    }
}

#[pymethods]
impl Bridge {
    /// A bridge with a fresh socket pair.
    #[new]
    fn new() -> PyResult<Bridge> {
        let (wake, watched) = UnixStream::pair().map_err(|err| PyOSError::new_err(format!("socketpair: {err}")))?;
        wake.set_nonblocking(true)
            .and_then(|()| watched.set_nonblocking(true))
            .map_err(|err| PyOSError::new_err(format!("socketpair: {err}")))?;
        Ok(Bridge {
            shared: Arc::new(Shared {
                done: Mutex::new(Vec::new()),
                wake,
                told: AtomicBool::new(false),
            }),
            watched,
            next_id: AtomicU64::new(0),
        })
    }

    /// The file descriptor the loop watches for readability.
    fn fileno(&self) -> i32 {
        self.watched.as_raw_fd()
    }

    /// Starts `call` on the shared runtime; answers the id its result will carry.
    fn submit(&self, call: &Call) -> PyResult<u64> {
        let pending = call.take()?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let shared = self.shared.clone();
        runtime().spawn(async move {
            let result = pending.await;
            shared
                .done
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((id, result));
            if !shared.told.swap(true, Ordering::SeqCst) {
                wake_loop(&shared).await;
            }
        });
        Ok(id)
    }

    /// The finished calls as `(id, value, ok)`: the answer when `ok`, else the exception.
    ///
    /// The wake bytes are read *before* `told` is cleared. Cleared first, a result that came in
    /// between wrote a byte this read then swallowed, leaving `told` set with nothing to read:
    /// every later result skipped its byte and the loop was never woken again (issue #15's
    /// lost wake, seen as a hung `await` in CI). In this order a result that comes before the
    /// clear finds `told` set and is in the `take` below; one that comes after writes a byte
    /// that stays for the next drain.
    fn drain<'py>(&self, py: Python<'py>) -> Vec<(u64, Bound<'py, PyAny>, bool)> {
        let mut sink = [0u8; 256];
        loop {
            match (&self.watched).read(&mut sink) {
                Ok(0) => break,
                Ok(_) => {}
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        self.shared.told.store(false, Ordering::SeqCst);
        let done = std::mem::take(&mut *self.shared.done.lock().unwrap_or_else(PoisonError::into_inner));
        done.into_iter()
            .map(|(id, result)| {
                // A reply that cannot become a Python value fails its own call only: an error
                // returned from here would drop every other result taken above.
                match result.and_then(|reply| reply.into_pyobject(py)) {
                    Ok(value) => (id, value, true),
                    Err(err) => (id, err.into_value(py).into_bound(py).into_any(), false),
                }
            })
            .collect()
    }
}
