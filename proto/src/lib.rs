//! tally's gRPC contract, `tally.v1`. The heartbeat messages and service are
//! defined in the next step of the project; this crate reserves their place.
