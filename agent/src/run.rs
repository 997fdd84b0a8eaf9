//! `tally-agent run`: attach, keep attached, report.

use std::time::Duration;

use anyhow::Context as _;
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    time::{Instant, Interval, MissedTickBehavior, interval_at},
};

use crate::{
    cli::RunArgs,
    diagnose,
    ebpf::{
        engine::{AttachMode, Engine},
        epoch_hex,
        legacy::SupersededSet,
    },
    filter::IfaceFilter,
    heartbeat::{self, CollectorConfig, Heartbeats, Reading, Sequencer, TOKEN_ENV},
    links::LinkClasses,
    netwatch::{Changes, NetWatch},
    pins::{PinLayout, PinLock},
    source::{CounterSource, EbpfSource, ProcfsSource, Rebase, SourceKind, superseded_snapshot},
    state::StateDir,
    system::Probe,
};

/// SIGTERM and SIGINT, listened for from the very start so that a stop
/// request during start-up is handled like any other.
struct Stop {
    terminate: Signal,
    interrupt: Signal,
}

impl Stop {
    fn listen() -> anyhow::Result<Self> {
        Ok(Self {
            terminate: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            interrupt: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
        })
    }

    async fn requested(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }
}

pub async fn run(args: RunArgs, layout: PinLayout) -> anyhow::Result<()> {
    let mut stop = Stop::listen()?;
    // With a collector, SIGHUP reads the token file again. Listened for from
    // the very start, so that it never ends the agent (its default action).
    let hangup = match args.collector.collector {
        Some(_) => Some(signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?),
        None => None,
    };
    let filter = IfaceFilter::new(&args.filter.include, &args.filter.exclude)?;
    // Checked before anything is attached: a bad URL or token stops here.
    let config = CollectorConfig::from_args(&args.collector, token_env()?)?;
    // The state directory (the reboot journal) only matters with a
    // collector; locked until the agent exits.
    let collector = match config {
        Some(config) => {
            let state = StateDir::open(&args.collector.state_dir)?;
            tracing::info!(state_dir = %state.path().display(), "state directory");
            Some(Collector {
                config,
                state,
                hangup,
            })
        }
        None => None,
    };
    // After every check of the settings: a refusal stays one line.
    tracing::info!(version = %crate::VERSION, "tally-agent starting");
    if let Some(exposed) = collector
        .as_ref()
        .and_then(|c| c.config.exposed_token_file.as_ref())
    {
        exposed.warn();
    }
    match args.source {
        SourceKind::Ebpf => run_ebpf(&args, layout, filter, collector, &mut stop).await,
        SourceKind::Procfs => {
            tracing::info!("counting from /proc/net/dev (no eBPF)");
            // The heartbeat sender asks for a new epoch through this when the
            // collector cannot take the procfs counters any more.
            let rebase = Rebase::default();
            let mut source = ProcfsSource::new(filter).with_rebase(rebase.clone());
            let mut watching = Watching::open(None, args.resync_interval)?;
            let mut reporting = Reporting::start(collector, args.interval, Some(rebase));
            watching.start(&mut reporting.links).await?;
            report_loop(&mut source, reporting, watching, &mut stop).await
        }
    }
}

/// Where to report: the checked settings, the state directory that keeps
/// the reboot journal, and SIGHUP (which reads the token file again).
struct Collector {
    config: CollectorConfig,
    state: StateDir,
    hangup: Option<Signal>,
}

