//! The gRPC side of the edge: one module per service, and [`status`], the one place any layer's
//! error becomes a `tonic::Status` and a request's metadata becomes a principal.

pub mod cas;
pub mod cas_get;
mod cas_upload;
mod digest_list;
pub mod evidence;
pub mod ledger;
pub mod local_put;
pub mod registry;
pub mod status;
mod unary;
