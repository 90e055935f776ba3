//! A TCP proxy a test can cut and restore: a dependency that goes down and comes back, at the
//! socket level, without touching the shared server behind it. Down closes the listener and
//! every proxied connection (clients see their pooled connections end and new ones refused);
//! up listens again on the same port.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Mutex;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub struct Proxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    /// Cancelled to take the proxy down; replaced when it comes back up.
    running: Mutex<Option<CancellationToken>>,
}

impl Proxy {
    /// A proxy on a free loopback port, forwarding to `upstream`, up.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let proxy = Self {
            addr,
            upstream,
            running: Mutex::new(None),
        };
        proxy.serve(listener);
        proxy
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Takes the dependency down: no listener, every open connection closed.
    pub fn down(&self) {
        if let Some(stop) = self.running.lock().unwrap().take() {
            stop.cancel();
        }
    }

    /// Brings it back on the same port.
    pub async fn up(&self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    fn serve(&self, listener: TcpListener) {
        let stop = CancellationToken::new();
        *self.running.lock().unwrap() = Some(stop.clone());
        let upstream = self.upstream;
        tokio::spawn(async move {
            loop {
                let (mut client, _) = tokio::select! {
                    () = stop.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(_) => continue,
                    },
                };
                let stop = stop.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        () = stop.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    }
                });
            }
        });
    }
}
