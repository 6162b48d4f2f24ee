//! [`Producer`]: the robot's write path for Python, over [`tatbot_state::Producer`].
//!
//! Every queuing call is a plain synchronous method: it validates, queues and returns the
//! write's sequence number without waiting on Redis; the writer works on the runtime's threads,
//! which never take the GIL. A queuing call keeps the GIL for its sub-microsecond push: released,
//! it would go to any other Python thread that wants it, and this thread would wait up to the
//! interpreter's switch interval (5 ms) to get it back, which was the worst tail of these calls
//! in a process with a busy second thread. `flush`, `close` and `start_stroke_session` wait on
//! Redis and release the GIL meanwhile. The Python package's `Producer` binds these methods
//! directly (no Python frame on the hot path) and adds the ones that take pydantic models,
//! handing their JSON down.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyString;
use tatbot_state::model::{NodeHealth, RobotState};
use tatbot_state::producer::MIN_POLL_INTERVAL;
use tatbot_state::{CancellationToken, Category, ProducerConfig, SessionId, StateManager, Wake};

use crate::manager::{document, error_details, progress_update};
use crate::{guard, py_error, runtime, to_duration, to_json, to_u32};

/// A non-blocking writer with its own background task on the shared runtime.
#[pyclass(module = "tatbot_state._native")]
pub(crate) struct Producer {
    producer: tatbot_state::Producer,
    /// The session the last `start_stroke_session` started: the one calls without a
    /// `session_id` write to. Parsed once, so the hot path does not validate it again.
    current: Mutex<Option<SessionId>>,
    /// Stops the writer when this object goes away without `close`.
    stop: CancellationToken,
    /// The description strings of the last update; see [`LastDescriptions`].
    descriptions: Mutex<LastDescriptions>,
}

/// A description argument of `update_stroke_progress`: the string given, or none (the empty
/// default). Anything but a `str` is a `TypeError`, as for any text argument.
enum Description<'py> {
    Omitted,
    Given(Bound<'py, PyString>),
}

impl<'py> FromPyObject<'_, 'py> for Description<'py> {
    type Error = PyErr;

    fn extract(object: Borrowed<'_, 'py, PyAny>) -> PyResult<Description<'py>> {
        Ok(Description::Given(object.cast::<PyString>()?.to_owned()))
    }
}

/// The longest description kept in [`LastDescriptions`] (bytes); a longer one is converted on
/// every call (and refused by the update when over the limit) rather than kept.
const KEPT_DESCRIPTION: usize = 256;

/// The description strings of the last update, left and right, each with its Rust copy: a
/// control loop passes the same string objects call after call (constants, a stroke's fields),
/// and a call that gets the object it got last time skips the conversion (under the stable ABI
/// a bytes object, a copy and two frees: up to 1 us of a loop's first call after it slept,
/// docs/PERFORMANCE.md). Holding the object keeps it alive, so that no new string can take its
/// address.
///
/// Only exact `str` objects are kept: freeing one runs no Python code, and the garbage
/// collector has nothing to find in it. No Python code runs while the lock is held (the
/// conversion, whose error is a Python object, and the drop of the entry replaced both happen
/// outside it), so the lock can never be held by a thread that waits for the GIL; it is taken
/// with `try_lock` all the same, a busy lock counting as a miss.
#[derive(Default)]
struct LastDescriptions([Option<(Py<PyString>, String)>; 2]);

impl Producer {
    pub(crate) fn start(
        state: &StateManager,
        max_queued: Option<i64>,
        poll_interval_us: Option<i64>,
    ) -> PyResult<Producer> {
        let mut config = ProducerConfig::default();
        if let Some(micros) = poll_interval_us {
            let micros = u64::try_from(micros)
                .ok()
                .filter(|micros| *micros >= MIN_POLL_INTERVAL.as_micros() as u64)
                .ok_or_else(|| {
                    PyValueError::new_err(format!(
                        "poll_interval_us must be at least {}, got {micros}",
                        MIN_POLL_INTERVAL.as_micros()
                    ))
                })?;
            config.wake = Wake::Poll(Duration::from_micros(micros));
        }
        if let Some(max_queued) = max_queued {
            config.max_queued = usize::try_from(max_queued)
                .ok()
                .filter(|bound| *bound > 0)
                .ok_or_else(|| PyValueError::new_err(format!("max_queued must be at least 1, got {max_queued}")))?;
        }
        let stop = CancellationToken::new();
        // The writer task is spawned on the shared runtime, which needs its context here.
        let _entered = runtime().enter();
        let producer = state.producer(config, stop.clone());
        Ok(Producer {
            producer,
            current: Mutex::new(None),
            stop,
            descriptions: Mutex::default(),
        })
    }

    /// The text of `given`, for the `side` (0 left, 1 right); see [`LastDescriptions`].
    fn description(&self, side: usize, given: &Description<'_>) -> PyResult<String> {
        let Description::Given(object) = given else {
            return Ok(String::new());
        };
        let keep = object.is_exact_instance_of::<PyString>();
        if keep
            && let Ok(last) = self.descriptions.try_lock()
            && let Some((kept, text)) = &last.0[side]
            && kept.as_ptr() == object.as_ptr()
        {
            return Ok(text.clone());
        }
        let text = object.to_cow()?.into_owned();
        if keep && text.len() <= KEPT_DESCRIPTION {
            let entry = Some((object.clone().unbind(), text.clone()));
            let replaced = match self.descriptions.try_lock() {
                Ok(mut last) => std::mem::replace(&mut last.0[side], entry),
                Err(_) => entry,
            };
            // Dropped here, after the lock.
            drop(replaced);
        }
        Ok(text)
    }

