//! The PyO3 classes: thin wrappers that convert arguments, delegate to the Rust core and turn
//! its errors into Python exceptions.

pub mod breaker;
pub mod bus;
pub mod cache;
pub mod exclusive;
pub mod pool;
pub mod tiered;
