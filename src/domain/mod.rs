//! Example domains. They live apart from the engine: the engine never names these types,
//! it sees them only through `processor::Aggregate`. The binary registers them by name.

pub mod customer;
pub mod order;
pub mod product;
