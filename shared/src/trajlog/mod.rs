//! The trajectory log: an append-only, crash-safe record of every finished choice the server
//! produced, which the trainer consumes.
//!
//! Segment files hold frames `[u32 length][u32 CRC32C of payload][payload]` (little endian);
//! the payload is a JSON `TrajectoryRecord`. The segment being written is `NNN.open`; when it
//! reaches the size or age limit it is fsynced and renamed atomically to `NNN.seg` (sealed).
//! On open, an `.open` left by a crash is scanned, truncated after its last intact record and
//! sealed. Files are created with mode 0600.

mod reader;
mod record;
mod segment;
mod writer;

pub use reader::{Cursor, LogReader};
pub use record::{GateAction, GateDecision, Latencies, Redacted, TrajectoryRecord};
pub use writer::{Durability, LogConfig, LogStats, LogWriter};
