//! The baseline: `pgbench -b simple-update` on the same cluster, through its
//! Unix socket as the `postgres` superuser (the cluster trusts local
//! connections, so pgbench may run as whatever user we are).

use std::process::Command;

use anyhow::{Context as _, bail};
use tally_testkit::devdb::TempCluster;

use super::observe::{self, CpuSample, CpuUse};

/// The database pgbench's tables live in.
pub(super) const DATABASE: &str = "pgbench";
/// pgbench worker threads.
pub(super) const THREADS: u32 = 2;

/// One `pgbench -b simple-update` run.
pub(super) struct PgbenchRun {
    pub(super) clients: u32,
    pub(super) tps: f64,
    pub(super) latency_ms: Option<f64>,
    pub(super) failed: Option<u64>,
    pub(super) cpu: CpuUse,
}

/// `pgbench -i -s <scale>`.
pub(super) async fn init(cluster: &TempCluster, scale: u32) -> anyhow::Result<()> {
    let mut command = pgbench(cluster);
    command.args(["-i", "-q", "-s", &scale.to_string(), DATABASE]);
    output(command).await.map(drop)
}

/// `pgbench -n -b simple-update -c <clients> -j 2 -T <seconds>`.
pub(super) async fn simple_update(
    cluster: &TempCluster,
    postmaster: Option<i32>,
    clients: u32,
    seconds: u64,
) -> anyhow::Result<PgbenchRun> {
    let mut command = pgbench(cluster);
    command
        .args(["-n", "-b", "simple-update"])
        .args(["-c", &clients.to_string(), "-j", &THREADS.to_string()])
        .args(["-T", &seconds.to_string(), DATABASE]);
    observe::settle(postmaster).await;
    let before = CpuSample::now(postmaster);
    let text = output(command).await?;
    observe::settle(postmaster).await;
    let cpu = CpuSample::now(postmaster).since(&before);
    let tps = value_after(&text, "tps = ")
        .with_context(|| format!("no `tps = ...` in pgbench's output:\n{text}"))?;
    Ok(PgbenchRun {
        clients,
        tps,
        latency_ms: value_after(&text, "latency average = "),
        failed: value_after(&text, "number of failed transactions: ").map(|v| v as u64),
        cpu,
    })
}

fn pgbench(cluster: &TempCluster) -> Command {
    let mut command = Command::new(cluster.bin("pgbench"));
    command.arg("-h").arg(cluster.socket_dir()).args([
        "-p",
        &cluster.port().to_string(),
        "-U",
        "postgres",
    ]);
    command.env("PGPASSWORD", cluster.password());
    command
}

/// Runs `command` off the runtime's threads; its stdout and stderr.
async fn output(mut command: Command) -> anyhow::Result<String> {
    let shown = format!("{command:?}");
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .context("the pgbench task failed")?
        .with_context(|| format!("cannot run {shown}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() {
        bail!("{shown} failed ({}):\n{text}", output.status);
    }
    Ok(text)
}

/// The number that follows `prefix` at the start of a line of `text`.
fn value_after(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.trim().strip_prefix(prefix))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pgbench_15_output() {
        let text = "pgbench (15.8)\ntransaction type: <builtin: simple update>\n\
                    number of failed transactions: 0 (0.000%)\n\
                    latency average = 3.412 ms\n\
                    initial connection time = 12.345 ms\n\
                    tps = 2344.123456 (without initial connection time)\n";
        assert_eq!(value_after(text, "tps = "), Some(2344.123456));
        assert_eq!(value_after(text, "latency average = "), Some(3.412));
        assert_eq!(
            value_after(text, "number of failed transactions: "),
            Some(0.0)
        );
        assert_eq!(value_after(text, "nothing = "), None);
    }
}
