//! `tatbot_state._native`: the Rust core of the Python package `tatbot-state`.
//!
//! The Python package (`python/tatbot_state/`) keeps the fleet's old API, the pydantic models
//! and the blocking facade in Python; this extension is the thin glue under it. Everything
//! that talks to Redis is the `tatbot-state` library itself.
//!
//! # Layout
//!
//! - this file: the module, the one shared tokio runtime, [`Call`] (one pending library call,
//!   awaited from asyncio or waited for from a thread), [`Reply`] and the error mapping.
//! - `bridge`: [`bridge::Bridge`], which hands awaited results back to an asyncio loop without
//!   taking the GIL on a tokio thread.
//! - `manager`: [`manager::Target`] (configuration resolved as the CLI does) and
//!   [`manager::Manager`] (one connected `StateManager`), parameters included.
//! - `producer`: [`producer::Producer`], the non-blocking writer whose calls release the GIL.
//! - `streams`: [`streams::Subscription`] and [`streams::Follower`], the long-lived readers.
//!
//! # Invariants
//!
//! - One multi-thread tokio runtime per process ([`runtime`]; one worker, `SCHED_BATCH`) runs
//!   every future, producer writer and follower; nothing here creates another.
//! - No Rust panic reaches Python as a crash: futures are wrapped in `catch_unwind` and
//!   synchronous calls in [`guard`], both turning a panic into `RuntimeError`.
//! - Every library error becomes a Python exception whose message is the error's one-line
//!   report ([`tatbot_state::Error::report`]), with a hint where the caller can act.
//! - Structured results cross the boundary as JSON text, which the Python side decodes into
//!   its models: the glue does not mirror the library's types, so a changed Rust signature is
//!   a one-line fix here.

// These docs are for the extension's maintainers (it has no public Rust API): they link to
// its private items on purpose.
#![allow(rustdoc::private_intra_doc_links)]

mod bridge;
mod manager;
mod producer;
mod streams;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use futures_util::FutureExt as _;
use pyo3::exceptions::{PyConnectionError, PyPermissionError, PyRuntimeError, PyTimeoutError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::{IntoPyObjectExt as _, create_exception, intern};
use tatbot_state::Error;

create_exception!(
    _native,
    CorruptError,
    PyValueError,
    "A stored value or a message breaks the wire contract (wrong type, not JSON, too large)."
);
create_exception!(
    _native,
    NotFoundError,
    pyo3::exceptions::PyLookupError,
    "A session or parameter does not exist (never made, or expired)."
);
create_exception!(
    _native,
    ConflictError,
    PyRuntimeError,
    "A race with another writer was lost; nothing was written. Reading again and retrying may succeed."
);

/// What a library call answers, converted to a Python object once the GIL is held.
pub(crate) enum Reply {
    /// `None`.
    None,
    /// A `bool`.
    Bool(bool),
    /// An `int`.
    Int(u64),
    /// A `str`.
    Text(String),
    /// A `str` or `None`.
    MaybeText(Option<String>),
    /// A `list` of `str` or `None`.
    Texts(Vec<Option<String>>),
    /// A connected manager.
    Manager(manager::Manager),
    /// An open subscription.
    Subscription(streams::Subscription),
}

impl<'py> IntoPyObject<'py> for Reply {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match self {
            Reply::None => Ok(py.None().into_bound(py)),
            Reply::Bool(value) => value.into_bound_py_any(py),
            Reply::Int(value) => value.into_bound_py_any(py),
            Reply::Text(value) => value.into_bound_py_any(py),
            Reply::MaybeText(value) => value.into_bound_py_any(py),
            Reply::Texts(value) => value.into_bound_py_any(py),
            Reply::Manager(value) => value.into_bound_py_any(py),
            Reply::Subscription(value) => value.into_bound_py_any(py),
        }
    }
}

/// A boxed library call that ends in a [`Reply`].
pub(crate) type Pending = Pin<Box<dyn Future<Output = PyResult<Reply>> + Send>>;

