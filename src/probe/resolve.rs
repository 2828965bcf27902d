//! Name lookups off tokio's blocking pool. `tokio::net::lookup_host` runs getaddrinfo there, and a
//! lookup outlives the stage timeout that stopped waiting for it: slow DNS would fill the pool
//! the database also needs. Here each lookup gets a short-lived thread of its own, at most
//! `MAX_LOOKUPS` at once (a further lookup is refused at once, never queued), and the caller's
//! stage timeout ends the wait.
//!
//! Why not an async resolver (hickory-resolver): it would add about twenty crates (hickory-proto,
//! moka, crossbeam, …) and answer differently from the system resolver (nsswitch, search domains)
//! that operators configure; a bounded set of threads gives the same isolation.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs as _};

use tokio::sync::{Semaphore, oneshot};

/// Most lookups in progress at once, hung ones included.
const MAX_LOOKUPS: usize = 16;

static LOOKUPS: Semaphore = Semaphore::const_new(MAX_LOOKUPS);

/// The addresses of `host`, looked up by the system resolver on a thread of its own.
pub async fn lookup(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    let host = host.to_owned();
    off_pool(&LOOKUPS, move || {
        (host.as_str(), port)
            .to_socket_addrs()
            .map(Iterator::collect)
    })
    .await
}

/// Runs `work` on a new thread while one of `slots` is free; the slot stays taken until the work
/// ends, even when the caller stopped waiting.
async fn off_pool<T: Send + 'static>(
    slots: &'static Semaphore,
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let slot = slots.try_acquire().map_err(|_| {
        io::Error::new(
            io::ErrorKind::WouldBlock,
            "too many name lookups are in progress; retry shortly",
        )
    })?;
    let (answer, answered) = oneshot::channel();
    std::thread::Builder::new()
        .name("probe-lookup".to_owned())
        .spawn(move || {
            let _slot = slot;
            let _ = answer.send(work());
        })?;
    answered
        .await
        .map_err(|_| io::Error::other("the name lookup ended without an answer"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hung_lookups_hold_their_slots_and_the_next_is_refused_at_once() {
        static SLOTS: Semaphore = Semaphore::const_new(2);
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let hold = std::sync::Arc::new(std::sync::Mutex::new(hold));
        let hung: Vec<_> = (0..2)
            .map(|_| {
                let hold = hold.clone();
                tokio::spawn(off_pool(&SLOTS, move || {
                    let _ = hold.lock().unwrap().recv();
                    Ok(())
                }))
            })
            .collect();
        while SLOTS.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        let refused = off_pool(&SLOTS, || Ok(())).await.unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::WouldBlock);
        drop(release);
        for lookup in hung {
            lookup.await.unwrap().unwrap();
        }
        assert_eq!(off_pool(&SLOTS, || Ok(7)).await.unwrap(), 7);
    }

    /// With tokio's one blocking thread busy, a lookup still answers: it never waits for the pool.
    #[test]
    fn lookups_do_not_wait_for_the_blocking_pool() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .max_blocking_threads(1)
            .build()
            .unwrap();
        let (release, hold) = std::sync::mpsc::channel::<()>();
        runtime.spawn_blocking(move || hold.recv());
        let answer = runtime.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(5), lookup("localhost", 25)).await
        });
        drop(release);
        let addresses = answer
            .expect("the lookup waited for the blocking pool")
            .unwrap();
        assert!(
            addresses.iter().all(|a| a.ip().is_loopback()),
            "{addresses:?}"
        );
    }
}
