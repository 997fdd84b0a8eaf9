//! `tally-collector node add|list|remove|rotate-token|revoke`: enrolment,
//! the node table, removal and the nodes' tokens, on the database directly.

use clap::Subcommand;
use sqlx::PgPool;
use tally_collector::{nodes, token_rotation};

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Enrol a node: prints its id and secret token (shown once; only a hash
    /// is stored). Give the token to the node's agent (`--token-file`).
    Add {
        /// A name for the node, unique in the fleet (e.g. its host name).
        name: String,
        /// Print only the token, on one line (for scripts).
        #[arg(long)]
        token_only: bool,
    },
    /// List the nodes with their traffic counters (bytes).
    List {
        /// Print a JSON array instead of a table (counters as decimal
        /// strings: they may exceed what JSON numbers hold exactly).
        #[arg(long)]
        json: bool,
    },
    /// Remove a node and everything stored of it (counters and history).
    Remove {
        /// The node to remove: its id (as printed by `node add`) or its
        /// name.
        node: String,
    },
    /// Give a node a new token (printed once). The token before stays
    /// valid for --grace, or until the node first uses the new one,
    /// whichever comes first. Write the new token into the agent's token
    /// file: the agent reads it again when the file changes (or on SIGHUP;
    /// under the systemd unit, restart the agent).
    RotateToken {
        /// The node: its id or its name.
        node: String,
        /// How long the token before stays valid at most (`0s`: not at
        /// all, for a token that leaked; at most 30 days).
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration, value_name = "DURATION")]
        grace: std::time::Duration,
        /// Print only the token, on one line (for scripts).
        #[arg(long)]
        token_only: bool,
    },
    /// Make every token of a node invalid, keeping everything else of it
    /// (counters, history, billing periods, audit trail): its heartbeats are
    /// refused until `node rotate-token` gives it a new token.
    Revoke {
        /// The node: its id or its name.
        node: String,
    },
}

pub async fn run(pool: &PgPool, command: NodeCommand) -> anyhow::Result<()> {
    match command {
        NodeCommand::Add { name, token_only } => {
            let added = nodes::add(pool, &name).await?;
            if token_only {
                println!("{}", added.token);
            } else {
                println!("node added: {} ({})", added.name, added.id);
                println!(
                    "token (shown once, keep it secret; give it to the agent with --token-file):"
                );
                println!("{}", added.token);
            }
        }
        NodeCommand::List { json } => {
            let listed = nodes::list(pool).await?;
            if json {
                println!("{}", list_json(&listed));
            } else {
                print_table(&listed);
            }
        }
        NodeCommand::Remove { node } => {
            let id = nodes::remove(pool, &node).await?;
            println!("node {id} removed");
        }
        NodeCommand::RotateToken {
            node,
            grace,
            token_only,
        } => {
            let rotated = token_rotation::rotate(pool, &node, grace).await?;
            if token_only {
                println!("{}", rotated.token);
            } else {
                println!("new token for {} ({}):", rotated.name, rotated.id);
                println!("{}", rotated.token);
                match rotated.previous_valid_until {
                    Some(until) => println!(
                        "the token before stays valid until {} UTC, or until the node first uses \
                         this one",
                        until.format("%Y-%m-%d %H:%M:%S")
                    ),
                    None => println!("the token before is no longer valid"),
                }
            }
        }
        NodeCommand::Revoke { node } => {
            let id = token_rotation::revoke(pool, &node).await?;
            println!(
                "node {id}: every token revoked (its records stay; `node rotate-token` gives it a \
                 new one)"
            );
        }
    }
    Ok(())
}

fn list_json(listed: &[nodes::Listed]) -> String {
    let rows: Vec<_> = listed
        .iter()
        .map(|n| {
            serde_json::json!({
                "id": n.id,
                "name": n.name,
                "hostname": n.hostname,
                "lastSeen": n.last_seen.map(|t| t.and_utc().to_rfc3339()),
                "totalUpload": n.total_upload.to_string(),
                "totalDownload": n.total_download.to_string(),
                "periodUpload": n.period_upload.to_string(),
                "periodDownload": n.period_download.to_string(),
                "periodStart": n.period_start.and_utc().to_rfc3339(),
            })
        })
        .collect();
    serde_json::Value::Array(rows).to_string()
}

fn print_table(listed: &[nodes::Listed]) {
    println!(
        "{:<26} {:<20} {:>16} {:>16} {:>16} {:>16}  LAST SEEN",
        "ID", "NAME", "TOTAL UP", "TOTAL DOWN", "PERIOD UP", "PERIOD DOWN"
    );
    for n in listed {
        println!(
            "{:<26} {:<20} {:>16} {:>16} {:>16} {:>16}  {}",
            n.id,
            n.name,
            n.total_upload,
            n.total_download,
            n.period_upload,
            n.period_download,
            n.last_seen
                .map_or_else(|| "never".to_owned(), |t| format!("{t} UTC"))
        );
    }
}
