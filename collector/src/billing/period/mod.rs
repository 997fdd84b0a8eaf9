//! Billing periods, in one place: when a node's periods start and end
//! ([`calendar`], on its anchor day in its time zone, or the collector's
//! [`Schedule`]), which periods a heartbeat's bytes fall into
//! (`boundary`), how an ended period is archived (`archive`), the resets
//! on request and the sweep of quiet nodes ([`reset()`], [`sweep`]), and the
//! billing view of the current and archived periods ([`view`]). Heartbeat
//! batches close the periods of active nodes with `boundary` and
//! `archive`; nothing here depends on the ingestion.

pub(crate) mod archive;
pub(crate) mod boundary;
pub mod calendar;
mod reset;
mod schedule;
pub mod view;

pub use reset::{Reset, Target, reset, reset_now, sweep};
pub use schedule::Schedule;
