//! `tally-collector billing show|set|defaults`: billing settings from the
//! command line, read and changed in the database through the same
//! functions as the HTTP API; `--json` prints what the API answers.

mod render;
mod values;

use anyhow::Context as _;
use chrono::Utc;
use clap::{
    ArgAction, Args, Subcommand,
    builder::{PossibleValuesParser, TypedValueParser as _},
    error::ErrorKind,
};
use sqlx::PgPool;
use tally_collector::{
    billing::{
        CountRule, Mode,
        settings::{self, Change, Field, SettingsPatch},
        view,
    },
    http::billing as api,
    period::Schedule,
    views,
};

use self::{
    render::{render_defaults, render_node},
    values::{
        Percents, parse_anchor_day, parse_max_rate, parse_quota, parse_thresholds, parse_time_zone,
    },
};

#[derive(Debug, Subcommand)]
pub enum BillingCommand {
    /// Show a node's effective billing settings (each marked as its own or
    /// the fleet's) and its current period: counters, usage, share of the
    /// quota, forecast at the period's end, peak and 95th percentile rates.
    Show {
        /// The node: its id or its name.
        node: String,
        #[command(flatten)]
        output: BillingOutput,
    },
    /// Change a node's own billing settings, then show its billing.
    ///
    /// Only the settings given change; --clear FIELD removes the node's own
    /// value, so that the fleet's applies again. Example: `billing set web-1
    /// --anchor-day 15 --time-zone Europe/Berlin --quota 2TiB`.
    Set {
        /// The node: its id or its name.
        node: String,
        #[command(flatten)]
        settings: SettingsArgs,
        #[command(flatten)]
        output: BillingOutput,
    },
    /// Show the fleet's default billing settings (what applies to every
    /// node without its own value), or change them when settings are given.
    ///
    /// Only the settings given change; --clear FIELD sets anchor-day or
    /// quota to none and any other setting to its built-in default (UTC,
    /// sum, all, 80,100, 100Gbit).
    Defaults {
        #[command(flatten)]
        settings: SettingsArgs,
        /// Print the JSON that `GET /api/v1/billing/defaults` answers
        /// instead of text (counters as decimal strings).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct BillingOutput {
    /// The same setting (and variable) as `serve --period-reset`: nodes
    /// whose settings have no anchor day use this schedule's day, in UTC.
    /// Without it, such nodes' periods are shown as ending only on request.
    #[arg(long, env = "TALLY_PERIOD_RESET", value_name = "SCHEDULE")]
    pub period_reset: Option<Schedule>,
    /// Print the JSON that `GET /api/v1/nodes/{id}/billing` answers instead
    /// of text (counters as decimal strings).
    #[arg(long)]
    pub json: bool,
}

/// The settings `billing set` and `billing defaults` change.
#[derive(Debug, Args)]
pub struct SettingsArgs {
    /// The day of the month periods start on, 1 to 31, at local midnight
    /// in the time zone (in shorter months, on their last day). Without
    /// it, unchanged.
    #[arg(long, value_name = "DAY", value_parser = parse_anchor_day)]
    pub anchor_day: Option<u32>,
    /// The IANA time zone periods start in, e.g. `Europe/Berlin` or `UTC`.
    /// Without it, unchanged.
    #[arg(long, value_name = "ZONE", value_parser = parse_time_zone)]
    pub time_zone: Option<String>,
    /// How usage is billed: `sum` (upload + download), `max` (the larger),
    /// `upload`, `download`, or `p95` (the 95th percentile of 5-minute
    /// rates, in bytes per second). Without it, unchanged.
    #[arg(long, value_name = "MODE", value_parser = PossibleValuesParser::new(["sum", "max", "upload", "download", "p95"]).try_map(|s| s.parse::<Mode>()))]
    pub mode: Option<Mode>,
    /// Which interfaces count: `all` (every interface but loopback) or
    /// `uplink` (physical interfaces and those carrying a default route,
    /// so that container traffic is not counted twice). Without it,
    /// unchanged.
    #[arg(long, value_name = "RULE", value_parser = PossibleValuesParser::new(["all", "uplink"]).try_map(|s| s.parse::<CountRule>()))]
    pub count_rule: Option<CountRule>,
    /// The traffic limit per period, in bytes (in mode p95, bytes per
    /// second): a whole number, or a number with a unit (any case): kB,
    /// MB, GB, TB, PB (powers of 1000), KiB, MiB, GiB, TiB, PiB (powers of
    /// 1024), or kbit, Mbit, Gbit, Tbit (bits), e.g. `500GiB`, `1.5TB`,
    /// `100Mbit`; it must come to a whole number of bytes. Without it,
    /// unchanged.
    #[arg(long, value_name = "BYTES", value_parser = parse_quota)]
    pub quota: Option<i64>,
    /// Percentages of the quota at which a quota event fires (once per
    /// period each), comma-separated, e.g. `80,100`: at most 10, each 1 to
    /// 1000; `none` for no events. Without it, unchanged.
    #[arg(long, value_name = "PERCENTS", value_parser = parse_thresholds)]
    pub thresholds: Option<Percents>,
    /// The most bytes per second one interface carries in one direction (a
    /// larger delta is held as an anomaly), with the units of --quota and
    /// an optional `/s`, e.g. `10Gbit` (= 1250000000). Without it,
    /// unchanged.
    #[arg(long, value_name = "BYTES_PER_S", value_parser = parse_max_rate)]
    pub max_rate: Option<i64>,
    /// Settings to clear, repeated or comma-separated: anchor-day,
    /// time-zone, mode, count-rule, quota, thresholds, max-rate. On a node,
    /// its own value goes (the fleet's applies); on the fleet, anchor-day
    /// and quota become none and the others their built-in defaults.
    /// Without it, nothing is cleared.
    #[arg(long, value_name = "FIELD", value_delimiter = ',', action = ArgAction::Append, value_parser = PossibleValuesParser::new(Field::ALL.map(Field::flag)).try_map(|s| s.parse::<Field>()))]
    pub clear: Vec<Field>,
}

/// Runs `billing show|set|defaults`.
pub async fn run(pool: &PgPool, command: BillingCommand) -> anyhow::Result<()> {
    match command {
        BillingCommand::Show { node, output } => {
            let id = settings::node_id(pool, &node).await?;
            print_node(pool, &id, &output).await
        }
        BillingCommand::Set {
            node,
            settings: args,
            output,
        } => {
            let patch = args.patch().map_err(anyhow::Error::msg)?;
            let id = settings::node_id(pool, &node).await?;
            settings::patch_node(pool, &id, &patch)
                .await
                .with_context(|| format!("cannot change the billing settings of {node}"))?;
            if !output.json {
                println!("billing settings of {node} changed");
                if patch.moves_the_calendar() {
                    println!(
                        "note: the current period keeps its start; it now ends at the new anchor's next boundary"
                    );
                }
                println!();
            }
            print_node(pool, &id, &output).await
        }
        BillingCommand::Defaults {
            settings: args,
            json,
        } => {
            let patch = args.patch().map_err(anyhow::Error::msg)?;
            let defaults = if patch.is_empty() {
                settings::defaults(pool).await?
            } else {
                let defaults = settings::update_defaults(pool, &patch)
                    .await
                    .context("cannot change the fleet's billing defaults")?;
                if !json {
                    println!("fleet billing defaults changed");
                    if patch.moves_the_calendar() {
                        println!(
                            "note: current periods keep their starts; they end at the new anchor's next boundary"
                        );
                    }
                    println!();
                }
                defaults
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&api::BillingDefaults::from(&defaults))?
                );
            } else {
                print!("{}", render_defaults(&defaults));
            }
            Ok(())
        }
    }
}

