//! The conversions from the node's own types to protobuf messages, one
//! module per message: generated types stay at this edge, the rest of the
//! node never sees them. (Requests are converted, and checked, by
//! `validate`; errors become statuses in `status`.)

mod membership;
mod module;
mod settings;

pub(crate) use membership::{membership_message, role_message};
pub(crate) use module::module_message;
pub(crate) use settings::settings_message;
