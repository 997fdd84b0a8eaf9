//! Billing settings as people read and change them: the fleet's defaults
//! (`billing_defaults`, one row), a node's own overrides (`node_settings`,
//! NULL = the fleet's value), a node's effective settings, and the patches
//! an admin applies to either (API and command line alike).
//!
//! A patch names only what changes: per field, keep, clear or set. On a
//! node, clearing removes the override (the fleet's value applies again);
//! on the fleet, clearing `anchorDay` or `quota` means none, and clearing
//! any other field restores the built-in default
//! ([`Settings::default`](super::Settings::default), time zone `UTC`).
//! Every value is checked before anything is written, and a refused patch
//! changes nothing.
//!
//! Changing an anchor day or a time zone (the node's or the fleet's) does
//! not move the current period's start: the period that runs keeps its
//! `periodStart`, and its end is the new anchor's next boundary after that
//! start, because the store computes boundaries from the settings as they
//! are when it looks ([`crate::ingest`], [`crate::period`]).
//!
//! The parts: `model` (the settings, a patch, and what a patch checks),
//! `checks` (single values, shared with the command line), `json` (a patch
//! as the API receives it) and `store` (the SQL).

mod checks;
mod json;
mod model;
mod store;

pub use checks::{
    MAX_THRESHOLD, MAX_THRESHOLDS, check_anchor_day, check_count_rule, check_max_rate, check_mode,
    check_quota, check_thresholds, check_time_zone,
};
pub use json::JsonPatch;
pub use model::{
    AnchorSource, Change, Defaults, Effective, Field, Overrides, SettingsPatch, Values,
};
pub use store::{
    defaults, effective, effective_in, node_id, overrides, patch_node, update_defaults,
};
