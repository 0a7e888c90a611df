//! Nothing here: see benches/candidates.rs.
