//! What this process holds: open file descriptors, OS threads, and the alive tasks of the tokio
//! runtime it is asked from. The probe leak test and `benches/probes.rs` check that many probes
//! give all of them back. The counts are the whole process's: the test relies on nextest running
//! each test in a process of its own (scripts/test).

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub fds: usize,
    pub tasks: usize,
    pub threads: usize,
}

impl Held {
    /// The counts now, with the tasks of the current runtime (call it inside one).
    pub fn now() -> Self {
        Self {
            fds: entries("/proc/self/fd"),
            tasks: tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks(),
            threads: entries("/proc/self/task"),
        }
    }

    /// Waits until descriptors and tasks are down to `start` again, for at most `patience`, and
    /// returns the counts then: the far end of a closed connection and a finishing task take a
    /// moment to let go.
    pub async fn back_to(start: Held, patience: Duration) -> Held {
        let give_up = tokio::time::Instant::now() + patience;
        loop {
            let now = Held::now();
            if (now.fds <= start.fds && now.tasks <= start.tasks)
                || tokio::time::Instant::now() >= give_up
            {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Entries of a /proc folder (the listing's own descriptor counts too, the same every time).
fn entries(folder: &str) -> usize {
    std::fs::read_dir(folder).map_or(0, Iterator::count)
}
