//! What the node tells its operator: logs (`logs`: plain or JSON, repeated
//! lines summarised). Traces and metrics arrive here too.

pub mod logs;
