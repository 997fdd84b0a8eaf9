//! Interface classes as the agent reports them, on a namespace built like a
//! container host: an uplink veth with the IPv4 and IPv6 default routes, a
//! `docker0` bridge whose two veth ports lead to "containers" (namespaces
//! of their own), a plain bridge, a second veth, tun and tap devices, and
//! whichever of vlan, macvlan, vxlan, dummy, ifb and wireguard the kernel
//! can make (a kind it cannot make is skipped with a printed reason).
//!
//! The agent's `status --json` and the heartbeats of the running agent (to
//! a small recording peer on the host's loopback) must give every
//! interface its kind and exactly the uplinks the default route; when the
//! default routes move (one family, then the other, then to a multipath
//! route, then their interface is deleted) the heartbeats follow within a
//! few seconds, from netlink notifications alone (the periodic resync is
//! set to an hour).

use crate::common;

use std::{
    collections::BTreeMap,
    io::Write as _,
    net::{Ipv4Addr, TcpListener as StdTcpListener},
    pin::Pin,
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use common::{Agent, netns, privileged, veth};
use futures_util::{Stream, stream};
use tally_proto::v1::{
    HeartbeatReply, HeartbeatRequest, InterfaceState, LinkKind, Outcome,
    heartbeat_server::{Heartbeat, HeartbeatServer},
};
use tally_testkit::netns::{Netns, NetnsError};
use tonic::{
    Request, Response, Status, Streaming,
    transport::{Server, server::TcpIncoming},
};

/// Every heartbeat the peer received, with when.
type Log = Arc<Mutex<Vec<(Instant, HeartbeatRequest)>>>;

/// A `tally.v1.Heartbeat` peer that records and applies everything.
#[derive(Clone)]
struct Peer {
    log: Log,
}

impl Peer {
    fn answer(&self, request: HeartbeatRequest) -> HeartbeatReply {
        let sequence = request.sequence;
        self.log
            .lock()
            .expect("log")
            .push((Instant::now(), request));
        HeartbeatReply {
            outcome: Outcome::Applied.into(),
            applied_sequence: sequence,
            ..HeartbeatReply::default()
        }
    }
}

type Replies = Pin<Box<dyn Stream<Item = Result<HeartbeatReply, Status>> + Send>>;

#[tonic::async_trait]
impl Heartbeat for Peer {
    async fn send(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatReply>, Status> {
        Ok(Response::new(self.answer(request.into_inner())))
    }

    type StreamStream = Replies;

    async fn stream(
        &self,
        request: Request<Streaming<HeartbeatRequest>>,
    ) -> Result<Response<Replies>, Status> {
        let state = (self.clone(), request.into_inner());
        let replies = stream::unfold(state, |(peer, mut requests)| async move {
            let request = requests.message().await.ok()??;
            Some((Ok(peer.answer(request)), (peer, requests)))
        });
        Ok(Response::new(Box::pin(replies)))
    }
}

/// The peer, serving on a listener (bound in the agent's namespace) from a
/// thread of its own until dropped.
struct Recorder {
    port: u16,
    log: Log,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Recorder {
    fn start(listener: StdTcpListener) -> Self {
        let port = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let log = Log::default();
        let peer = Peer { log: log.clone() };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let server = Server::builder()
                    .add_service(HeartbeatServer::new(peer))
                    .serve_with_incoming(TcpIncoming::from(listener));
                tokio::select! {
                    result = server => result.expect("peer serves"),
                    _ = stopped => {}
                }
            });
        });
        Self {
            port,
            log,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The heartbeats received after `since`.
    fn since(&self, since: Instant) -> Vec<HeartbeatRequest> {
        self.log
            .lock()
            .expect("log")
            .iter()
            .filter(|(at, _)| *at > since)
            .map(|(_, request)| request.clone())
            .collect()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn say(text: &str) {
    // Past the harness's capture, so that a skipped part shows in the run.
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// `ip -n <ns> link add <name> <spec...>`; `false` (with the reason printed)
/// when the kernel cannot make that kind of link here.
fn try_link(ns: &Netns, name: &str, spec: &[&str]) -> bool {
    let mut args = vec!["link", "add"];
    args.extend_from_slice(spec);
    let err = match ns.ip(&args) {
        Ok(_) => return true,
        Err(NetnsError::Ip { stderr, .. }) => stderr,
        Err(error) => panic!("ip link add {}: {error}", spec.join(" ")),
    };
    let unsupported = [
        "Unknown device type",
        "Operation not supported",
        "not supported",
    ];
    assert!(
        unsupported.iter().any(|u| err.contains(u)),
        "ip link add {}: {err}",
        spec.join(" ")
    );
    say(&format!(
        "SKIP part of link_classes: this kernel cannot make {name} (`ip link add {}`: {})",
        spec.join(" "),
        err.trim()
    ));
    false
}

/// The namespaces of the container-like host, and what the agent must say
/// about each interface of `host` (its kind; the default routes are checked
/// per step).
struct ContainerHost {
    host: Netns,
    /// The far side of the uplinks.
    _upstream: Netns,
    _containers: [Netns; 2],
    kinds: BTreeMap<String, LinkKind>,
}

impl ContainerHost {
    fn build() -> Self {
        let host = netns("host");
        // The test namespaces start without IPv6; this one needs it for its
        // IPv6 default route (set before the links are made, which take
        // the default).
        for key in ["all", "default"] {
            host.sysctl(&format!("net.ipv6.conf.{key}.disable_ipv6"), "0")
                .expect("IPv6 on");
        }
        let upstream = netns("up");
        let containers = [netns("c1"), netns("c2")];
        let mut kinds = BTreeMap::new();
        let ip = |args: &[&str]| {
            host.ip(args).expect("ip in host");
        };

        // Two uplink candidates towards "upstream": up0 carries the default
        // routes at the start, up1 takes them over later.
        for (name, peer, subnet) in [("up0", "wan0", 1u8), ("up1", "wan1", 2)] {
            let uplink = veth(name, peer, subnet);
            uplink.create(&host, &upstream).expect("an uplink");
            uplink.set_up(&host, &upstream).expect("an uplink up");
            ip(&[
                "-6",
                "addr",
                "add",
                &format!("fd00:{subnet}::1/64"),
                "dev",
                name,
                "nodad",
            ]);
            kinds.insert(name.to_owned(), LinkKind::Veth);
        }
        ip(&["route", "add", "default", "via", "10.213.1.2", "dev", "up0"]);
        ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            "fd00:1::2",
            "dev",
            "up0",
        ]);

        // docker0 with a veth port per "container"; each peer end sits in
        // the container's namespace as its eth0.
        ip(&["link", "add", "docker0", "type", "bridge"]);
        kinds.insert("docker0".into(), LinkKind::ContainerBridge);
        for (i, container) in containers.iter().enumerate() {
            let port = format!("vethc{i}");
            host.ip(&[
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &container.name,
            ])
            .expect("a container's veth pair");
            ip(&["link", "set", &port, "master", "docker0"]);
            host.set_up(&port).expect("a bridge port up");
            container.set_up("eth0").expect("a container's eth0 up");
            kinds.insert(port, LinkKind::Veth);
        }
        host.set_up("docker0").expect("docker0 up");
        host.wait_oper_up("vethc0").expect("vethc0 up");

        ip(&["link", "add", "br0", "type", "bridge"]);
        kinds.insert("br0".into(), LinkKind::Bridge);
        ip(&["tuntap", "add", "dev", "tun0", "mode", "tun"]);
        kinds.insert("tun0".into(), LinkKind::Tun);
        ip(&["tuntap", "add", "dev", "tap0", "mode", "tap"]);
        kinds.insert("tap0".into(), LinkKind::Tap);

        // Kinds the kernel may lack (modules not built in).
        let optional: [(&str, &[&str], LinkKind); 6] = [
            (
                "a vlan",
                &["link", "up0", "name", "up0.10", "type", "vlan", "id", "10"],
                LinkKind::Vlan,
            ),
            (
                "a macvlan",
                &[
                    "link", "up0", "name", "mv0", "type", "macvlan", "mode", "bridge",
                ],
                LinkKind::Macvlan,
            ),
            (
                "a vxlan",
                &[
                    "vx0", "type", "vxlan", "id", "42", "dstport", "4789", "dev", "up0",
                ],
                LinkKind::Vxlan,
            ),
            ("a dummy", &["dummy0", "type", "dummy"], LinkKind::Other),
            ("an ifb", &["ifb7", "type", "ifb"], LinkKind::Other),
            (
                "a wireguard link",
                &["wg0", "type", "wireguard"],
                LinkKind::Wireguard,
            ),
        ];
        for (what, spec, kind) in optional {
            if try_link(&host, what, spec) {
                let name = spec
                    .iter()
                    .position(|s| *s == "name")
                    .map_or(spec[0], |i| spec[i + 1]);
                kinds.insert(name.to_owned(), kind);
            }
        }
        Self {
            host,
            _upstream: upstream,
            _containers: containers,
            kinds,
        }
    }

    fn ip(&self, args: &[&str]) {
        self.host.ip(args).expect("ip in host");
    }
}

/// `name -> (kind, default_route)` of a heartbeat's counted entries (and of
/// the entries of `gone`, which went away).
fn heartbeat_classes(
    request: &HeartbeatRequest,
    gone: &[&str],
) -> BTreeMap<String, (LinkKind, bool)> {
    request
        .interfaces
        .iter()
        .filter(|i| match i.state() {
            InterfaceState::Attached => true,
            InterfaceState::Gone => gone.contains(&i.name.as_str()),
            _ => false,
        })
        .map(|i| (i.name.clone(), (i.kind(), i.default_route)))
        .collect()
}

/// What the agent must report: every known interface's kind, with a
/// default route exactly on `uplinks`.
fn expected(
    kinds: &BTreeMap<String, LinkKind>,
    uplinks: &[&str],
) -> BTreeMap<String, (LinkKind, bool)> {
    kinds
        .iter()
        .map(|(name, kind)| (name.clone(), (*kind, uplinks.contains(&name.as_str()))))
        .collect()
}

/// Whether a heartbeat reports exactly `want` (and no default route
/// elsewhere); what it reports otherwise.
fn reports(
    request: &HeartbeatRequest,
    want: &BTreeMap<String, (LinkKind, bool)>,
    gone: &[&str],
) -> Result<(), BTreeMap<String, (LinkKind, bool)>> {
    let got = heartbeat_classes(request, gone);
    let others_with_route = got
        .iter()
        .any(|(name, (_, route))| *route && !want.contains_key(name));
    let ours: BTreeMap<String, (LinkKind, bool)> = got
        .iter()
        .filter(|(name, _)| want.contains_key(*name))
        .map(|(name, class)| (name.clone(), *class))
        .collect();
    if &ours == want && !others_with_route {
        Ok(())
    } else {
        Err(got)
    }
}

/// Waits (at most `within`) for a heartbeat received after `since` that
/// reports exactly `want`.
fn expect_heartbeat(
    recorder: &Recorder,
    agent: &Agent,
    since: Instant,
    within: Duration,
    want: &BTreeMap<String, (LinkKind, bool)>,
    gone: &[&str],
    step: &str,
) {
    let deadline = since + within;
    let mut last = None;
    loop {
        for request in recorder.since(since) {
            match reports(&request, want, gone) {
                Ok(()) => return,
                Err(got) => last = Some(got),
            }
        }
        assert!(
            Instant::now() < deadline,
            "{step}: no heartbeat within {within:?} reported\n{want:#?}\nthe last one said\n{last:#?}\nagent log:\n{}",
            agent.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// The agent's first heartbeat (after `since`) already reports exactly
/// `want`: the classes are known before the first reading.
fn expect_first_heartbeat(
    recorder: &Recorder,
    agent: &Agent,
    since: Instant,
    want: &BTreeMap<String, (LinkKind, bool)>,
) {
    let deadline = since + Duration::from_secs(20);
    let first = loop {
        if let Some(first) = recorder.since(since).into_iter().next() {
            break first;
        }
        assert!(
            Instant::now() < deadline,
            "no heartbeat within 20 s; agent log:\n{}",
            agent.log()
        );
        thread::sleep(Duration::from_millis(50));
    };
    if let Err(got) = reports(&first, want, &[]) {
        panic!(
            "the first heartbeat reported\n{got:#?}\ninstead of\n{want:#?}\nagent log:\n{}",
            agent.log()
        );
    }
}

/// The JSON name of a kind in `status --json`.
fn json_name(kind: LinkKind) -> &'static str {
    kind.name()
}

/// `status --json` gives every interface its kind and exactly `uplinks`
/// the default route.
fn expect_status(agent: &Agent, want: &BTreeMap<String, (LinkKind, bool)>, step: &str) {
    let status = agent
        .status()
        .unwrap_or_else(|| panic!("{step}: no status; agent log:\n{}", agent.log()));
    let list = status["interfaces"].as_array().expect("interfaces");
    for (name, (kind, route)) in want {
        let entry = list
            .iter()
            .find(|i| i["name"] == name.as_str())
            .unwrap_or_else(|| panic!("{step}: {name} is not in {status:#}"));
        assert_eq!(entry["kind"], json_name(*kind), "{step}: {name}: {entry}");
        assert_eq!(entry["default_route"], *route, "{step}: {name}: {entry}");
    }
    for entry in list {
        let name = entry["name"].as_str().unwrap_or_default();
        if !want.contains_key(name) {
            assert_eq!(entry["default_route"], false, "{step}: {entry}");
        }
    }
}

/// The recording peer on the host's loopback, and the agent (with `extra`
/// arguments) reporting to it every second.
fn start_agent(net: &ContainerHost, extra: &[&str]) -> (Recorder, Agent, tempfile::TempDir) {
    let listener = net
        .host
        .run(|| StdTcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind in the namespace"))
        .expect("run in the namespace");
    let recorder = Recorder::start(listener);
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("token");
    std::fs::write(&token, "tly_test.node-7_secret\n").expect("token file");
    let url = format!("http://127.0.0.1:{}", recorder.port);
    let token = token.display().to_string();
    let mut args = vec![
        "--collector",
        &url,
        "--insecure-plaintext",
        "--token-file",
        &token,
        "--interval",
        "1s",
        // Only notifications can make the agent see the changes.
        "--resync-interval",
        "1h",
    ];
    args.extend_from_slice(extra);
    let agent = Agent::start(&net.host, &args);
    (recorder, agent, dir)
}

#[test]
fn the_agent_reports_link_kinds_and_follows_the_default_route() {
    if !privileged("the_agent_reports_link_kinds_and_follows_the_default_route") {
        return;
    }
    let net = ContainerHost::build();
    let started = Instant::now();
    let (recorder, mut agent, _dir) = start_agent(&net, &[]);
    for name in net.kinds.keys() {
        agent.wait_for(name);
    }
    let within = Duration::from_secs(5);

    // At the start: the kinds, and the default routes (both families) on up0.
    let want = expected(&net.kinds, &["up0"]);
    expect_status(&agent, &want, "start");
    expect_first_heartbeat(&recorder, &agent, started, &want);

    // The IPv4 default moves to up1: up0 keeps the IPv6 one.
    let moved = Instant::now();
    net.ip(&[
        "route",
        "replace",
        "default",
        "via",
        "10.213.2.2",
        "dev",
        "up1",
    ]);
    let want = expected(&net.kinds, &["up0", "up1"]);
    expect_heartbeat(&recorder, &agent, moved, within, &want, &[], "IPv4 moved");

    // The IPv6 default follows: only up1 is an uplink.
    let moved = Instant::now();
    net.ip(&["-6", "route", "del", "default", "dev", "up0"]);
    net.ip(&[
        "-6",
        "route",
        "add",
        "default",
        "via",
        "fd00:2::2",
        "dev",
        "up1",
    ]);
    let want = expected(&net.kinds, &["up1"]);
    expect_heartbeat(&recorder, &agent, moved, within, &want, &[], "IPv6 moved");
    expect_status(&agent, &want, "IPv6 moved");

    // A multipath IPv4 default over both: both are uplinks.
    let moved = Instant::now();
    net.ip(&[
        "route",
        "replace",
        "default",
        "nexthop",
        "via",
        "10.213.1.2",
        "dev",
        "up0",
        "nexthop",
        "via",
        "10.213.2.2",
        "dev",
        "up1",
    ]);
    let want = expected(&net.kinds, &["up0", "up1"]);
    expect_heartbeat(&recorder, &agent, moved, within, &want, &[], "multipath");

    // up0 goes down: the kernel marks its next hop dead (without a route
    // notification); up1 alone carries the default route.
    let moved = Instant::now();
    net.ip(&["link", "set", "up0", "down"]);
    let want = expected(&net.kinds, &["up1"]);
    expect_heartbeat(&recorder, &agent, moved, within, &want, &[], "up0 down");

    // up1 is deleted: the kernel drops its routes (the IPv4 ones without a
    // notification), so no default route is left; up1's entry stays, gone,
    // with its kind.
    let moved = Instant::now();
    net.ip(&["link", "del", "up1"]);
    let want = expected(&net.kinds, &[]);
    expect_heartbeat(
        &recorder,
        &agent,
        moved,
        within,
        &want,
        &["up1"],
        "up1 deleted",
    );

    agent.stop();
}

#[test]
fn procfs_readings_carry_the_classes_too() {
    if !privileged("procfs_readings_carry_the_classes_too") {
        return;
    }
    let net = ContainerHost::build();
    let started = Instant::now();
    let (recorder, mut agent, _dir) = start_agent(&net, &["--source", "procfs"]);
    let want = expected(&net.kinds, &["up0"]);
    expect_first_heartbeat(&recorder, &agent, started, &want);

    // `status --source procfs` says the same.
    let out = agent.cli(&["status", "--source", "procfs", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    for (name, (kind, route)) in &want {
        let entry = status["interfaces"]
            .as_array()
            .and_then(|list| list.iter().find(|i| i["name"] == name.as_str()))
            .unwrap_or_else(|| panic!("{name} is not in {status:#}"));
        assert_eq!(entry["kind"], json_name(*kind), "{name}: {entry}");
        assert_eq!(entry["default_route"], *route, "{name}: {entry}");
    }

    let moved = Instant::now();
    net.ip(&[
        "route",
        "replace",
        "default",
        "via",
        "10.213.2.2",
        "dev",
        "up1",
    ]);
    net.ip(&["-6", "route", "del", "default", "dev", "up0"]);
    let want = expected(&net.kinds, &["up1"]);
    expect_heartbeat(
        &recorder,
        &agent,
        moved,
        Duration::from_secs(5),
        &want,
        &[],
        "moved",
    );
    agent.stop();
}
