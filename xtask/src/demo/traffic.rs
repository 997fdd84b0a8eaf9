//! The demo's traffic plan and the paced TCP streams that carry it.
//!
//! Each stream sends at a fixed rate from one end to the other for as long
//! as the demo runs: bounded (a few MiB/s in all) and steady, so that the
//! ranking is clear from the first seconds and stays so. Alpha moves the
//! most (a big download and an upload to the internet, a stream to bravo),
//! bravo a few hundred KiB/s, charlie a trickle: alpha ≫ bravo ≫ charlie.

use std::{
    io::{self, Read as _, Write as _},
    net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};

use super::netns::{INTERNET, Netns, Network};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// The names of the hosts, in the order of [`End::Host`] indexes.
pub const HOSTS: [&str; 3] = ["alpha", "bravo", "charlie"];

/// One end of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The hub's internet address.
    Internet,
    /// A host, by its index in [`HOSTS`].
    Host(usize),
}

/// A stream of the plan: bytes per second from one end to the other.
#[derive(Debug, Clone, Copy)]
pub struct Stream {
    pub from: End,
    pub to: End,
    pub rate: u64,
}

/// What flows while the demo runs.
pub const PLAN: [Stream; 6] = [
    Stream {
        from: End::Internet,
        to: End::Host(0),
        rate: 3 * MIB,
    },
    Stream {
        from: End::Host(0),
        to: End::Internet,
        rate: MIB,
    },
    Stream {
        from: End::Host(0),
        to: End::Host(1),
        rate: 256 * KIB,
    },
    Stream {
        from: End::Host(1),
        to: End::Internet,
        rate: 512 * KIB,
    },
    Stream {
        from: End::Internet,
        to: End::Host(2),
        rate: 96 * KIB,
    },
    Stream {
        from: End::Host(2),
        to: End::Host(1),
        rate: 32 * KIB,
    },
];

/// The bytes per second the plan moves through host `index` (sent and
/// received).
pub fn planned_rate(index: usize) -> u64 {
    PLAN.iter()
        .filter(|s| s.from == End::Host(index) || s.to == End::Host(index))
        .map(|s| s.rate)
        .sum()
}

/// Host indexes from the most planned traffic to the least.
pub fn planned_order() -> Vec<usize> {
    let mut order: Vec<usize> = (0..HOSTS.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(planned_rate(i)));
    order
}

/// Bytes written per `write` call (at most).
const CHUNK: usize = 16 * 1024;
/// How long a receiver waits for the rest of a stream once told to stop.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The running streams; dropping it stops them.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    flows: Vec<Flow>,
}

struct Flow {
    what: String,
    sender: JoinHandle<anyhow::Result<(TcpStream, u64)>>,
    receiver: JoinHandle<anyhow::Result<u64>>,
}

impl Traffic {
    /// Connects and starts every stream of the plan.
    pub fn start(net: &Network) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut traffic = Self {
            stop: Arc::clone(&stop),
            flows: Vec::new(),
        };
        for stream in PLAN {
            let (from_ns, _) = end(net, stream.from)?;
            let (to_ns, to_addr) = end(net, stream.to)?;
            let listener = to_ns.enter(|| {
                Ok::<_, anyhow::Error>(TcpListener::bind(SocketAddr::from((to_addr, 0)))?)
            })?;
            let target = listener.local_addr()?;
            let sending = from_ns.enter(|| {
                TcpStream::connect_timeout(&target, Duration::from_secs(5))
                    .with_context(|| format!("cannot connect to {target}"))
            })?;
            let (receiving, _) = listener.accept().context("accept")?;
            let what = format!("{} → {}", name(stream.from), name(stream.to));
            let sender = {
                let stop = Arc::clone(&stop);
                thread::spawn(move || send(sending, stream.rate, &stop))
            };
            let receiver = {
                let stop = Arc::clone(&stop);
                thread::spawn(move || receive(receiving, &stop))
            };
            traffic.flows.push(Flow {
                what,
                sender,
                receiver,
            });
        }
        Ok(traffic)
    }

    /// Stops every stream and waits until each receiver has read all that
    /// was sent and both sides have closed. Returns the bytes sent in all.
    pub fn stop(mut self) -> anyhow::Result<u64> {
        self.stop_all()
    }

    fn stop_all(&mut self) -> anyhow::Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = 0;
        let mut first_error = None;
        for flow in self.flows.drain(..) {
            match finish(flow) {
                Ok(bytes) => total += bytes,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(total),
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        if let Err(error) = self.stop_all() {
            eprintln!("demo: {error:#}");
        }
    }
}

