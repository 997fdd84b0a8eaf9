//! The host's side of the end-to-end check: a throwaway PostgreSQL and the
//! static `tally-collector` (the release build for this machine's CPU) on
//! the host's loopback, which the guests reach through QEMU's guest
//! forward (`qemu::GUEST_COLLECTOR`); a node per VM, and its stored totals.
//! Built from the demo's parts (cluster, collector process, JSON API client).

use std::{
    net::Ipv4Addr,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::bail;
use tally_testkit::devdb::TempCluster;

use crate::demo::{
    api::Api,
    fleet, free_port,
    processes::{Binaries, Collector},
    summary,
};

/// The collector and its database, stopped and removed when dropped.
pub struct HostCollector {
    api: Api,
    grpc_port: u16,
    // Dropped in this order: the collector before its database.
    _collector: Collector,
    _cluster: Option<TempCluster>,
}

impl HostCollector {
    /// Starts both; `bin_dir` holds the static binaries for this machine.
    pub fn start(bin_dir: &Path, run_dir: &Path) -> anyhow::Result<Self> {
        let bins = Binaries::in_dir(bin_dir)?;
        let admin_token = fleet::random_token()?;
        let api = Api::new(free_port(Ipv4Addr::LOCALHOST)?.port(), admin_token.clone());
        let (cluster, database_url) = fleet::database(None, run_dir)?;
        let grpc = free_port(Ipv4Addr::LOCALHOST)?;
        let collector = Collector::start(&bins, grpc, &api, &database_url, &admin_token, run_dir)?;
        Ok(Self {
            api,
            grpc_port: grpc.port(),
            _collector: collector,
            _cluster: cluster,
        })
    }

    /// The collector's URL as a guest on QEMU's user network reaches it.
    pub fn url_for_guests(&self) -> String {
        format!("http://{}", super::qemu::GUEST_COLLECTOR)
    }

    /// The port the guest forward relays to.
    pub fn grpc_port(&self) -> u16 {
        self.grpc_port
    }

    /// Enrols `name` (replacing one of that name); its token.
    pub fn add_node(&self, name: &str) -> anyhow::Result<String> {
        let tokens = fleet::enrol(&self.api, &[name.to_owned()])?;
        tokens
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("no token for {name}"))
    }

    /// Waits (10 s at most) until `name`'s stored totals are `download`
    /// and `upload`; an error with what is stored otherwise.
    pub fn expect_totals(&self, name: &str, download: u64, upload: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stored = summary::fetch(&self.api, &[name.to_owned()])?
                .into_iter()
                .next()
                .map(|node| (node.download, node.upload));
            if stored == Some((download, upload)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the collector stored (download, upload) = {stored:?} for {name}, \
                     the guest's kernel counted ({download}, {upload}) (rx, tx)"
                );
            }
            thread::sleep(Duration::from_millis(250));
        }
    }
}
