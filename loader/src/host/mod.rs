//! The host ends of the contracts with the guest: the framed, flow-controlled channel over
//! the console ([`channel`]), the 9P2000.L server behind live directories ([`p9`]), and
//! persistent FAT volumes ([`volume`]).

pub mod channel;
pub mod p9;
pub mod volume;
