//! Rebuilds the crate when a migration changes (they are embedded by
//! `sqlx::migrate!`), and gives it the commit it is built from
//! (`TALLY_COMMIT`, common/build/version.rs).

#[path = "../common/build/version.rs"]
mod version;

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
    println!("cargo:rerun-if-changed=../common/build/version.rs");
    version::emit_commit();
}