async fn print_node(pool: &PgPool, id: &str, output: &BillingOutput) -> anyhow::Result<()> {
    let fallback = output.period_reset.map(|schedule| schedule.day());
    let billing = view::node(pool, id, fallback, Utc::now()).await?;
    if output.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&api::NodeBilling::from(&billing))?
        );
    } else {
        let node = views::nodes::get(pool, id).await?;
        print!("{}", render_node(&node.name, &billing));
    }
    Ok(())
}

impl SettingsArgs {
    /// The patch these options make; refuses a setting both given and
    /// cleared.
    pub fn patch(&self) -> Result<SettingsPatch, String> {
        fn given<T: Clone>(value: &Option<T>) -> Change<T> {
            value.clone().map_or(Change::Keep, Change::Set)
        }
        let mut patch = SettingsPatch {
            anchor_day: given(&self.anchor_day),
            time_zone: given(&self.time_zone),
            mode: given(&self.mode),
            count_rule: given(&self.count_rule),
            quota: given(&self.quota),
            thresholds: given(&self.thresholds.as_ref().map(|t| t.0.clone())),
            max_rate: given(&self.max_rate),
        };
        for &field in &self.clear {
            let set = match field {
                Field::AnchorDay => self.anchor_day.is_some(),
                Field::TimeZone => self.time_zone.is_some(),
                Field::Mode => self.mode.is_some(),
                Field::CountRule => self.count_rule.is_some(),
                Field::Quota => self.quota.is_some(),
                Field::Thresholds => self.thresholds.is_some(),
                Field::MaxRate => self.max_rate.is_some(),
            };
            if set {
                return Err(format!(
                    "--clear {0} cannot be used with --{0}: set it or clear it",
                    field.flag()
                ));
            }
            patch.clear(field);
        }
        Ok(patch)
    }
}

/// What is wrong with how `billing set` or `billing defaults` was called
/// that clap cannot see: the subcommand's name, the kind of mistake and
/// the message; `None` when nothing is (or for other commands).
pub fn usage_problem(command: &BillingCommand) -> Option<(&'static str, ErrorKind, String)> {
    let (name, settings) = match command {
        BillingCommand::Set { settings, .. } => ("set", settings),
        BillingCommand::Defaults { settings, .. } => ("defaults", settings),
        BillingCommand::Show { .. } => return None,
    };
    match settings.patch() {
        Err(conflict) => Some((name, ErrorKind::ArgumentConflict, conflict)),
        Ok(patch) if patch.is_empty() && name == "set" => Some((
            name,
            ErrorKind::MissingRequiredArgument,
            "give at least one setting to change, or --clear FIELD".to_owned(),
        )),
        Ok(_) => None,
    }
}
