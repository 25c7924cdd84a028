//! The benchmark kit shared by `dmaheap bench` (dmaheap-cli) and `dmaheap-bench-peers`
//! (examples): one measuring method, so that their figures compare, and one JSON schema, so
//! that `dmaheap bench --report` reads what either printed.

pub mod cgroup;
pub mod counters;
pub mod hogfile;
pub mod measure;
pub mod schema;
pub mod turns;
