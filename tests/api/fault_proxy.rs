//! A TCP proxy on loopback between the service and a peer it depends on (Postgres, the SMTP
//! relay) that the tests turn from passing bytes to stalling, cutting or resetting every
//! connection, and back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Bytes flow both ways.
    Pass,
    /// Connections stay open and nothing moves (a hung peer or a black-holed route); new ones
    /// are accepted and stall too.
    Stall,
    /// Every connection is closed (FIN), and new ones are closed at once.
    Cut,
    /// Every connection is reset (RST), and new ones are reset at once.
    Reset,
}

pub struct FaultProxy {
    pub addr: SocketAddr,
    fault: watch::Sender<Fault>,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let (fault, watching) = watch::channel(Fault::Pass);
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(relay(client, upstream, watching.clone()));
            }
        });
        Self {
            addr,
            fault,
            accepted,
            task,
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Ends a connection as the fault says: RST for Reset (linger 0), FIN otherwise.
fn end(stream: TcpStream, fault: Fault) {
    if fault == Fault::Reset {
        let _ = stream.set_zero_linger();
    }
    drop(stream);
}

async fn relay(client: TcpStream, upstream: SocketAddr, mut fault: watch::Receiver<Fault>) {
    let now = *fault.borrow_and_update();
    if matches!(now, Fault::Cut | Fault::Reset) {
        return end(client, now);
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        return end(client, Fault::Reset);
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let mut up = [0u8; 16 * 1024];
    let mut down = [0u8; 16 * 1024];
    loop {
        let current = *fault.borrow_and_update();
        match current {
            Fault::Cut | Fault::Reset => {
                let client = client_read.reunite(client_write).expect("one stream");
                let server = server_read.reunite(server_write).expect("one stream");
                end(client, current);
                end(server, current);
                return;
            }
            // Nothing moves until the fault changes.
            Fault::Stall => {
                if fault.changed().await.is_err() {
                    return;
                }
            }
            Fault::Pass => {
                tokio::select! {
                    read = client_read.read(&mut up) => match read {
                        Ok(0) | Err(_) => return,
                        Ok(n) => if server_write.write_all(&up[..n]).await.is_err() { return },
                    },
                    read = server_read.read(&mut down) => match read {
                        Ok(0) | Err(_) => return,
                        Ok(n) => if client_write.write_all(&down[..n]).await.is_err() { return },
                    },
                    changed = fault.changed() => if changed.is_err() { return },
                }
            }
        }
    }
}
