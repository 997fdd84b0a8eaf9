//! `tally-collector node add|list|remove`: enrolment, the node table and
//! removal, on the database directly.

use clap::Subcommand;
use sqlx::PgPool;
use tally_collector::nodes;

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
