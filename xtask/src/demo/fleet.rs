//! The demo's database and its nodes: a throwaway PostgreSQL cluster under
//! the run directory (or the database the user gave), and the three demo
//! nodes enrolled through the API with their token files.

use std::{
    fs,
    io::{Read as _, Write as _},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::Path,
};

use anyhow::{Context as _, bail};
use serde_json::json;
use tally_testkit::devdb::TempCluster;

use super::{api::Api, summary};

/// The throwaway cluster (under the run directory when PostgreSQL can reach
/// it there) and its URL, or the URL given.
pub fn database(
    database_url: Option<&str>,
    run_dir: &Path,
) -> anyhow::Result<(Option<TempCluster>, String)> {
    if let Some(url) = database_url {
        println!("demo: using the database of DATABASE_URL / --database-url");
        return Ok((None, url.to_owned()));
    }
    let mut builder = TempCluster::builder();
    if searchable_by_all(run_dir) {
        builder = builder.in_dir(run_dir);
    } else {
        println!(
            "demo: PostgreSQL (user postgres) cannot reach {}: its throwaway cluster goes to \
             the temporary directory instead",
            run_dir.display()
        );
    }
    let cluster = builder
        .start()
        .context("cannot start a throwaway PostgreSQL (or give one with DATABASE_URL)")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a tokio runtime")?;
    let url = runtime.block_on(cluster.create_database("tally"))?;
    println!(
        "demo: PostgreSQL {} (socket in {})",
        cluster.data_dir().display(),
        cluster.socket_dir().display()
    );
    Ok((Some(cluster), url))
}

/// Whether every directory from `/` to `path` may be searched by anyone.
fn searchable_by_all(path: &Path) -> bool {
    path.ancestors()
        .all(|dir| fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
}

/// Enrols the demo nodes through the API (replacing any of the same name
/// left in the database); their tokens, in order.
pub fn enrol(api: &Api, names: &[String]) -> anyhow::Result<Vec<String>> {
    remove_nodes(api, names)?;
    names
        .iter()
        .map(|name| {
            let (status, body) = api.post("/api/v1/nodes", &json!({ "name": name }))?;
            if status != 201 {
                bail!("POST /api/v1/nodes {name} answered {status}: {body}");
            }
            body["token"]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("no token in {body}"))
        })
        .collect()
}

/// Removes the demo nodes through the API.
pub fn remove_nodes(api: &Api, names: &[String]) -> anyhow::Result<()> {
    for node in summary::fetch(api, names)? {
        let (status, body) = api.delete(&format!("/api/v1/nodes/{}", node.id))?;
        if status != 204 {
            bail!("DELETE /api/v1/nodes/{} answered {status}: {body}", node.id);
        }
    }
    Ok(())
}

/// 32 random bytes from the kernel, in hex.
pub fn random_token() -> anyhow::Result<String> {
    let mut bytes = [0_u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("cannot read /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes a file only its owner can read.
pub fn write_secret(path: &Path, text: &str) -> anyhow::Result<()> {
    fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| writeln!(f, "{text}"))
        .with_context(|| format!("cannot write {}", path.display()))
}