/// One library call, not started yet: `await call` runs it on the shared runtime and resumes
/// the asyncio task when it is done; `call.wait()` runs it from a plain thread, blocking that
/// thread with the GIL released. It runs at most once.
#[pyclass(frozen, module = "tatbot_state._native")]
pub(crate) struct Call {
    /// Taken by the first `__await__` or `wait`.
    pending: Mutex<Option<Pending>>,
}

impl Call {
    /// A call of `future`, whose library error becomes a Python exception.
    pub(crate) fn new<F>(future: F) -> Call
    where
        F: Future<Output = PyResult<Reply>> + Send + 'static,
    {
        let guarded = AssertUnwindSafe(future)
            .catch_unwind()
            .map(|outcome| outcome.unwrap_or_else(|panic| Err(panic_error(panic.as_ref()))));
        Call {
            pending: Mutex::new(Some(Box::pin(guarded))),
        }
    }

    pub(crate) fn take(&self) -> PyResult<Pending> {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .ok_or_else(|| PyRuntimeError::new_err("this call was already awaited; make the call again"))
    }
}

#[pymethods]
impl Call {
    /// Makes the call awaitable from a running asyncio loop: the loop's [`bridge::Bridge`]
    /// (`tatbot_state._bridge.run`) starts it and resumes the awaiting task with its result.
    fn __await__<'py>(slf: Bound<'py, Call>) -> PyResult<Bound<'py, PyAny>> {
        // Looked up once: an import per await cost about 1 us on the awaited path.
        static RUN: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        let py = slf.py();
        let run = RUN.import(py, "tatbot_state._bridge", "run")?;
        run.call1((slf,))?.call_method0(intern!(py, "__await__"))
    }

    /// Runs the call to completion on this thread (the GIL is released meanwhile).
    fn wait(&self, py: Python<'_>) -> PyResult<Reply> {
        let pending = self.take()?;
        py.detach(|| runtime().block_on(pending))
    }
}

/// The process's one tokio runtime, made at first use: one worker thread, `SCHED_BATCH`.
///
/// # Panics
///
/// When the operating system refuses the runtime's threads; nothing could run then, and the
/// panic reaches Python as `RuntimeError` where a call is guarded.
pub(crate) fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            // One worker: the Python thread is the other busy thread of the process. With one
            // worker per core (two here) a call's task, the connection's driver and the
            // producer's writer hopped between workers, each hop a wake-up; one worker measured
            // 36,000 to 50,000 acknowledged updates/s from one Python thread against 17,000 to
            // 26,000, and a better awaited ratio (docs/PERFORMANCE.md, "Python package").
            // Blocking calls (`Call::wait`, `flush`) run their futures on the calling thread.
            .worker_threads(1)
            .enable_all()
            .thread_name("tatbot-state")
            .on_thread_start(yield_to_callers)
            .build()
            .expect("the OS refused the tokio runtime's threads")
    })
}

/// Makes the calling thread (one of the runtime's) `SCHED_BATCH`: it still gets its fair share
/// of the CPU, but waking it never preempts the thread that woke it.
///
/// Every awaited call and every producer call that finds the writer parked wakes a runtime
/// thread from the Python thread. As a normal thread, the woken one preempts the Python thread
/// when they share a core (the scheduler favours a thread that slept), and on a loaded machine
/// the Python thread then waits tens of microseconds to milliseconds for the core to come back
/// (docs/PERFORMANCE.md, "Python package"). As a batch thread it runs on an idle core, or once
/// the Python thread blocks (an awaiting loop soon does), and the call returns at once.
/// Best effort: a system that refuses the policy keeps the default.
fn yield_to_callers() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: pid 0 is the calling thread and `param` is a valid sched_param for the call's
        // duration; lowering one's own policy to SCHED_BATCH needs no privilege.
        #[expect(unsafe_code, reason = "sched_setscheduler has no safe wrapper in our dependencies")]
        let _ = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &raw const param) };
    }
}

/// Runs a synchronous call, turning a panic into `RuntimeError` instead of unwinding into
/// Python.
pub(crate) fn guard<T>(call: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    std::panic::catch_unwind(AssertUnwindSafe(call)).unwrap_or_else(|panic| Err(panic_error(panic.as_ref())))
}

