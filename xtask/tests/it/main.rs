//! xtask's integration tests, in one test binary: the demo end to end
//! (`demo`) and the deployment kit's checks (`deploy`).

mod demo;
mod deploy;
