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
}

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
        })
    }

    fn session(&self, session_id: Option<&str>) -> PyResult<SessionId> {
        if let Some(text) = session_id {
            return SessionId::new(text).map_err(py_error);
        }
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| {
                PyValueError::new_err(
                    "no current stroke session; hint: call start_stroke_session() first or pass session_id=",
                )
            })
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
        stroke_description_l=String::new(),
        stroke_description_r=String::new(),
        offset_idx_l=0,
        offset_idx_r=0,
        session_id=None,
    ))]
    #[expect(clippy::too_many_arguments, reason = "the old Python API's keyword arguments")]
    fn update_stroke_progress(
        &self,
        stroke_idx: i64,
        pose_idx: i64,
        stroke_description_l: String,
        stroke_description_r: String,
        offset_idx_l: i64,
        offset_idx_r: i64,
        session_id: Option<&str>,
    ) -> PyResult<u64> {
        let session_id = self.session(session_id)?;
        let update = progress_update(
            stroke_idx,
            pose_idx,
            (stroke_description_l, stroke_description_r),
            (offset_idx_l, offset_idx_r),
        )?;
        guard(|| {
            self.producer
                .update_stroke_progress(&session_id, &update)
                .map_err(py_error)
        })
    }

    /// Queues the end of `session_id` (the current session when `None`), after every update
    /// queued before it.
    #[pyo3(signature = (session_id=None))]
    fn end_stroke_session(&self, session_id: Option<&str>) -> PyResult<u64> {
        let session_id = self.session(session_id)?;
        let seq = guard(|| Ok(self.producer.end_stroke_session(&session_id)))?;
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if current.as_ref() == Some(&session_id) {
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
}
