//! The agent's life around the counters: interfaces that come later, ones it
//! is told to leave out, a crash in the middle of a transfer, and `detach`
//! leaving nothing of ours in the kernel.

use crate::common;

use std::{
    thread,
    time::{Duration, Instant},
};

use common::{
    Agent, Link, assert_exact, privileged, program_exists, tcx_programs, veth,
    veth_counted_from_birth,
};
use tally_testkit::traffic::{tcp_transfer, udp_burst};

#[test]
fn an_interface_created_later_is_counted_and_an_excluded_one_is_not() {
    if !privileged("an_interface_created_later_is_counted_and_an_excluded_one_is_not") {
        return;
    }
    let link = Link::new();
    let mut agent = Agent::start(&link.a, &["--exclude", "tvx*"]);
    agent.wait_for(&link.if_a);

    // Created after the agent started; down until the agent counts it, so
    // that every packet it ever carried is one the agent saw.
    let new = veth("tvnew", "tvnewp", 2);
    new.create(&link.a, &link.b).expect("tvnew");
    agent.wait_for("tvnew");
    link.a.set_up("tvnew").expect("tvnew up");
    link.b.set_up("tvnewp").expect("tvnewp up");
    let (ip_new, ip_new_peer) = (new.a.addr, new.b.addr);
    // And one the filter leaves out.
    let skip = veth("tvxskip", "tvxskipp", 3);
    skip.create(&link.a, &link.b).expect("tvxskip");
    skip.set_up(&link.a, &link.b).expect("tvxskip up");
    let (ip_skip, ip_skip_peer) = (skip.a.addr, skip.b.addr);

    tcp_transfer(&link.b, &link.a, ip_new, 2 * 1024 * 1024, Duration::ZERO).expect("TCP to tvnew");
    udp_burst(&link.a, ip_new, &link.b, ip_new_peer, 2_000, 100).expect("UDP from tvnew");
    tcp_transfer(&link.b, &link.a, ip_skip, 1024 * 1024, Duration::ZERO).expect("TCP to tvxskip");
    udp_burst(&link.a, ip_skip, &link.b, ip_skip_peer, 500, 100).expect("UDP from tvxskip");

    let kernel_new = link.a.settle("tvnew").expect("stats");
    assert!(kernel_new.rx_bytes > 2 * 1024 * 1024, "{kernel_new:?}");
    assert_exact(
        "interface created later",
        &agent.counters("tvnew"),
        &kernel_new,
    );

    assert!(
        agent.iface("tvxskip").is_none(),
        "excluded interface listed: {:?}",
        agent.status()
    );
    assert!(
        tcx_programs(&link.a, "tvxskip").is_empty(),
        "a program is attached to the excluded interface"
    );
    let on_new: Vec<String> = tcx_programs(&link.a, "tvnew")
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(on_new, ["tally_ingress", "tally_egress"]);
}

#[test]
fn an_interface_that_goes_keeps_its_counts_and_loses_its_attachment() {
    if !privileged("an_interface_that_goes_keeps_its_counts_and_loses_its_attachment") {
        return;
    }
    let link = Link::new();
    let mut agent = Agent::start(&link.a, &[]);
    let ip = veth_counted_from_birth(&link, &mut agent, "tvgone", "tvgonep", 4);
    tcp_transfer(&link.b, &link.a, ip, 1024 * 1024, Duration::ZERO).expect("TCP");
    let kernel = link.a.settle("tvgone").expect("stats");
    link.a
        .ip(&["link", "del", "tvgone"])
        .expect("delete tvgone");

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let entry = agent
            .iface("tvgone")
            .expect("the gone interface is still reported");
        if entry["attached"] == false {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not notice the interface went"
        );
        thread::sleep(Duration::from_millis(100));
    }
    assert_exact(
        "interface that went away",
        &agent.counters("tvgone"),
        &kernel,
    );
    let pins = std::fs::read_dir(agent.pin_dir.join("links"))
        .expect("links dir")
        .count();
    assert_eq!(
        pins, 2,
        "only the two links of the remaining veth stay pinned"
    );
}

#[test]
fn kill_9_in_the_middle_of_a_transfer_loses_nothing() {
    if !privileged("kill_9_in_the_middle_of_a_transfer_loses_nothing") {
        return;
    }
    let link = Link::new();
    let mut agent = Agent::start(&link.a, &[]);
    agent.wait_for(&link.if_a);
    let epoch = agent.epoch();
    let kernel0 = link.a.settle(&link.if_a).expect("stats");
    let ours0 = agent.counters(&link.if_a);

    // ~32 MiB in 64 KiB writes, 2 ms apart: about a second and a half.
    thread::scope(|scope| {
        let transfer = scope.spawn(|| {
            tcp_transfer(
                &link.b,
                &link.a,
                link.ip_a,
                32 * 1024 * 1024,
                Duration::from_millis(2),
            )
        });
        thread::sleep(Duration::from_millis(400));
        agent.kill9();
        thread::sleep(Duration::from_millis(300));
        agent.restart();
        agent.wait_for(&link.if_a);
        transfer
            .join()
            .expect("the transfer's thread")
            .expect("transfer");
    });

    let grown = "counters only grow";
    let kernel = link.a.settle(&link.if_a).expect("stats");
    let kernel = kernel.checked_since(&kernel0).expect(grown);
    let ours = agent
        .counters(&link.if_a)
        .checked_since(&ours0)
        .expect(grown);
    assert!(kernel.rx_bytes > 32 * 1024 * 1024, "{kernel:?}");
    assert_exact("across kill -9 and restart", &ours, &kernel);
    assert_eq!(
        agent.epoch(),
        epoch,
        "the restarted agent adopted the same counter set"
    );
    assert!(
        agent.log().contains("adopted the pinned counter set"),
        "{}",
        agent.log()
    );
}

