//! `nic-offloads`: the VM's virtio-net NIC (`eth0`, on QEMU's user network
//! with `restrict=on`: nothing leaves the host) merges received frames with
//! GRO, and the kernel segments sent packets after the egress hook. An
//! agent counting only `eth0` must equal the NIC's statistics exactly.
//!
//! The traffic comes from the host, through QEMU's port forwards to
//! [`TCP_PORT`] and [`UDP_PORT`]: the guest asks for it with a console line
//! (`tally-vm: peer tcp <to guest> <from guest>`, `tally-vm: peer udp
//! <datagrams> <size>`) that xtask answers. With GRO (and TSO, where the
//! NIC has it) on, then off:
//!
//! - TCP: 10 MiB to the guest and 5 MiB back over one connection;
//! - UDP: datagrams to a socket that takes GRO-merged ones (`UDP_GRO`),
//!   and replies with UDP segmentation offload (`UDP_SEGMENT`) where the
//!   NIC allows it (it needs checksum offload, which QEMU's user network
//!   does not give).

use std::{
    io::{self, Read as _, Write as _},
    net::{SocketAddr, TcpListener, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};

use crate::{
    agent::Agent,
    ethtool::{self, Features},
    say,
    traffic::set_udp_option,
};

pub const NIC: &str = "eth0";
/// The guest's ports that xtask's port forwards reach.
pub const TCP_PORT: u16 = 5201;
pub const UDP_PORT: u16 = 5202;
const GUEST_IP: [u8; 4] = [10, 0, 2, 15];
const TCP_IN: usize = 10 << 20;
const TCP_OUT: usize = 5 << 20;
const UDP_DATAGRAMS: usize = 2_000;
const UDP_SIZE: usize = 1_200;
/// The features each round sets, and that the log shows.
const GRO: &str = "rx-gro";
const TSO: [&str; 2] = ["tx-tcp-segmentation", "tx-tcp6-segmentation"];
const SHOWN: [&str; 5] = [
    "rx-gro",
    "tx-tcp-segmentation",
    "tx-udp-segmentation",
    "tx-checksum-ip-generic",
    "tx-generic-segmentation",
];

pub fn offloads() -> anyhow::Result<()> {
    let mut agent = Agent::start(
        "agent-nic",
        "/sys/fs/bpf/tally-nic",
        &["--include", NIC, "--interval", "1s"],
    )?;
    agent.wait_attached(&[NIC])?;
    let result = rounds(&agent);
    agent.stop_and_detach()?;
    result
}

fn rounds(agent: &Agent) -> anyhow::Result<()> {
    let listener =
        TcpListener::bind(SocketAddr::from((GUEST_IP, TCP_PORT))).context("the TCP listener")?;
    let udp = UdpSocket::bind(SocketAddr::from((GUEST_IP, UDP_PORT))).context("the UDP socket")?;
    set_udp_option(&udp, libc::UDP_GRO, 1).context("UDP_GRO")?;
    for on in [true, false] {
        let label = if on { "offloads on" } else { "offloads off" };
        let mut wanted = vec![(GRO, on)];
        wanted.extend(TSO.iter().map(|name| (*name, on)));
        ethtool::set(NIC, &wanted)?;
        say(&format!(
            "  {label}: {NIC} {}",
            Features::of(NIC)?.describe(&SHOWN)
        ));

        let start = agent.readings(NIC)?;
        tcp_round(&listener)?;
        agent.expect_exact_since(NIC, start, &format!("{label}, TCP 10 MiB in, 5 MiB out"))?;

        let start = agent.readings(NIC)?;
        let (datagrams, reads, peer) = udp_round(&udp)?;
        say(&format!(
            "  {label}, UDP: {datagrams} datagrams in {reads} reads ({})",
            if reads < datagrams {
                "GRO merged"
            } else {
                "none merged"
            }
        ));
        let gso = udp_gso_reply(&udp, peer);
        say(&format!("  {label}, UDP GSO replies: {gso}"));
        agent.expect_exact_since(NIC, start, &format!("{label}, UDP"))?;
    }
    Ok(())
}

/// Asks the host for a connection, reads [`TCP_IN`] bytes, writes
/// [`TCP_OUT`] back and waits for the host to close.
fn tcp_round(listener: &TcpListener) -> anyhow::Result<()> {
    say(&format!("tally-vm: peer tcp {TCP_IN} {TCP_OUT}"));
    listener.set_nonblocking(true).context("nonblocking")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                ensure!(
                    Instant::now() < deadline,
                    "the host did not connect within 60 s"
                );
                thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e).context("accepting the host's connection"),
        }
    };
    stream.set_nonblocking(false).context("blocking")?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .context("read timeout")?;
    let mut buf = vec![0; 64 * 1024];
    let mut got = 0;
    while got < TCP_IN {
        let n = stream.read(&mut buf).context("reading from the host")?;
        ensure!(n > 0, "the host closed after {got} of {TCP_IN} bytes");
        got += n;
    }
    ensure!(got == TCP_IN, "the host sent {got} bytes, not {TCP_IN}");
    let chunk = vec![0x6b; 64 * 1024];
    let mut left = TCP_OUT;
    while left > 0 {
        let n = left.min(chunk.len());
        stream
            .write_all(&chunk[..n])
            .context("writing to the host")?;
        left -= n;
    }
    stream
        .shutdown(std::net::Shutdown::Write)
        .context("shutdown")?;
    // The host closes once it has read everything.
    let n = stream.read(&mut buf).context("waiting for the host")?;
    ensure!(n == 0, "the host sent {n} bytes more");
    Ok(())
}

