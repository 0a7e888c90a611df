//! (being written)
#![forbid(unsafe_code)]
#![allow(missing_docs)]

pub mod proto {
    tonic::include_proto!("earshot.v1");
}
