//! The time the use cases act at, behind a trait: the service reads the system clock, tests
//! move a manual one, so expiry and monitoring rules are tested without waiting.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::domain::time::to_micros;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> SystemTime;

    /// `now` as stored: UTC microseconds since the Unix epoch.
    fn now_micros(&self) -> i64 {
        to_micros(self.now())
    }
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that stands still until moved.
#[derive(Debug)]
pub struct ManualClock(Mutex<SystemTime>);

impl ManualClock {
    pub fn new(start: SystemTime) -> Self {
        Self(Mutex::new(start))
    }

    pub fn advance(&self, by: Duration) {
        let mut now = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