fn panic_error(panic: &(dyn std::any::Any + Send)) -> PyErr {
    let what = panic
        .downcast_ref::<&str>()
        .map(|text| (*text).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned());
    PyRuntimeError::new_err(format!(
        "internal error in tatbot-state (a bug, please report it): {what}"
    ))
}

/// The Python exception for a library error: its one-line report, and a hint where the
/// caller can act on it.
pub(crate) fn py_error(err: Error) -> PyErr {
    let line = err.report().to_string();
    match &err {
        Error::InvalidId { .. } | Error::InvalidInput(_) | Error::TooLarge { .. } | Error::Config(_) => {
            PyValueError::new_err(line)
        }
        Error::Decode { .. } | Error::Corrupt { .. } | Error::UnexpectedReply { .. } => CorruptError::new_err(line),
        Error::SessionNotFound(_) | Error::ParamNotFound(_) => NotFoundError::new_err(line),
        Error::Conflict(_) => ConflictError::new_err(line),
        Error::Timeout { .. } => PyTimeoutError::new_err(line),
        Error::Auth { .. } => PyPermissionError::new_err(format!(
            "{line}; hint: pass redis_password= (or set REDIS_PASSWORD) with the server's password"
        )),
        Error::PermissionDenied { .. } => PyPermissionError::new_err(line),
        Error::Unreachable { .. } | Error::NotRedis { .. } => PyConnectionError::new_err(format!(
            "{line}; hint: start redis-server there, or pass redis_host=/redis_port= (or set REDIS_HOST/REDIS_PORT)"
        )),
        Error::MasterSwitched { .. } => PyConnectionError::new_err(format!(
            "{line}; hint: a failover just happened: read the value back, and write it again if it is missing"
        )),
        other if other.is_connection_error() => PyConnectionError::new_err(format!(
            "{line}; hint: check that redis-server is up; the next call connects again by itself"
        )),
        _ => PyRuntimeError::new_err(line),
    }
}

/// `value` as a `u32` index or count named `what`, or `ValueError`.
pub(crate) fn to_u32(what: &str, value: i64) -> PyResult<u32> {
    u32::try_from(value)
        .map_err(|_| PyValueError::new_err(format!("{what} must be from 0 to {}, got {value}", u32::MAX)))
}

/// `seconds` as a timeout, or `ValueError` for a negative, infinite or NaN one.
pub(crate) fn to_duration(what: &str, seconds: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(seconds)
        .map_err(|_| PyValueError::new_err(format!("{what} must be a finite number of seconds >= 0, got {seconds}")))
}

/// `text` parsed as JSON, or `ValueError` naming `what`.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> PyResult<T> {
    serde_json::from_str(text).map_err(|err| PyValueError::new_err(format!("{what} is not valid: {err}")))
}

/// `value` as JSON text (the library's types always serialize).
pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> PyResult<String> {
    serde_json::to_string(value).map_err(|err| PyRuntimeError::new_err(format!("cannot encode as JSON: {err}")))
}

/// Panics on purpose, synchronously or inside an awaited call, so the tests can prove that a
/// Rust panic reaches Python as `RuntimeError` and not as a crash. Not part of the API.
#[pyfunction]
fn _panic_for_tests(message: String, in_future: bool) -> PyResult<Call> {
    if in_future {
        return Ok(Call::new(async move { panic!("{message}") }));
    }
    guard(|| panic!("{message}"))
}

/// The extension module.
#[pymodule]
fn _native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = module.py();
    module.add_class::<Call>()?;
    module.add_class::<bridge::Bridge>()?;
    module.add_class::<manager::Target>()?;
    module.add_class::<manager::Manager>()?;
    module.add_class::<producer::Producer>()?;
    module.add_class::<streams::Subscription>()?;
    module.add_class::<streams::Follower>()?;
    module.add("CorruptError", py.get_type::<CorruptError>())?;
    module.add("NotFoundError", py.get_type::<NotFoundError>())?;
    module.add("ConflictError", py.get_type::<ConflictError>())?;
    module.add_function(wrap_pyfunction!(_panic_for_tests, module)?)?;
    module.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