/// Stops the agent, detaches, and checks with the kernel's view (not the
/// agent's bookkeeping) that no program, link, filter, map or pin is left.
fn detach_and_check(agent: &mut Agent, link: &Link) {
    let programs = tcx_programs(&link.a, &link.if_a);
    assert_eq!(
        programs.len(),
        2,
        "both programs attached before detach: {programs:?}"
    );
    let maps: Vec<u32> = ["TALLY_FAST", "TALLY_COUNTERS", "TALLY_IFACES", "TALLY_META"]
        .iter()
        .map(|name| {
            let map = aya::maps::MapData::from_pin(agent.pin_dir.join(name)).expect("pinned map");
            map.info().expect("map info").id()
        })
        .collect();
    let prog_ids: Vec<u32> = programs.iter().map(|(_, id)| *id).collect();
    let our_links = || -> Vec<u32> {
        aya::programs::loaded_links()
            .filter_map(Result::ok)
            .filter(|l| prog_ids.contains(&l.program_id()))
            .map(|l| l.id())
            .collect()
    };
    assert_eq!(our_links().len(), 2, "two TCX links of ours before detach");

    agent.stop();
    let out = agent.detach();
    assert!(
        out.status.success(),
        "detach failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!agent.pin_dir.exists(), "the pin directory is gone");
    assert!(
        tcx_programs(&link.a, &link.if_a).is_empty(),
        "no TCX program left on the veth"
    );
    for hook in ["ingress", "egress"] {
        let filters = link
            .a
            .exec("tc", &["filter", "show", "dev", &link.if_a, hook])
            .expect("tc filter show");
        assert!(filters.is_empty(), "no tc filter left on {hook}");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for (_, id) in programs {
        while program_exists(id) {
            assert!(
                Instant::now() < deadline,
                "program {id} still loaded after detach"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
    while aya::maps::loaded_maps()
        .filter_map(Result::ok)
        .any(|m| maps.contains(&m.id()))
    {
        assert!(
            Instant::now() < deadline,
            "maps {maps:?} still exist in the kernel after detach"
        );
        thread::sleep(Duration::from_millis(50));
    }
    assert!(
        our_links().is_empty(),
        "no link of ours is left: {:?}",
        our_links()
    );
}

#[test]
fn detach_leaves_nothing_behind() {
    if !privileged("detach_leaves_nothing_behind") {
        return;
    }
    let link = Link::new();
    let mut agent = Agent::start(&link.a, &[]);
    agent.wait_for(&link.if_a);

    // While it runs, neither a second agent nor detach may touch its pins.
    let second = agent.cli(&["run"]);
    assert!(
        !second.status.success(),
        "a second agent on the same pins must refuse to run"
    );
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("another tally-agent is using"), "{err}");
    let early = agent.detach();
    assert!(
        !early.status.success(),
        "detach must refuse while the agent runs"
    );
    assert!(agent.pin_dir.join("TALLY_COUNTERS").exists());

    detach_and_check(&mut agent, &link);
}

#[test]
fn netlink_mode_counts_exactly_adopts_its_filters_and_detaches_cleanly() {
    if !privileged("netlink_mode_counts_exactly_adopts_its_filters_and_detaches_cleanly") {
        return;
    }
    let link = Link::new();
    // Someone else's filter on the same hook (after ours) must survive us,
    // and still see every packet: ours lets the classification go on.
    link.a
        .exec("tc", &["qdisc", "add", "dev", &link.if_a, "clsact"])
        .expect("tc qdisc add");
    link.a
        .exec(
            "tc",
            &[
                "filter", "add", "dev", &link.if_a, "ingress", "pref", "40000", "protocol", "all",
                "u32", "match", "u32", "0", "0", "classid", "1:1",
            ],
        )
        .expect("tc filter add");
    let mut agent = Agent::start(&link.a, &["--attach", "netlink"]);
    agent.wait_for(&link.if_a);
    let kernel0 = link.a.settle(&link.if_a).expect("stats");
    let ours0 = agent.counters(&link.if_a);
    tcp_transfer(&link.b, &link.a, link.ip_a, 4 * 1024 * 1024, Duration::ZERO).expect("TCP");
    agent.kill9();
    agent.restart();
    agent.wait_for(&link.if_a);
    udp_burst(&link.a, link.ip_a, &link.b, link.ip_b, 5_000, 64).expect("UDP");
    let grown = "counters only grow";
    let kernel = link.a.settle(&link.if_a).expect("stats");
    let kernel = kernel.checked_since(&kernel0).expect(grown);
    assert_exact(
        "netlink mode",
        &agent
            .counters(&link.if_a)
            .checked_since(&ours0)
            .expect(grown),
        &kernel,
    );

    let shown = link
        .a
        .exec("tc", &["filter", "show", "dev", &link.if_a, "ingress"])
        .expect("tc filter show");
    assert_eq!(
        shown.matches("name tally_ingress").count(),
        1,
        "one filter of ours after the restart:\n{shown}"
    );

    agent.stop();
    let out = agent.detach();
    assert!(
        out.status.success(),
        "detach failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = link
        .a
        .exec("tc", &["filter", "show", "dev", &link.if_a, "ingress"])
        .expect("tc filter show");
    assert!(!after.contains("tally"), "our filter is gone:\n{after}");
    assert!(
        after.contains("u32") && after.contains("pref 40000"),
        "the other filter stays:\n{after}"
    );
    assert!(!agent.pin_dir.exists());
}

#[test]
fn a_long_gone_interface_is_folded_into_the_retired_entry_and_totals_stay() {
    if !privileged("a_long_gone_interface_is_folded_into_the_retired_entry_and_totals_stay") {
        return;
    }
    let link = Link::new();
    let mut agent = Agent::start(
        &link.a,
        &["--forget-after", "2s", "--resync-interval", "1s"],
    );
    agent.wait_for(&link.if_a);
    let ip = veth_counted_from_birth(&link, &mut agent, "tvfold", "tvfoldp", 5);
    tcp_transfer(&link.b, &link.a, ip, 1024 * 1024, Duration::ZERO).expect("TCP");
    let kernel = link.a.settle("tvfold").expect("stats");
    let total_of = |status: &serde_json::Value| -> (u64, u64, u64, u64) {
        status["interfaces"]
            .as_array()
            .expect("list")
            .iter()
            .fold((0, 0, 0, 0), |t, i| {
                let n = |k: &str| i[k].as_u64().expect("number");
                (
                    t.0 + n("rx_bytes"),
                    t.1 + n("tx_bytes"),
                    t.2 + n("rx_packets"),
                    t.3 + n("tx_packets"),
                )
            })
    };
    let before = agent.status().expect("status");
    link.a
        .ip(&["link", "del", "tvfold"])
        .expect("delete tvfold");

    let deadline = Instant::now() + Duration::from_secs(15);
    while agent.iface("tvfold").is_some() {
        assert!(
            Instant::now() < deadline,
            "the gone interface was not folded; log:\n{}",
            agent.log()
        );
        thread::sleep(Duration::from_millis(200));
    }
    let after = agent.status().expect("status");
    let retired = agent.counters("(retired)");
    assert_exact("retired entry", &retired, &kernel);
    // The veth that stays may have moved meanwhile; everything else is equal.
    let moved = agent
        .counters(&link.if_a)
        .checked_since(&Agent::stats_in(&before, &link.if_a))
        .expect("counters only grow");
    let (b, a) = (total_of(&before), total_of(&after));
    assert_eq!(
        (
            a.0 - moved.rx_bytes,
            a.1 - moved.tx_bytes,
            a.2 - moved.rx_packets,
            a.3 - moved.tx_packets
        ),
        b,
        "folding changed the totals"
    );
    assert!(
        agent.log().contains("folded a gone interface"),
        "{}",
        agent.log()
    );
}

#[test]
fn a_renamed_interface_keeps_counting_under_its_new_name() {
    if !privileged("a_renamed_interface_keeps_counting_under_its_new_name") {
        return;
    }
    let link = Link::new();
    let mut agent = Agent::start(&link.a, &[]);
    let ip = veth_counted_from_birth(&link, &mut agent, "tvold", "tvoldp", 6);
    tcp_transfer(&link.b, &link.a, ip, 1024 * 1024, Duration::ZERO).expect("TCP");
    link.a.settle("tvold").expect("stats");
    link.a
        .ip(&["link", "set", "tvold", "down"])
        .expect("tvold down");
    link.a
        .ip(&["link", "set", "tvold", "name", "tvnew2"])
        .expect("rename tvold");
    link.a.set_up("tvnew2").expect("tvnew2 up");
    link.a.wait_oper_up("tvnew2").expect("tvnew2 up");
    agent.wait_for("tvnew2");
    tcp_transfer(&link.b, &link.a, ip, 1024 * 1024, Duration::ZERO).expect("TCP");
    let kernel = link.a.settle("tvnew2").expect("stats");
    assert!(
        agent.iface("tvold").is_none(),
        "the old name is gone from status"
    );
    assert_exact(
        "renamed interface, over its whole life",
        &agent.counters("tvnew2"),
        &kernel,
    );
}
