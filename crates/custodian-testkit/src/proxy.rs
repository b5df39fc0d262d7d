//! A loopback TCP proxy that counts what clients send and can cut every connection: how the
//! resumable-upload tests give a client one stable address across daemon restarts, drop its
//! connection mid-transfer, and measure how many bytes it sent in total.

use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A running proxy; it stops when dropped.
pub struct Proxy {
    /// The address clients connect to, `127.0.0.1:PORT`.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

struct Shared {
    upstream: Mutex<SocketAddr>,
    sent: AtomicU64,
    open: Mutex<Vec<TcpStream>>,
    stop: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Proxy {
    /// Starts a proxy to `upstream` (an `http://host:port` address or `host:port`).
    pub fn start(upstream: &str) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream: Mutex::new(parse(upstream)?),
            sent: AtomicU64::new(0),
            open: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let accepting = shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if accepting.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let shared = accepting.clone();
                std::thread::spawn(move || serve(client, shared));
            }
        });
        Ok(Proxy { addr, shared })
    }

    /// The address as a gRPC client's `--server`: `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Points new connections at another upstream (a restarted daemon's new port).
    pub fn set_upstream(&self, upstream: &str) -> std::io::Result<()> {
        *lock(&self.shared.upstream) = parse(upstream)?;
        Ok(())
    }

    /// Bytes clients have sent through the proxy so far.
    pub fn sent(&self) -> u64 {
        self.shared.sent.load(Ordering::SeqCst)
    }

    /// Cuts every open connection, both ways, as a network failure would.
    pub fn drop_connections(&self) {
        for stream in lock(&self.shared.open).drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.drop_connections();
        // Wakes the accept loop so that it sees the stop flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

fn parse(upstream: &str) -> std::io::Result<SocketAddr> {
    let bare = upstream
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/');
    bare.parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{bare}: {e}")))
}

fn serve(client: TcpStream, shared: Arc<Shared>) {
    let target = *lock(&shared.upstream);
    let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(2)) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let (Ok(client_r), Ok(server_r)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    {
        let mut open = lock(&shared.open);
        open.push(client.try_clone().expect("clone"));
        open.push(server.try_clone().expect("clone"));
    }
    let up = shared.clone();
    let upward = std::thread::spawn(move || pump(client_r, server, Some(&up.sent)));
    pump(server_r, client, None);
    let _ = upward.join();
}

/// Copies `from` to `to` until either side closes, counting into `count`; then closes both.
fn pump(mut from: TcpStream, mut to: TcpStream, count: Option<&AtomicU64>) {
    use std::io::{Read as _, Write as _};
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(count) = count {
            count.fetch_add(n as u64, Ordering::SeqCst);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