    /// Runs `body` with `session_id`, or with the current session when `None` (borrowed under
    /// its lock, not copied).
    fn with_session<T>(&self, session_id: Option<&str>, body: impl FnOnce(&SessionId) -> PyResult<T>) -> PyResult<T> {
        if let Some(text) = session_id {
            return body(&SessionId::new(text).map_err(py_error)?);
        }
        let current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let session_id = current.as_ref().ok_or_else(|| {
            PyValueError::new_err(
                "no current stroke session; hint: call start_stroke_session() first or pass session_id=",
            )
        })?;
        body(session_id)
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[pymethods]
impl Producer {
    /// Starts a session (blocking: its id comes from Redis) and makes it the current one; a
    /// Redis restart that loses it is repaired like any other recent write.
    #[pyo3(signature = (total_strokes, stroke_length, scene_name="default".to_owned()))]
    fn start_stroke_session(
        &self,
        py: Python<'_>,
        total_strokes: i64,
        stroke_length: i64,
        scene_name: String,
    ) -> PyResult<String> {
        let total_strokes = to_u32("total_strokes", total_strokes)?;
        let stroke_length = to_u32("stroke_length", stroke_length)?;
        let producer = self.producer.clone();
        let plan = tatbot_state::SessionPlan {
            total_strokes,
            stroke_length,
            scene: scene_name,
        };
        let session_id = py.detach(|| {
            guard(|| {
                runtime()
                    .block_on(async { producer.start_stroke_session(&plan).await })
                    .map_err(py_error)
            })
        })?;
        let text = session_id.to_string();
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(session_id);
        Ok(text)
    }

    /// The current session's id, or `None`.
    #[getter]
    fn session_id(&self) -> Option<String> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(ToString::to_string)
    }

    /// Queues a progress update of `session_id` (the current session when `None`); returns its
    /// sequence number at once.
    #[pyo3(signature = (
        stroke_idx,
        pose_idx=0,
        stroke_description_l=Description::Omitted,
        stroke_description_r=Description::Omitted,
        offset_idx_l=0,
        offset_idx_r=0,
        session_id=None,
    ))]
    #[expect(clippy::too_many_arguments, reason = "the old Python API's keyword arguments")]
    fn update_stroke_progress(
        &self,
        stroke_idx: i64,
        pose_idx: i64,
        stroke_description_l: Description<'_>,
        stroke_description_r: Description<'_>,
        offset_idx_l: i64,
        offset_idx_r: i64,
        session_id: Option<&str>,
    ) -> PyResult<u64> {
        let descriptions = (
            self.description(0, &stroke_description_l)?,
            self.description(1, &stroke_description_r)?,
        );
        self.with_session(session_id, |session_id| {
            // Checked after the session, as before; its errors run no Python code.
            let update = progress_update(stroke_idx, pose_idx, descriptions, (offset_idx_l, offset_idx_r))?;
            guard(|| {
                self.producer
                    .update_stroke_progress_owned(session_id, update)
                    .map_err(py_error)
            })
        })
    }

    /// Queues the end of `session_id` (the current session when `None`), after every update
    /// queued before it.
    #[pyo3(signature = (session_id=None))]
    fn end_stroke_session(&self, session_id: Option<&str>) -> PyResult<u64> {
        let ended = self.with_session(session_id, |session_id| Ok(session_id.clone()))?;
        let seq = guard(|| Ok(self.producer.end_stroke_session(&ended)))?;
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if current.as_ref() == Some(&ended) {
            *current = None;
        }
        Ok(seq)
    }

    /// Queues a robot state given as RobotState JSON.
    fn _update_robot_state_json(&self, state_json: &str) -> PyResult<u64> {
        let state: RobotState = document("robot_state", state_json)?;
        guard(|| self.producer.update_robot_state(&state).map_err(py_error))
    }

    /// Queues a heartbeat given as NodeHealth JSON.
    fn _update_node_health_json(&self, health_json: &str) -> PyResult<u64> {
        let health: NodeHealth = document("health", health_json)?;
        guard(|| self.producer.update_node_health(&health).map_err(py_error))
    }

    /// Queues an error report; `details_json` is a JSON object.
    fn _report_error_json(&self, category: &str, message: &str, details_json: &str) -> PyResult<u64> {
        let category = Category::new(category).map_err(py_error)?;
        let details = error_details(details_json)?;
        guard(|| {
            self.producer
                .report_error(&category, message, details)
                .map_err(py_error)
        })
    }

    /// Blocks until every write queued before this call is stored (or counted as dropped or
    /// refused), at most `timeout` seconds.
    #[pyo3(signature = (timeout=5.0))]
    fn flush(&self, py: Python<'_>, timeout: f64) -> PyResult<()> {
        let limit = to_duration("timeout", timeout)?;
        py.detach(|| guard(|| runtime().block_on(self.producer.flush(limit)).map_err(py_error)))
    }

    /// Flushes, waits out the durability horizon, and stops the writer, within `timeout`
    /// seconds; the writer is stopped either way.
    #[pyo3(signature = (timeout=5.0))]
    fn close(&self, py: Python<'_>, timeout: f64) -> PyResult<()> {
        let limit = to_duration("timeout", timeout)?;
        py.detach(|| guard(|| runtime().block_on(self.producer.close(limit)).map_err(py_error)))
    }

    /// The counters as JSON (`enqueued`, `acknowledged`, `queued`, `dropped`, ...).
    fn _stats_json(&self) -> PyResult<String> {
        to_json(&self.producer.stats())
    }

    /// How the writer was woken, as JSON (`call_wakes`, `anticipated`, `missed`, `late`,
    /// `lead_us`); all zero unless the wake is the default (anticipated).
    fn _wake_stats_json(&self) -> PyResult<String> {
        to_json(&self.producer.wake_stats())
    }
}
