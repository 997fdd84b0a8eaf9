//! The UDP traffic from B to A: the two sockets, one phase of sending and
//! receiving on two threads, and pinning each thread to a CPU.

use std::{
    io,
    net::{SocketAddrV4, UdpSocket},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, ensure};

use super::{INTERRUPTED, PAYLOAD, check_interrupted, net::TestNet};

/// The receiver's UDP port in namespace A.
const PORT: u16 = 47_213;
/// Upper bound of datagrams in any phase, whatever the clock says.
const MAX_PACKETS: u64 = 50_000_000;
/// Where the sending thread runs (with the softirq work of both veth hooks:
/// veth hands packets over on the sender's CPU) and where the receiver runs.
const SENDER_CPU: usize = 0;
const RECEIVER_CPU: usize = 1;
/// How long the receiver waits for a straggler before it calls a phase done.
const RECV_TIMEOUT: Duration = Duration::from_millis(20);

/// The two sockets: a receiver in A, a sender in B connected to it.
pub(super) struct Traffic {
    receiver: UdpSocket,
    sender: UdpSocket,
}

/// What one phase of sending did.
#[derive(Debug, Clone, Copy)]
pub(super) struct Exchange {
    pub(super) sent: u64,
    pub(super) received: u64,
    elapsed: Duration,
}

impl Exchange {
    pub(super) fn sent_pps(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64()
    }

    pub(super) fn received_pps(&self) -> f64 {
        self.received as f64 / self.elapsed.as_secs_f64()
    }
}

impl Traffic {
    pub(super) fn open(net: &TestNet) -> anyhow::Result<Self> {
        let to = SocketAddrV4::new(net.a.addr, PORT);
        let receiver = net.a.ns.enter(|| {
            let socket = UdpSocket::bind(to).with_context(|| format!("cannot bind {to}"))?;
            socket
                .set_read_timeout(Some(RECV_TIMEOUT))
                .context("cannot set a read timeout")?;
            Ok::<_, anyhow::Error>(socket)
        })?;
        let sender = net.b.ns.enter(|| {
            let from = SocketAddrV4::new(net.b.addr, 0);
            let socket = UdpSocket::bind(from).with_context(|| format!("cannot bind {from}"))?;
            socket
                .connect(to)
                .with_context(|| format!("cannot connect to {to}"))?;
            Ok::<_, anyhow::Error>(socket)
        })?;
        Ok(Self { receiver, sender })
    }

    /// Sends until `max` datagrams are out or `duration` is over, while a
    /// second thread counts what arrives. Sender and receiver each have a CPU
    /// of their own (where there are two), so that the scheduler's placement
    /// does not change the figures from one phase to the next.
    pub(super) fn exchange(&self, max: u64, duration: Duration) -> anyhow::Result<Exchange> {
        check_interrupted()?;
        let max = max.min(MAX_PACKETS);
        let done = AtomicBool::new(false);
        let start = Instant::now();
        let deadline = start + duration;
        thread::scope(|scope| {
            let receiver = scope.spawn(|| {
                pin_to_cpu(RECEIVER_CPU);
                receive(&self.receiver, &done, deadline)
            });
            let sender = scope.spawn(|| {
                pin_to_cpu(SENDER_CPU);
                let sent = send(&self.sender, max, deadline);
                let elapsed = start.elapsed();
                done.store(true, Ordering::Release);
                sent.map(|sent| (sent, elapsed))
            });
            let sent = sender
                .join()
                .map_err(|_| anyhow!("the sending thread panicked"));
            // Whatever the sender did, the receiver stops now.
            done.store(true, Ordering::Release);
            let received = receiver
                .join()
                .map_err(|_| anyhow!("the receiving thread panicked"))??;
            let (sent, elapsed) = sent??;
            Ok(Exchange {
                sent,
                received,
                elapsed,
            })
        })
    }
}

/// Binds the calling thread to `cpu` if the machine has more than one and
/// the benchmark may use it; otherwise (or if the kernel refuses) leaves the
/// placement to the scheduler.
fn pin_to_cpu(cpu: usize) {
    let allowed = thread::available_parallelism().map_or(1, usize::from);
    if allowed < 2 || cpu >= allowed {
        return;
    }
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET stays within
    // it for cpu < CPU_SETSIZE; pid 0 is the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

fn send(socket: &UdpSocket, max: u64, deadline: Instant) -> anyhow::Result<u64> {
    let payload = [0x5a_u8; PAYLOAD];
    let mut sent = 0;
    let mut refused = 0_u64;
    let mut tries = 0_u64;
    while sent < max {
        if tries.is_multiple_of(256) {
            check_interrupted()?;
            if Instant::now() >= deadline {
                break;
            }
        }
        tries += 1;
        match socket.send(&payload) {
            Ok(_) => sent += 1,
            // A full queue somewhere: try again, within bounds.
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.raw_os_error() == Some(libc::ENOBUFS) =>
            {
                refused += 1;
                ensure!(
                    refused < 1_000_000,
                    "the kernel keeps refusing datagrams: {e}"
                );
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("cannot send a datagram"),
        }
    }
    Ok(sent)
}

/// Counts datagrams until the sender is done and the queue is empty.
fn receive(socket: &UdpSocket, done: &AtomicBool, deadline: Instant) -> anyhow::Result<u64> {
    let hard_stop = deadline + Duration::from_secs(2);
    let mut buf = [0_u8; 2048];
    let mut received = 0_u64;
    loop {
        match socket.recv(&mut buf) {
            Ok(_) => {
                received += 1;
                if received.is_multiple_of(4096) && Instant::now() >= hard_stop {
                    return Ok(received);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if done.load(Ordering::Acquire)
                    || Instant::now() >= hard_stop
                    || INTERRUPTED.load(Ordering::Relaxed)
                {
                    return Ok(received);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("cannot receive a datagram"),
        }
    }
}