/// Joins one stream's threads; both sides agree on what went through.
fn finish(flow: Flow) -> anyhow::Result<u64> {
    let panicked = |side| anyhow!("the {side} of {} panicked", flow.what);
    let sent = flow.sender.join().map_err(|_| panicked("sender"))?;
    let received = flow.receiver.join().map_err(|_| panicked("receiver"))?;
    // The sending socket closes only once the receiver has read everything.
    let (socket, sent) = sent.with_context(|| format!("stream {}", flow.what))?;
    drop(socket);
    let received = received.with_context(|| format!("stream {}", flow.what))?;
    if sent != received {
        bail!(
            "stream {}: {sent} bytes sent, {received} received",
            flow.what
        );
    }
    Ok(sent)
}

/// The namespace and address of an end.
fn end(net: &Network, end: End) -> anyhow::Result<(&Netns, Ipv4Addr)> {
    match end {
        End::Internet => Ok((&net.hub, INTERNET)),
        End::Host(i) => net
            .hosts
            .get(i)
            .map(|h| (&h.ns, h.addr))
            .with_context(|| format!("no host number {i}")),
    }
}

fn name(end: End) -> &'static str {
    match end {
        End::Internet => "internet",
        End::Host(i) => HOSTS.get(i).copied().unwrap_or("?"),
    }
}

/// Writes at `rate` bytes per second until `stop`, then half-closes.
fn send(mut stream: TcpStream, rate: u64, stop: &AtomicBool) -> anyhow::Result<(TcpStream, u64)> {
    stream.set_write_timeout(Some(Duration::from_millis(200)))?;
    let chunk = vec![0x5a_u8; CHUNK];
    let started = Instant::now();
    let mut sent: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        // When the bytes sent so far are due, at `rate`.
        let due = Duration::from_secs_f64(sent as f64 / rate as f64);
        let elapsed = started.elapsed();
        if elapsed < due {
            thread::sleep((due - elapsed).min(Duration::from_millis(50)));
            continue;
        }
        match stream.write(&chunk) {
            Ok(n) => sent += n as u64,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e).context("write"),
        }
    }
    stream.shutdown(Shutdown::Write).context("shutdown")?;
    Ok((stream, sent))
}

/// Reads until the sender closes; gives up [`DRAIN_TIMEOUT`] after `stop`.
fn receive(mut stream: TcpStream, stop: &AtomicBool) -> anyhow::Result<u64> {
    stream.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut buf = vec![0_u8; 64 * 1024];
    let mut received: u64 = 0;
    let mut stopping_since = None;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(received),
            Ok(n) => received += n as u64,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e).context("read"),
        }
        if stop.load(Ordering::Relaxed)
            && stopping_since.get_or_insert_with(Instant::now).elapsed() > DRAIN_TIMEOUT
        {
            bail!("the stream did not end within {DRAIN_TIMEOUT:?} of the stop");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_ranks_alpha_far_above_bravo_far_above_charlie() {
        assert_eq!(planned_order(), vec![0, 1, 2]);
        assert!(planned_rate(0) > 4 * planned_rate(1));
        assert!(planned_rate(1) > 4 * planned_rate(2));
        assert!(planned_rate(2) > 0);
    }
}
