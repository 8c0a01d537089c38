//! A TCP proxy on 127.0.0.1 that can make a network path go *silent*, the way a
//! firewall or NAT that forgets its connections does: the connections it carried
//! stay open but nothing passes any more, in either direction, and nothing is
//! closed or reset. Neither side's socket reports an error; only a deadline can
//! tell. Unlike `pg_terminate_backend`, which the client sees at once.
//!
//! ```ignore
//! let proxy = Proxy::start(cluster().port()).await;
//! // ... point a client at proxy.url("db") ...
//! proxy.go_silent();     // every connection so far, and new ones, go mute
//! proxy.come_back();     // new connections work again; the old ones never do
//! ```
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

pub struct Proxy {
    pub port: u16,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Shared {
    /// New connections are silenced from the start while this is set.
    blackout: AtomicBool,
    /// One flag per connection accepted so far.
    connections: Mutex<Vec<Arc<AtomicBool>>>,
}

impl Proxy {
    /// Listen on a free loopback port and forward to `upstream_port` on 127.0.0.1.
    pub async fn start(upstream_port: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared::default());
        let accepting = shared.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let silenced = Arc::new(AtomicBool::new(accepting.blackout.load(Ordering::SeqCst)));
                accepting.connections.lock().unwrap().push(silenced.clone());
                tokio::spawn(carry(client, upstream_port, silenced));
            }
        });
        Proxy {
            port,
            shared,
            accept,
        }
    }

    /// `url`, a `postgres://user@127.0.0.1:PORT/db` URL, with its port replaced
    /// by the proxy's.
    pub fn route(&self, url: &str, upstream_port: u16) -> String {
        url.replace(
            &format!("127.0.0.1:{upstream_port}/"),
            &format!("127.0.0.1:{}/", self.port),
        )
    }

    /// Every connection carried so far goes mute for good, and so does every
    /// connection opened until [`Proxy::come_back`].
    pub fn go_silent(&self) {
        self.shared.blackout.store(true, Ordering::SeqCst);
        for c in self.shared.connections.lock().unwrap().iter() {
            c.store(true, Ordering::SeqCst);
        }
    }

    /// New connections are carried again; the silenced ones stay mute.
    pub fn come_back(&self) {
        self.shared.blackout.store(false, Ordering::SeqCst);
    }

    /// How many connections have been accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.lock().unwrap().len()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn carry(client: TcpStream, upstream_port: u16, silenced: Arc<AtomicBool>) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)).await else {
        return;
    };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::spawn(pump(client_read, server_write, silenced.clone()));
    tokio::spawn(pump(server_read, client_write, silenced));
}

/// Copy one direction until either side closes, unless the connection is
/// silenced: then whatever was read is dropped and both halves are held open,
/// untouched, for as long as the test runs.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, silenced: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if silenced.load(Ordering::SeqCst) {
            let _held = (from, to);
            let never: std::convert::Infallible = std::future::pending().await;
            match never {}
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