/// TALLY_TOKEN, when set and not empty.
fn token_env() -> anyhow::Result<Option<String>> {
    match std::env::var(TOKEN_ENV) {
        Ok(token) if token.is_empty() => Ok(None),
        Ok(token) => Ok(Some(token)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => {
            anyhow::bail!("{TOKEN_ENV} is not valid UTF-8")
        }
    }
}

async fn run_ebpf(
    args: &RunArgs,
    layout: PinLayout,
    filter: IfaceFilter,
    collector: Option<Collector>,
    stop: &mut Stop,
) -> anyhow::Result<()> {
    let probe = Probe::current();
    let explain = |e| anyhow::anyhow!(diagnose::explain(&e, &probe));
    if args.attach == AttachMode::Tcx && !probe.has_tcx() {
        anyhow::bail!("--attach tcx needs kernel 6.6 or newer; use --attach auto or netlink");
    }
    let existed = layout.dir().exists();
    layout.prepare().map_err(|e| explain(e.into()))?;
    let _lock = PinLock::acquire(&layout).context("cannot lock the pin directory")?;
    let mut engine = match Engine::start(
        layout.clone(),
        args.attach,
        probe.has_tcx(),
        args.forget_after,
    ) {
        Ok(engine) => engine,
        Err(error) => {
            if !existed {
                // Leave no empty pin directory behind a start that failed.
                let _ = std::fs::remove_dir(layout.links_dir());
                let _ = std::fs::remove_dir(layout.dir());
            }
            return Err(explain(error));
        }
    };
    if let Some(old) = engine.take_superseded() {
        report_superseded(&old, collector.as_ref());
    }
    let epoch = epoch_hex(&engine.meta().epoch);
    if engine.created_counters() {
        tracing::info!(%epoch, pin_dir = %layout.dir().display(), "created a new counter set");
    } else {
        tracing::info!(%epoch, pin_dir = %layout.dir().display(), "adopted the pinned counter set");
    }
    tracing::info!(
        mode = if engine.uses_netlink() {
            "netlink"
        } else {
            "tcx"
        },
        "attach mode"
    );

    let mut watching = Watching::open(Some((&mut engine, &filter)), args.resync_interval)?;
    let mut reporting = Reporting::start(collector, args.interval, None);
    watching.start(&mut reporting.links).await?;
    if let Some((engine, _)) = &watching.engine {
        tracing::info!(interfaces = engine.attached().len(), "attached; counting");
    }

    let mut source = EbpfSource::new(layout);
    report_loop(&mut source, reporting, watching, stop).await
}

/// Hands the final counts of the layout-1 counter set the engine took over
/// to the reboot journal, which the sender delivers before the new epoch's
/// first heartbeat (without a collector they are only logged).
fn report_superseded(old: &SupersededSet, collector: Option<&Collector>) {
    let epoch = epoch_hex(&old.epoch);
    let rx_bytes: u64 = old.records.iter().map(|r| r.counters.rx_bytes).sum();
    let tx_bytes: u64 = old.records.iter().map(|r| r.counters.tx_bytes).sum();
    let Some(collector) = collector else {
        tracing::info!(%epoch, rx_bytes, tx_bytes, "final counts of the old counter set (not reported: no --collector)");
        return;
    };
    match superseded_snapshot(old) {
        Ok(snapshot) => {
            let reading = Sequencer::default().stamp(snapshot);
            tracing::info!(%epoch, rx_bytes, tx_bytes, sequence = reading.sequence, "reporting the old counter set's final counts before anything else");
            heartbeat::journal_last_of_set(&collector.state, &reading);
        }
        Err(error) => tracing::error!(
            %epoch,
            error = %format!("{error:#}"),
            "cannot report the old counter set's final counts"
        ),
    }
}

/// What the report loop keeps in step with the namespace: the attachments
/// (eBPF) and the interfaces' classes, from netlink notifications.
struct Watching<'a> {
    watch: NetWatch,
    /// The engine and the filter of the interfaces it counts (eBPF only).
    engine: Option<(&'a mut Engine, &'a IfaceFilter)>,
    /// How often the links are listed without a notification.
    resync_every: Duration,
}

impl<'a> Watching<'a> {
    fn open(
        engine: Option<(&'a mut Engine, &'a IfaceFilter)>,
        resync_every: Duration,
    ) -> anyhow::Result<Self> {
        let watch = NetWatch::open()
            .context("cannot open a netlink socket to watch interfaces and routes")?;
        Ok(Self {
            watch,
            engine,
            resync_every,
        })
    }

    /// The first listing of links and default routes, before any reading.
    async fn start(&mut self, classes: &mut LinkClasses) -> anyhow::Result<()> {
        let links = self
            .watch
            .links()
            .await
            .context("cannot list the network interfaces")?;
        self.sync_engine(&links);
        classes.set_links(&links);
        let uplinks = self
            .watch
            .default_route_interfaces()
            .await
            .context("cannot list the default routes")?;
        classes.set_uplinks(uplinks);
        tracing::info!(uplinks = ?classes.uplink_names(), "interfaces with a default route");
        Ok(())
    }

    fn sync_engine(&mut self, links: &[crate::netwatch::Link]) {
        if let Some((engine, filter)) = self.engine.as_mut() {
            let named: Vec<(u32, String)> =
                links.iter().map(|l| (l.ifindex, l.name.clone())).collect();
            engine.sync(&named, filter);
        }
    }

    /// Lists again what `changes` call for: the links (attaching to new
    /// ones, letting go of ones that went), and the default routes when one
    /// may have changed or the links did.
    async fn refresh(&mut self, classes: &mut LinkClasses, changes: Changes) {
        let mut links_changed = false;
        if changes.links {
            match self.watch.links().await {
                Ok(links) => {
                    self.sync_engine(&links);
                    links_changed = classes.set_links(&links);
                }
                Err(error) => tracing::warn!(%error, "cannot list the network interfaces"),
            }
        }
        if changes.default_routes || links_changed {
            self.watch.update_uplinks(classes).await;
        }
    }
}

