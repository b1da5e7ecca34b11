//! uTP, the Micro Transport Protocol (BEP 29): BitTorrent peer connections over UDP with
//! delay-based congestion control (LEDBAT), which libtorrent and Transmission dial first.
//!
//! [`packet`] is the wire format, [`conn`] one connection as a state machine without I/O, and
//! [`UtpSocket`] runs them on a tokio UDP socket: it accepts connections and dials them, and
//! each is a [`UtpStream`] that reads and writes like a TCP stream.

pub mod conn;
mod offload;
pub mod packet;
mod socket;

pub use socket::{SharedUdp, UtpSocket, UtpStream};