/// Asks the host for [`UDP_DATAGRAMS`] datagrams and reads them (GRO may
/// merge several into one read): datagrams and reads, and the host's
/// address as the forward shows it.
fn udp_round(udp: &UdpSocket) -> anyhow::Result<(usize, usize, SocketAddr)> {
    say(&format!("tally-vm: peer udp {UDP_DATAGRAMS} {UDP_SIZE}"));
    udp.set_read_timeout(Some(Duration::from_secs(5)))
        .context("read timeout")?;
    let mut buf = vec![0; 64 * 1024];
    let (mut datagrams, mut reads) = (0, 0);
    let mut peer = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while datagrams < UDP_DATAGRAMS && Instant::now() < deadline {
        match udp.recv_from(&mut buf) {
            Ok((n, from)) => {
                reads += 1;
                datagrams += n.div_ceil(UDP_SIZE);
                peer = Some(from);
            }
            // The forward may lose datagrams before the NIC: neither the
            // kernel nor tally counts those.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break;
            }
            Err(e) => return Err(e).context("receiving from the host"),
        }
    }
    let peer = peer.context("no datagram came from the host")?;
    Ok((datagrams, reads, peer))
}

/// 20 replies of 10 datagrams of 1,000 bytes each with `UDP_SEGMENT`, or
/// why not.
fn udp_gso_reply(udp: &UdpSocket, peer: SocketAddr) -> String {
    if let Err(e) = set_udp_option(udp, libc::UDP_SEGMENT, 1_000) {
        return format!("not offered ({e})");
    }
    let buffer = vec![0x2d; 10_000];
    let mut sent = 0;
    let mut error = None;
    for _ in 0..20 {
        match udp.send_to(&buffer, peer) {
            Ok(_) => sent += 1,
            Err(e) => {
                error = Some(e);
                break;
            }
        }
        thread::sleep(Duration::from_millis(5));
    }
    let _ = set_udp_option(udp, libc::UDP_SEGMENT, 0);
    match error {
        None => format!("{sent} sent"),
        Some(e) if sent == 0 => format!("not offered by {NIC} ({e})"),
        Some(e) => format!("{sent} sent, then {e}"),
    }
}
