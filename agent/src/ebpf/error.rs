//! The failure to load or attach the programs ([`EngineError`]), shared by
//! the engine and the hook attachments it drives.

use std::io;

use aya::programs::ProgramError;

use super::maps::MapsError;
use crate::pins::PinDirError;

/// A failure to load or attach.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    PinDir(#[from] PinDirError),
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error("cannot load the eBPF object: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("cannot load the program {program} into the kernel: {source}")]
    LoadProgram {
        program: &'static str,
        source: ProgramError,
    },
    #[error("the eBPF object has no program {0} (a build problem)")]
    MissingProgram(&'static str),
    #[error("cannot attach to {iface} ({hook}): {source}")]
    Attach {
        iface: String,
        hook: &'static str,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot pin the link of {iface} ({hook}) at {path}: {source}")]
    PinLink {
        iface: String,
        hook: &'static str,
        path: String,
        source: aya::pin::PinError,
    },
    #[error("cannot read the random source for the counter epoch: {0}")]
    Random(String),
    #[error("{0}")]
    Io(#[from] io::Error),
}
