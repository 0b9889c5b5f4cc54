//! Routing: longest-prefix match from destination addresses to peers.

pub mod prefix_table;
pub mod table;

pub use prefix_table::PrefixTable;
