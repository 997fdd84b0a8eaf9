//! xtask's integration tests, in one test binary: the demo end to end
//! (`demo`), the deployment kit's checks (`deploy`) and the release
//! artefacts (`dist`).

mod demo;
mod deploy;
mod dist;
