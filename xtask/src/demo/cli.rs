//! The options of `cargo xtask demo`.

use std::{path::PathBuf, time::Duration};

/// `cargo xtask demo` options.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Stop by itself after this long (e.g. `60s`, `5m`; a bare number is
    /// seconds). Without it the demo runs until Ctrl-C (or SIGTERM).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub duration: Option<Duration>,

    /// Port of the dashboard and the JSON API, on 127.0.0.1.
    #[arg(long, default_value_t = 8080, value_name = "PORT")]
    pub http_port: u16,

    /// At the end, stop the traffic, let each agent send its last heartbeat,
    /// and check through the JSON API that every node's totals equal what
    /// its host's kernel counted, to the byte, and that the ranking follows
    /// the traffic plan; exit non-zero on any mismatch.
    #[arg(long)]
    pub check: bool,

    /// Use this PostgreSQL database (the collector applies its migrations)
    /// instead of a throwaway cluster under `target/tally-demo/`. Nodes
    /// named `demo-alpha`, `demo-bravo` and `demo-charlie` in it are
    /// replaced at the start and removed at the end.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "URL")]
    pub database_url: Option<String>,

    /// Take `tally-agent` and `tally-collector` from this directory instead
    /// of building them (`cargo build -p tally-agent -p tally-collector`).
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
}

/// A humantime duration (`90s`, `2m`) or a number of seconds; at least 1 s.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = match text.trim().parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => humantime::parse_duration(text).map_err(|e| e.to_string())?,
    };
    if duration < Duration::from_secs(1) {
        return Err("must be at least 1s".to_owned());
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units_or_seconds() {
        assert_eq!(parse_duration("60"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
