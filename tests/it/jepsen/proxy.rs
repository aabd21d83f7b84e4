//! Fault-injecting TCP proxies on loopback, one in front of every member's
//! peer listener and one in front of every member's client listener.
//!
//! Links are directed: `(from, to)` governs the bytes that flow from node
//! `from` to node `to`, whoever opened the connection. A connection from
//! member A to B's peer proxy carries A→B requests and B→A answers, so its
//! two directions obey links (A, B) and (B, A).
//!
//! Every member dials B at the same advertised URL (etcd derives member ids
//! from peer URLs, so they cannot differ per dialer); the proxy learns who
//! dialled by finding the connecting socket's inode in `/proc/net/tcp` and
//! the member process that holds it in `/proc/<pid>/fd`.
//!
//! A dropped link is a blackhole that keeps TCP's promise: the proxy stops
//! reading, so bytes queue (and the sender eventually blocks) until the link
//! heals — as with a real partition and retransmission, never a corrupted
//! stream. A delayed link sleeps before forwarding each chunk. A severed
//! link discards what it reads and closes the connection: nothing sent
//! over it while severed is ever delivered, even after a heal (the torn-WAL
//! nemesis relies on that: what the isolated member said is lost).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Node {
    Member(usize),
    /// The test's clients.
    Client,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    Pass,
    Drop,
    Delay(Duration),
    /// Discard and close: bytes read while severed are never delivered.
    Sever,
}

#[derive(Default)]
struct NetState {
    links: HashMap<(Node, Node), Link>,
    /// Real (process) ports per member: (client, peer).
    upstream: Vec<(u16, u16)>,
    pids: Vec<Option<u32>>,
}

/// The proxies of one cluster and the link table they obey.
pub struct Net {
    state: Arc<Mutex<NetState>>,
    /// Proxy ports per member: (client, peer).
    pub ports: Vec<(u16, u16)>,
    shutdown: watch::Sender<bool>,
    /// Connections whose dialler could not be identified (treated as Client).
    pub unknown_sources: Arc<Mutex<u64>>,
}

impl Net {
    pub async fn start(n: usize) -> Net {
        let state = Arc::new(Mutex::new(NetState {
            links: HashMap::new(),
            upstream: vec![(0, 0); n],
            pids: vec![None; n],
        }));
        let (shutdown, rx) = watch::channel(false);
        let unknown = Arc::new(Mutex::new(0));
        let mut ports = Vec::new();
        for i in 0..n {
            let cl = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let pl = TcpListener::bind("127.0.0.1:0").await.unwrap();
            ports.push((
                cl.local_addr().unwrap().port(),
                pl.local_addr().unwrap().port(),
            ));
            tokio::spawn(accept_loop(
                cl,
                i,
                false,
                state.clone(),
                rx.clone(),
                unknown.clone(),
            ));
            tokio::spawn(accept_loop(
                pl,
                i,
                true,
                state.clone(),
                rx.clone(),
                unknown.clone(),
            ));
        }
        Net {
            state,
            ports,
            shutdown,
            unknown_sources: unknown,
        }
    }

    pub fn set_upstream(&self, i: usize, client: u16, peer: u16) {
        self.state.lock().unwrap().upstream[i] = (client, peer);
    }

    pub fn set_pid(&self, i: usize, pid: Option<u32>) {
        self.state.lock().unwrap().pids[i] = pid;
    }

