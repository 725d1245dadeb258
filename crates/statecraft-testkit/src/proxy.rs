//! [`FaultProxy`]: a TCP proxy on loopback between a client and a real
//! server that injects faults, switchable while connections are open.

use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does to the traffic it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything at once.
    Pass,
    /// Hold every chunk for this long before forwarding it.
    Latency(Duration),
    /// Accept connections and forward nothing, in either direction, until
    /// the fault changes (as a network that drops packets: TCP stays up and
    /// what was held is delivered after healing, unless a side gave up).
    Blackhole,
    /// Reset every open connection (RST) and every new one.
    Reset,
}

/// A fault-injecting TCP proxy: connect clients to [`addr`](Self::addr)
/// instead of the server's address, then [`set`](Self::set) faults. It
/// runs on a thread of its own (so it serves sync and async tests alike)
/// and stops when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    fault: watch::Sender<Fault>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// A proxy forwarding to `upstream` (a loopback `host:port`), passing
    /// traffic until told otherwise.
    pub fn start(upstream: SocketAddr) -> FaultProxy {
        let std_listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("the proxy binds a loopback port");
        std_listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let addr = std_listener.local_addr().expect("the proxy's address");
        let (fault, watcher) = watch::channel(Fault::Pass);
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(format!("fault-proxy-{}", addr.port()))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("the proxy's runtime");
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(std_listener).expect("listener");
                    tokio::select! {
                        () = accept(listener, upstream, watcher) => {}
                        _ = stopped => {}
                    }
                });
            })
            .expect("the proxy's thread");
        FaultProxy {
            addr,
            fault,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Switches to `fault`, for open and new connections.
    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    /// Back to [`Fault::Pass`].
    pub fn heal(&self) {
        self.set(Fault::Pass);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept(listener: TcpListener, upstream: SocketAddr, fault: watch::Receiver<Fault>) {
    while let Ok((client, _)) = listener.accept().await {
        tokio::spawn(serve(client, upstream, fault.clone()));
    }
}

/// Resolves when the fault is [`Fault::Reset`].
async fn until_reset(mut fault: watch::Receiver<Fault>) {
    let _ = fault.wait_for(|fault| *fault == Fault::Reset).await;
}

async fn serve(mut client: TcpStream, upstream: SocketAddr, mut fault: watch::Receiver<Fault>) {
    // A new connection waits out a blackhole before reaching the server.
    loop {
        let now = *fault.borrow_and_update();
        match now {
            Fault::Reset => return reset(&client),
            Fault::Blackhole => {
                if fault.changed().await.is_err() {
                    return;
                }
            }
            Fault::Pass | Fault::Latency(_) => break,
        }
    }
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return reset(&client);
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let was_reset = {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        let forward = async {
            tokio::join!(
                pump(client_read, server_write, fault.clone()),
                pump(server_read, client_write, fault.clone())
            )
        };
        tokio::select! {
            _ = forward => *fault.borrow() == Fault::Reset,
            () = until_reset(fault.clone()) => true,
        }
    };
    if was_reset {
        reset(&client);
        reset(&server);
    }
}

/// Closes with a reset rather than an orderly shutdown.
fn reset(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

async fn pump(
    mut from: tokio::net::tcp::ReadHalf<'_>,
    mut to: tokio::net::tcp::WriteHalf<'_>,
    mut fault: watch::Receiver<Fault>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        loop {
            let now = *fault.borrow_and_update();
            match now {
                Fault::Pass => break,
                Fault::Latency(delay) => {
                    tokio::time::sleep(delay).await;
                    break;
                }
                Fault::Blackhole => {
                    if fault.changed().await.is_err() {
                        return;
                    }
                }
                Fault::Reset => return,
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
