//! Latency samples and their percentiles.
//!
//! Percentiles use the nearest-rank definition (the smallest sample with at least `q` of the
//! samples at or below it), so every figure reported is a latency that was really observed.

use std::time::Duration;

/// Latencies of one measurement, in the order they were taken.
#[derive(Debug, Default)]
pub struct Samples {
    durations: Vec<Duration>,
    /// Whether `durations` is sorted; percentiles sort it once.
    sorted: bool,
}

impl Samples {
    /// Room for `capacity` samples, so recording never allocates inside a timed loop.
    pub fn with_capacity(capacity: usize) -> Samples {
        Samples {
            durations: Vec::with_capacity(capacity),
            sorted: false,
        }
    }

    /// Records one latency.
    pub fn push(&mut self, duration: Duration) {
        self.durations.push(duration);
        self.sorted = false;
    }

    /// Adds the samples of `other` (another round of the same measurement).
    pub fn extend(&mut self, other: Samples) {
        self.durations.extend(other.durations);
        self.sorted = false;
    }

    /// The `q` quantile (0 < q <= 1) in microseconds, or `None` without samples.
    pub fn percentile_us(&mut self, q: f64) -> Option<f64> {
        if self.durations.is_empty() {
            return None;
        }
        if !self.sorted {
            self.durations.sort_unstable();
            self.sorted = true;
        }
        let n = self.durations.len();
        // Nearest rank: ceil(q * n), 1-based, clamped to the samples we have.
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
        Some(self.durations[rank - 1].as_secs_f64() * 1e6)
    }
}

/// The median of `values`, or `None` when there are none; NaNs sort last.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    Some(sorted[(sorted.len() - 1) / 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nearest-rank percentiles of 1..=100 us are the obvious ones; no samples gives `None`.
    #[test]
    fn nearest_rank() {
        let mut samples = Samples::with_capacity(100);
        assert_eq!(samples.percentile_us(0.5), None);
        for micros in (1..=100).rev() {
            samples.push(Duration::from_micros(micros));
        }
        assert_eq!(samples.percentile_us(0.5), Some(50.0));
        assert_eq!(samples.percentile_us(0.99), Some(99.0));
        assert_eq!(samples.percentile_us(0.999), Some(100.0));
        assert_eq!(samples.percentile_us(1.0), Some(100.0));
    }

    /// Rounds added together give the percentiles of all their samples.
    #[test]
    fn rounds_add_up() {
        let mut first = Samples::with_capacity(2);
        first.push(Duration::from_micros(3));
        first.push(Duration::from_micros(1));
        assert_eq!(first.percentile_us(1.0), Some(3.0));
        let mut second = Samples::with_capacity(2);
        second.push(Duration::from_micros(4));
        second.push(Duration::from_micros(2));
        first.extend(second);
        assert_eq!(first.percentile_us(0.5), Some(2.0));
        assert_eq!(first.percentile_us(1.0), Some(4.0));
    }

    /// The median of an even count is the lower middle value, a value that was measured.
    #[test]
    fn median_is_measured() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.0));
    }
}