/// Where readings go: the heartbeat sender, or nowhere but the debug log.
struct Reporting {
    every: Duration,
    sequencer: Sequencer,
    heartbeats: Option<Heartbeats>,
    /// The interfaces' kinds and default routes, kept current by the report
    /// loop; every reading gets them.
    links: LinkClasses,
    /// The procfs source's new-epoch requests (shared with the source and
    /// the sender): a request brings a reading at once, so that the new
    /// epoch's baseline comes as soon as possible.
    rebase: Option<Rebase>,
}

impl Reporting {
    fn start(collector: Option<Collector>, every: Duration, rebase: Option<Rebase>) -> Self {
        let heartbeats = match collector {
            Some(Collector {
                config,
                state,
                hangup,
            }) => Some(Heartbeats::start(
                config,
                every,
                rebase.clone(),
                state,
                hangup,
            )),
            None => {
                tracing::info!("no --collector given: counting locally only");
                None
            }
        };
        Self {
            every,
            sequencer: Sequencer::default(),
            heartbeats,
            links: LinkClasses::default(),
            rebase,
        }
    }

    /// Reads the counters and stamps the reading at once.
    fn read(&mut self, source: &mut dyn CounterSource) -> Option<Reading> {
        match source.snapshot() {
            Ok(mut snapshot) => {
                self.links.classify(&mut snapshot.interfaces);
                let reading = self.sequencer.stamp(snapshot);
                let (rx, tx) = reading.snapshot.totals();
                tracing::debug!(
                    rx_bytes = rx,
                    tx_bytes = tx,
                    interfaces = reading.snapshot.interfaces.len(),
                    sequence = reading.sequence,
                    "counters"
                );
                Some(reading)
            }
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "cannot read the counters");
                None
            }
        }
    }

    /// Reads and hands the reading to the sender (never waits for it).
    fn report(&mut self, source: &mut dyn CounterSource) {
        if let Some(reading) = self.read(source)
            && let Some(heartbeats) = &self.heartbeats
        {
            heartbeats.publish(reading);
        }
    }

    /// A new report interval, when the collector asks for one.
    async fn interval_changed(&mut self) -> Duration {
        match self.heartbeats.as_mut() {
            Some(heartbeats) => heartbeats.interval_changed().await,
            None => std::future::pending().await,
        }
    }

    /// On stop: one last reading, sent within the final timeout. A second
    /// signal cuts the wait short.
    async fn finish(mut self, source: &mut dyn CounterSource, stop: &mut Stop) {
        if self.heartbeats.is_none() {
            return;
        }
        let last = self.read(source);
        let Some(heartbeats) = self.heartbeats.take() else {
            return;
        };
        tokio::select! {
            _ = heartbeats.finish(last) => {}
            signal = stop.requested() => {
                tracing::warn!(signal, "not waiting any longer for the last heartbeat");
            }
        }
    }
}

fn report_timer(every: Duration, first: Instant) -> Interval {
    let mut timer = interval_at(first, every);
    timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    timer
}

async fn report_loop(
    source: &mut dyn CounterSource,
    mut reporting: Reporting,
    mut watching: Watching<'_>,
    stop: &mut Stop,
) -> anyhow::Result<()> {
    let mut report = report_timer(reporting.every, Instant::now());
    // The first listing was done by `Watching::start`.
    let mut resync = interval_at(
        Instant::now() + watching.resync_every,
        watching.resync_every,
    );
    resync.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let rebase = reporting.rebase.clone();
    loop {
        let rebase_requested = async {
            match &rebase {
                Some(rebase) => rebase.requested().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            signal = stop.requested() => { tracing::info!(signal, "stopping"); break; }
            changed = watching.watch.changed() => {
                let Some(changes) = changed else {
                    anyhow::bail!("the netlink socket watching interfaces and routes closed");
                };
                watching.refresh(&mut reporting.links, changes).await;
            }
            _ = resync.tick() => {
                let links_only = Changes { links: true, default_routes: false };
                watching.refresh(&mut reporting.links, links_only).await;
            }
            every = reporting.interval_changed() => {
                report = report_timer(every, Instant::now() + every);
            }
            _ = report.tick() => reporting.report(source),
            // The source starts the new epoch at this reading.
            () = rebase_requested => reporting.report(source),
        }
    }
    reporting.finish(source, stop).await;
    if watching.engine.is_some() {
        tracing::info!(
            "leaving the programs attached: the kernel keeps counting until the agent is back"
        );
    }
    Ok(())
}
