//! The in-tree peer for `corecast bench --compare`: the broadcast server a Rust developer would
//! write first with tokio and tokio-tungstenite, to compare corecast against on the same machine.
//! The server itself is `relay` (the bench's tests start it in-process too); this is its command.
//!
//! Run: `cargo bench --bench peer_tokio -- PORT` (0 picks a free port); it prints
//! `listening ws=127.0.0.1:PORT` and serves until killed. With the bench:
//! `corecast bench --compare --peer 'tokio=cargo bench -q --bench peer_tokio -- {port}'`.

mod relay;

use std::net::SocketAddr;

use tokio::net::TcpListener;

#[tokio::main]
async fn main() {
    let port: u16 = std::env::args()
        .skip(1)
        .find(|arg| !arg.starts_with('-'))
        .and_then(|arg| arg.parse().ok())
        .unwrap_or(0);
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .expect("bind the peer's port");
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    println!("listening ws={addr}");
    relay::serve(listener).await;
}
