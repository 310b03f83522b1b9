//! WASI's `filetype` codes. A module of their own because both the descriptor table
//! (`state.rs`, `files.rs`) and the 9P client (`p9.rs`) need them, and `state.rs` already
//! depends on `p9.rs`: here, neither has to import the other for them.

pub const UNKNOWN: u8 = 0;
pub const BLOCK_DEVICE: u8 = 1;
pub const CHARACTER_DEVICE: u8 = 2;
pub const DIRECTORY: u8 = 3;
pub const REGULAR_FILE: u8 = 4;
pub const SOCKET_DGRAM: u8 = 5;
pub const SOCKET_STREAM: u8 = 6;
pub const SYMBOLIC_LINK: u8 = 7;
