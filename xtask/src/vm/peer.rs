//! The host's end of the guest's `nic-offloads` traffic: when the guest
//! prints `tally-vm: peer tcp <to guest> <from guest>` or `tally-vm: peer
//! udp <datagrams> <size>`, a thread sends that through QEMU's port
//! forwards on the host's loopback (see `qemu::Forwards`) and checks what
//! comes back. Its outcome is joined at the end of the VM's run.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

use super::qemu::Forwards;

/// One request of the guest, running.
pub type Peer = JoinHandle<anyhow::Result<()>>;

/// Starts serving the request in `words` (after `peer`).
pub fn start<'a>(forwards: Forwards, mut words: impl Iterator<Item = &'a str>) -> Peer {
    let kind = words.next().unwrap_or_default().to_owned();
    let numbers: Vec<usize> = words.filter_map(|w| w.parse().ok()).collect();
    thread::spawn(move || match (kind.as_str(), numbers.as_slice()) {
        ("tcp", &[to_guest, from_guest]) => tcp(forwards.tcp, to_guest, from_guest),
        ("udp", &[datagrams, size]) => udp(forwards.udp, datagrams, size),
        _ => bail!("the guest asked for traffic this host does not know: {kind} {numbers:?}"),
    })
}

/// Sends `to_guest` bytes, reads `from_guest` bytes back until the guest
/// closes, then closes.
fn tcp(port: u16, to_guest: usize, from_guest: usize) -> anyhow::Result<()> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + Duration::from_secs(30);
    // The forward accepts at once and connects to the guest after; a guest
    // not listening yet closes the connection at once.
    let mut stream = loop {
        let mut stream = TcpStream::connect(addr).context("connecting to the forward")?;
        stream
            .set_read_timeout(Some(Duration::from_secs(120)))
            .context("read timeout")?;
        let chunk = vec![0x4e; 64 * 1024];
        let mut sent = 0;
        let mut failed = None;
        while sent < to_guest {
            let n = (to_guest - sent).min(chunk.len());
            if let Err(e) = stream.write_all(&chunk[..n]) {
                failed = Some(e);
                break;
            }
            sent += n;
        }
        match failed {
            None => break stream,
            Some(e) if sent == 0 && Instant::now() < deadline => {
                eprintln!("vm-test: the guest's forward refused ({e}); again");
                thread::sleep(Duration::from_millis(500));
            }
            Some(e) => return Err(e).context(format!("sending to the guest after {sent} bytes")),
        }
    };
    let mut buf = vec![0; 64 * 1024];
    let mut got = 0;
    loop {
        let n = stream.read(&mut buf).context("reading from the guest")?;
        if n == 0 {
            break;
        }
        got += n;
    }
    ensure!(
        got == from_guest,
        "the guest sent {got} bytes back, not {from_guest}"
    );
    Ok(())
}

/// Sends `datagrams` datagrams of `size` bytes, 20 at a time with a
/// millisecond between.
fn udp(port: u16, datagrams: usize, size: usize) -> anyhow::Result<()> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).context("a UDP socket")?;
    let target = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let payload = vec![0x75; size];
    for i in 0..datagrams {
        socket
            .send_to(&payload, target)
            .with_context(|| format!("sending datagram {i} to the forward"))?;
        if i % 20 == 19 {
            thread::sleep(Duration::from_millis(1));
        }
    }
    // The guest's GSO replies come back here; nothing reads them. Kept
    // open a moment so they find a socket.
    thread::sleep(Duration::from_secs(2));
    Ok(())
}
