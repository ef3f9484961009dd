//! Layer 2 of the gateway: the servers requests go to. [`pool`]: pools
//! and servers with their live state (in flight, latency, passive health,
//! drain); [`balance`]: the balancing policies; [`health`]: active health
//! checks; [`discovery`]: DNS and etcd sources, which report what they
//! find to whoever spawned them.
pub mod balance;
pub mod discovery;
pub mod health;
pub mod pool;
pub mod server;
