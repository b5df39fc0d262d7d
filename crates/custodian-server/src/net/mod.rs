//! The network under both front ends: connection limits and timeouts on each port, with answers
//! sent in as few writes as they fit ([`conn`]), and TLS for both ([`tls`]). Neither knows what
//! the requests mean.

pub mod conn;
pub mod tls;
