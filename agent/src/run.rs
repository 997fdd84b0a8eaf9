//! `tally-agent run`: attach, keep attached, report.

use std::time::Duration;

use anyhow::Context as _;
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    time::{Instant, Interval, MissedTickBehavior, interval, interval_at},
};

use crate::{
    cli::RunArgs,
    diagnose,
    ebpf::{
        engine::{AttachMode, Engine},
        epoch_hex,
    },
    filter::IfaceFilter,
    heartbeat::{CollectorConfig, Heartbeats, Reading, Sequencer, TOKEN_ENV},
    netwatch::NetWatch,
    pins::{PinLayout, PinLock},
    source::{CounterSource, EbpfSource, ProcfsSource, Rebase, SourceKind},
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
    let filter = IfaceFilter::new(&args.filter.include, &args.filter.exclude)?;
    // Checked before anything is attached: a bad URL or token stops here.
    let collector = CollectorConfig::from_args(&args.collector, token_env()?)?;
    match args.source {
        SourceKind::Ebpf => run_ebpf(&args, layout, filter, collector, &mut stop).await,
        SourceKind::Procfs => {
            tracing::info!("counting from /proc/net/dev (no eBPF)");
            // The heartbeat sender asks for a new epoch through this when the
            // collector cannot take the procfs counters any more.
            let rebase = Rebase::default();
            let mut source = ProcfsSource::new(filter).with_rebase(rebase.clone());
            let reporting = Reporting::start(collector, args.interval, Some(rebase));
            report_loop(&mut source, reporting, None, &mut stop).await
        }
    }
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
    collector: Option<CollectorConfig>,
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

    let mut watch = NetWatch::open().context("cannot open a netlink socket to watch interfaces")?;
    let links = watch
        .links()
        .await
        .context("cannot list the network interfaces")?;
    engine.sync(&links, &filter);
    tracing::info!(interfaces = engine.attached().len(), "attached; counting");

    let mut source = EbpfSource::new(layout);
    let reporting = Reporting::start(collector, args.interval, None);
    report_loop(
        &mut source,
        reporting,
        Some((&mut engine, &mut watch, &filter, args.resync_interval)),
        stop,
    )
    .await
}

type Watching<'a> = (&'a mut Engine, &'a mut NetWatch, &'a IfaceFilter, Duration);

/// Where readings go: the heartbeat sender, or nowhere but the debug log.
struct Reporting {
    every: Duration,
    sequencer: Sequencer,
    heartbeats: Option<Heartbeats>,
    /// The procfs source's new-epoch requests (shared with the source and
    /// the sender): a request brings a reading at once, so that the new
    /// epoch's baseline comes as soon as possible.
    rebase: Option<Rebase>,
}

impl Reporting {
    fn start(collector: Option<CollectorConfig>, every: Duration, rebase: Option<Rebase>) -> Self {
        let heartbeats = match collector {
            Some(config) => Some(Heartbeats::start(config, every, rebase.clone())),
            None => {
                tracing::info!("no --collector given: counting locally only");
                None
            }
        };
        Self {
            every,
            sequencer: Sequencer::default(),
            heartbeats,
            rebase,
        }
    }

    /// Reads the counters and stamps the reading at once.
    fn read(&mut self, source: &mut dyn CounterSource) -> Option<Reading> {
        match source.snapshot() {
            Ok(snapshot) => {
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
    mut watching: Option<Watching<'_>>,
    stop: &mut Stop,
) -> anyhow::Result<()> {
    let mut report = report_timer(reporting.every, Instant::now());
    let resync_every = watching.as_ref().map_or(Duration::from_secs(3600), |w| w.3);
    let mut resync = interval(resync_every);
    resync.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let rebase = reporting.rebase.clone();
    loop {
        let link_change = async {
            match watching.as_mut() {
                Some((_, watch, _, _)) => watch.changed().await,
                None => std::future::pending().await,
            }
        };
        let rebase_requested = async {
            match &rebase {
                Some(rebase) => rebase.requested().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            signal = stop.requested() => { tracing::info!(signal, "stopping"); break; }
            changed = link_change => {
                if changed.is_none() {
                    anyhow::bail!("the netlink socket watching interfaces closed");
                }
                resync_links(&mut watching).await;
            }
            _ = resync.tick() => resync_links(&mut watching).await,
            every = reporting.interval_changed() => {
                report = report_timer(every, Instant::now() + every);
            }
            _ = report.tick() => reporting.report(source),
            // The source starts the new epoch at this reading.
            () = rebase_requested => reporting.report(source),
        }
    }
    reporting.finish(source, stop).await;
    if watching.is_some() {
        tracing::info!(
            "leaving the programs attached: the kernel keeps counting until the agent is back"
        );
    }
    Ok(())
}

async fn resync_links(watching: &mut Option<Watching<'_>>) {
    let Some((engine, watch, filter, _)) = watching.as_mut() else {
        return;
    };
    match watch.links().await {
        Ok(links) => engine.sync(&links, filter),
        Err(error) => tracing::warn!(%error, "cannot list the network interfaces"),
    }
}
