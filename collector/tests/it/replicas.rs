//! Two `tally-collector` processes on one database: the same node's
//! heartbeats, sent to both alternately and concurrently (retries, the same
//! heartbeat to both at once, newer and older ones racing), are counted
//! exactly once.

use crate::common;

use common::fleet::{self, Fleet, Process};
use tally_proto::v1::Outcome;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_collectors_never_double_count() {
    let Some(fleet) = Fleet::start("replicas").await else {
        return;
    };
    let nodes = [fleet.add_node("r1").await, fleet.add_node("r2").await];
    let a = Process::start(&fleet.url);
    let b = Process::start(&fleet.url);
    let clients = [
        fleet::client(a.address).await,
        fleet::client(b.address).await,
    ];

    // Cumulative readings: reading k has rx = k * 1000 + k, tx = k * 7.
    let reading = |k: u64| fleet::heartbeat("epoch", k, k * 1000 + k, k * 7);
    const READINGS: u64 = 60;
    let mut applied = 0usize;
    for k in 1..=READINGS {
        let mut sends = Vec::new();
        for (n, node) in nodes.iter().enumerate() {
            // The same heartbeat to both collectors at once, plus the
            // previous one again to the other (a late retry racing it).
            for (c, k) in [
                (k as usize % 2, k),
                ((k as usize + 1) % 2, k),
                (n % 2, k - 1),
            ] {
                let mut client = clients[c].clone();
                let token = node.token.clone();
                sends.push(tokio::spawn(async move {
                    if k == 0 {
                        return None;
                    }
                    Some(fleet::send(&mut client, Some(&token), reading(k)).await)
                }));
            }
        }
        for send in sends {
            if let Some(reply) = send.await.expect("task") {
                let reply = reply.expect("accepted");
                if reply.outcome() == Outcome::Applied {
                    applied += 1;
                }
            }
        }
        for node in &nodes {
            let (down, up, _, _) = fleet.totals(&node.id).await;
            // Reading k is applied by the end of round k, by either one.
            assert_eq!((down, up), ((k * 1001) as i64, (k * 7) as i64), "round {k}");
        }
    }
    assert_eq!(
        applied,
        nodes.len() * READINGS as usize,
        "each reading applied exactly once"
    );
    drop((a, b));
}