    /// The client endpoint of member i through its proxy.
    pub fn client_endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[i].0)
    }

    pub fn set(&self, from: Node, to: Node, l: Link) {
        let mut s = self.state.lock().unwrap();
        if l == Link::Pass {
            s.links.remove(&(from, to));
        } else {
            s.links.insert((from, to), l);
        }
    }

    /// Both directions between every member of `a` and every member of `b`.
    pub fn cut(&self, a: &[usize], b: &[usize], l: Link) {
        for &x in a {
            for &y in b {
                self.set(Node::Member(x), Node::Member(y), l);
                self.set(Node::Member(y), Node::Member(x), l);
            }
        }
    }

    pub fn heal(&self) {
        self.state.lock().unwrap().links.clear();
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

fn link(state: &Mutex<NetState>, from: Node, to: Node) -> Link {
    *state
        .lock()
        .unwrap()
        .links
        .get(&(from, to))
        .unwrap_or(&Link::Pass)
}

/// Accepts until shutdown (and at most a million connections).
async fn accept_loop(
    l: TcpListener,
    member: usize,
    peer: bool,
    state: Arc<Mutex<NetState>>,
    mut shutdown: watch::Receiver<bool>,
    unknown: Arc<Mutex<u64>>,
) {
    let proxy_port = l.local_addr().unwrap().port();
    for _ in 0..1_000_000 {
        let (conn, from_addr) = tokio::select! {
            r = l.accept() => match r { Ok(x) => x, Err(_) => continue },
            _ = shutdown.changed() => return,
        };
        let state = state.clone();
        let sd = shutdown.clone();
        let unknown = unknown.clone();
        tokio::spawn(async move {
            let src = if peer {
                let pids = state.lock().unwrap().pids.clone();
                let found =
                    tokio::task::spawn_blocking(move || dialler(from_addr, proxy_port, &pids))
                        .await
                        .ok()
                        .flatten();
                match found {
                    Some(i) => Node::Member(i),
                    None => {
                        *unknown.lock().unwrap() += 1;
                        Node::Client
                    }
                }
            } else {
                Node::Client
            };
            let port = {
                let s = state.lock().unwrap();
                if peer {
                    s.upstream[member].1
                } else {
                    s.upstream[member].0
                }
            };
            let Ok(Ok(up)) = tokio::time::timeout(
                Duration::from_secs(2),
                TcpStream::connect(("127.0.0.1", port)),
            )
            .await
            else {
                return;
            };
            let _ = conn.set_nodelay(true);
            let _ = up.set_nodelay(true);
            let dst = Node::Member(member);
            let (cr, cw) = conn.into_split();
            let (ur, uw) = up.into_split();
            let a = tokio::spawn(pump(cr, uw, src, dst, state.clone(), sd.clone()));
            let b = tokio::spawn(pump(ur, cw, dst, src, state, sd));
            let _ = a.await;
            let _ = b.await;
        });
    }
}

async fn pump(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    from: Node,
    to: Node,
    state: Arc<Mutex<NetState>>,
    shutdown: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    // Bounded by the connection's life and the run's (shutdown), and in count.
    for _ in 0..u32::MAX {
        if *shutdown.borrow() {
            return;
        }
        let n = match tokio::time::timeout(Duration::from_millis(500), r.read(&mut buf)).await {
            Err(_) => continue,
            Ok(Ok(0)) | Ok(Err(_)) => {
                let _ = w.shutdown().await;
                return;
            }
            Ok(Ok(n)) => n,
        };
        // Hold the bytes while the link is dropped (at most 10 minutes).
        for _ in 0..30_000 {
            match link(&state, from, to) {
                Link::Drop if !*shutdown.borrow() => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Link::Delay(d) => {
                    tokio::time::sleep(d).await;
                    break;
                }
                Link::Sever => {
                    let _ = w.shutdown().await;
                    return;
                }
                _ => break,
            }
        }
        if w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Which member (index into `pids`) owns the socket bound to `from` that is
/// connected to 127.0.0.1:`proxy_port`. Linux only (`/proc`).
fn dialler(from: SocketAddr, proxy_port: u16, pids: &[Option<u32>]) -> Option<usize> {
    let want_local = format!("0100007F:{:04X}", from.port());
    let want_rem = format!("0100007F:{:04X}", proxy_port);
    // The dialler's socket may take a moment to show; retry briefly.
    for _attempt in 0..20 {
        let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
        let inode = tcp.lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 9 && f[1] == want_local && f[2] == want_rem).then(|| f[9].to_string())
        });
        if let Some(inode) = inode {
            let target = format!("socket:[{inode}]");
            for (i, pid) in pids.iter().enumerate() {
                let Some(pid) = pid else { continue };
                let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
                    continue;
                };
                for e in rd.flatten() {
                    if std::fs::read_link(e.path())
                        .map(|p| p.to_string_lossy() == target)
                        .unwrap_or(false)
                    {
                        return Some(i);
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server standing in for a member's client port.
    async fn echo() -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            for _ in 0..16 {
                let Ok((mut c, _)) = l.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut b = [0u8; 1024];
                    for _ in 0..1000 {
                        match c.read(&mut b).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if c.write_all(&b[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        port
    }

    async fn roundtrip(c: &mut TcpStream, within: Duration) -> bool {
        c.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        matches!(
            tokio::time::timeout(within, c.read_exact(&mut b)).await,
            Ok(Ok(_))
        )
    }

    #[tokio::test]
    async fn drop_holds_bytes_until_heal_and_delay_delays() {
        let net = Net::start(1).await;
        net.set_upstream(0, echo().await, 0);
        let mut c = TcpStream::connect(("127.0.0.1", net.ports[0].0))
            .await
            .unwrap();
        assert!(roundtrip(&mut c, Duration::from_secs(2)).await, "pass");
        // One direction dropped: the answer is held, not lost.
        net.set(Node::Member(0), Node::Client, Link::Drop);
        assert!(!roundtrip(&mut c, Duration::from_millis(300)).await, "drop");
        net.heal();
        let mut b = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(2), c.read_exact(&mut b))
            .await
            .expect("held bytes delivered after heal")
            .unwrap();
        assert_eq!(&b, b"ping");
        net.set(
            Node::Client,
            Node::Member(0),
            Link::Delay(Duration::from_millis(300)),
        );
        let t = std::time::Instant::now();
        assert!(roundtrip(&mut c, Duration::from_secs(2)).await);
        assert!(t.elapsed() >= Duration::from_millis(300), "delay");
    }

    #[tokio::test]
    async fn sever_discards_and_closes() {
        let net = Net::start(1).await;
        net.set_upstream(0, echo().await, 0);
        let mut c = TcpStream::connect(("127.0.0.1", net.ports[0].0))
            .await
            .unwrap();
        assert!(roundtrip(&mut c, Duration::from_secs(2)).await, "pass");
        // The answer direction severed: the echo is discarded, and a heal
        // afterwards does not bring it back.
        net.set(Node::Member(0), Node::Client, Link::Sever);
        assert!(
            !roundtrip(&mut c, Duration::from_millis(300)).await,
            "sever"
        );
        net.heal();
        let mut b = [0u8; 4];
        match tokio::time::timeout(Duration::from_secs(2), c.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            other => panic!("severed connection delivered {other:?}"),
        }
        // New connections work again.
        let mut c2 = TcpStream::connect(("127.0.0.1", net.ports[0].0))
            .await
            .unwrap();
        assert!(roundtrip(&mut c2, Duration::from_secs(2)).await, "healed");
    }
}
