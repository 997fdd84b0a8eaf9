//! What the demo shows in the terminal: what to open (the dashboard's URL,
//! the admin token) and how the hosts are set up, then every few seconds
//! one line per demo node, read from the collector's JSON API (status,
//! load, totals each way with the rate since the last line, rank).

use std::{collections::BTreeMap, time::Duration};

use anyhow::Context as _;
use serde_json::Value;

use super::{
    DemoArgs,
    api::Api,
    netns::{COUNTED_IF, Network},
    traffic,
};

/// One demo node as the API shows it.
#[derive(Debug, Clone)]
pub struct NodeView {
    pub id: String,
    pub name: String,
    pub online: bool,
    pub load: Option<f64>,
    pub upload: u64,
    pub download: u64,
}

/// The demo nodes named `names`, as `GET /api/v1/nodes` lists them (a node
/// missing from the list is missing here).
pub fn fetch(api: &Api, names: &[String]) -> anyhow::Result<Vec<NodeView>> {
    let body = api.get_ok("/api/v1/nodes")?;
    let list = body["nodes"]
        .as_array()
        .with_context(|| format!("no `nodes` in {body}"))?;
    let mut views = Vec::new();
    for node in list {
        let Some(name) = node["name"].as_str() else {
            continue;
        };
        if !names.iter().any(|n| n == name) {
            continue;
        }
        views.push(NodeView {
            id: text(node, "id")?,
            name: name.to_owned(),
            online: node["online"].as_bool().unwrap_or(false),
            load: node["load"]["one"].as_f64(),
            upload: counter(&node["traffic"], "totalUpload")?,
            download: counter(&node["traffic"], "totalDownload")?,
        });
    }
    Ok(views)
}

/// The ranking by total traffic, both ways: node names and values, best
/// first.
pub fn ranking(api: &Api) -> anyhow::Result<Vec<(String, u64)>> {
    let body = api.get_ok("/api/v1/rankings?by=total&direction=both&limit=1000")?;
    let list = body["rankings"]
        .as_array()
        .with_context(|| format!("no `rankings` in {body}"))?;
    list.iter()
        .map(|entry| Ok((text(entry, "name")?, counter(entry, "value")?)))
        .collect()
}

fn text(value: &Value, key: &str) -> anyhow::Result<String> {
    value[key]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no string `{key}` in {value}"))
}

/// A 64-bit counter, which the API sends as a decimal string.
pub fn counter(value: &Value, key: &str) -> anyhow::Result<u64> {
    value[key]
        .as_str()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no decimal string `{key}` in {value}"))
}

/// Prints one line per node: `elapsed` since the traffic started, the
/// rates since `previous` (taken `interval` before).
pub fn print(
    elapsed: Duration,
    now: &[NodeView],
    previous: &[NodeView],
    interval: Duration,
    ranks: &BTreeMap<String, usize>,
) {
    for node in now {
        let before = previous.iter().find(|p| p.name == node.name);
        let rate = |now: u64, before: Option<u64>| match before {
            Some(before) if !interval.is_zero() => format!(
                "{}/s",
                iec(((now.saturating_sub(before)) as f64 / interval.as_secs_f64()) as u64)
            ),
            _ => "-".to_owned(),
        };
        println!(
            "[{:>5}s] {:<13} {:<7} load {:>5}  up {:>10} {:>11}  down {:>10} {:>11}  rank {}",
            elapsed.as_secs(),
            node.name,
            if node.online { "online" } else { "offline" },
            node.load
                .map_or_else(|| "-".to_owned(), |l| format!("{l:.2}")),
            iec(node.upload),
            rate(node.upload, before.map(|b| b.upload)),
            iec(node.download),
            rate(node.download, before.map(|b| b.download)),
            ranks
                .get(&node.name)
                .map_or_else(|| "-".to_owned(), |r| format!("#{r}")),
        );
    }
}

/// What to open, and how the demo is set up.
pub fn announce(args: &DemoArgs, api: &Api, net: &Network, database_url: &str, temp: bool) {
    println!();
    println!("  dashboard    http://{}/", api.addr());
    println!("  API          http://{}/api/v1/nodes", api.addr());
    println!(
        "  admin token  {}   (Authorization: Bearer …)",
        api.admin_token()
    );
    if temp {
        println!("  database     {database_url}");
    }
    for (i, host) in net.hosts.iter().enumerate() {
        println!(
            "  demo-{:<8} namespace {} ({COUNTED_IF} {}), about {}/s planned",
            host.name,
            host.ns.name,
            host.addr,
            iec(traffic::planned_rate(i))
        );
    }
    match args.duration {
        Some(d) => println!("\ndemo: running for {d:?}; Ctrl-C stops it earlier"),
        None => println!("\ndemo: running until Ctrl-C"),
    }
}

/// Each node's rank by total traffic (empty if the API does not answer).
pub fn ranks(api: &Api) -> BTreeMap<String, usize> {
    ranking(api)
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, (name, _))| (name, i + 1))
        .collect()
}

/// Bytes in IEC units (`12.3 MiB`).
pub fn iec(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_in_iec_units() {
        assert_eq!(iec(0), "0 B");
        assert_eq!(iec(1023), "1023 B");
        assert_eq!(iec(1536), "1.5 KiB");
        assert_eq!(iec(3 * 1024 * 1024), "3.0 MiB");
    }
}
