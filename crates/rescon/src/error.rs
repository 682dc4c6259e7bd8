//! Errors of the container model.

use crate::ContainerId;
use std::fmt;

/// An attribute value was out of its domain. Names the field, the value given and the values
/// allowed, so the message can be shown to an operator as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttrError {
    field: &'static str,
    value: String,
    allowed: &'static str,
}

impl AttrError {
    pub(crate) fn new(
        field: &'static str,
        value: impl fmt::Display,
        allowed: &'static str,
    ) -> Self {
        AttrError {
            field,
            value: value.to_string(),
            allowed,
        }
    }

    /// The attribute, in the key syntax of [`Attributes::set`](crate::Attributes::set)
    /// (`share`, `cpu_limit`, ...).
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// The value that was refused, as given.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// A human description of the allowed values.
    pub fn allowed(&self) -> &'static str {
        self.allowed
    }
}

impl fmt::Display for AttrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid value `{}` for {}: allowed {}",
            self.value, self.field, self.allowed
        )
    }
}

impl std::error::Error for AttrError {}

/// The resource a limit guards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Resource {
    /// Open connections ([`Limits::max_connections`](crate::Limits::max_connections)).
    Connections,
    /// Bytes of memory charged ([`Limits::max_memory`](crate::Limits::max_memory)).
    Memory,
    /// Live child processes ([`Limits::max_processes`](crate::Limits::max_processes)).
    Processes,
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Resource::Connections => "connections",
            Resource::Memory => "memory",
            Resource::Processes => "processes",
        })
    }
}

/// What can go wrong when acting on containers.
///
/// Every variant leaves the model unchanged: an operation either takes full effect or none.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An attribute value outside its domain.
    #[error(transparent)]
    InvalidAttr(#[from] AttrError),
    /// The fixed shares of a container's children would sum above 1.
    #[error(
        "fixed shares of the children of container {parent} would sum to {sum:.4}, above 1: lower a sibling's fixed share or use a weight"
    )]
    FixedSharesExceed {
        /// The parent whose children were over-committed.
        parent: ContainerId,
        /// The sum that was refused.
        sum: f64,
    },
    /// The handle does not carry the right for the operation.
    #[error("permission denied: {op} on container {target}: {reason}")]
    PermissionDenied {
        /// The operation refused.
        op: &'static str,
        /// The container it was aimed at.
        target: ContainerId,
        /// Why, and what would be allowed.
        reason: &'static str,
    },
    /// A reparenting would have made a container its own ancestor.
    #[error("reparenting container {target} under {new_parent} would make a cycle")]
    Cycle {
        /// The container being moved.
        target: ContainerId,
        /// The parent it was to be moved under.
        new_parent: ContainerId,
    },
    /// No live container has this id (it was never allocated, or has been released).
    #[error("no container with id {0}: it does not exist or has been released")]
    NotFound(ContainerId),
    /// A limit of this container or of an ancestor is reached.
    #[error("limit reached: container {container} allows {limit} {resource}")]
    LimitExceeded {
        /// The container whose limit refused (the requester or one of its ancestors).
        container: ContainerId,
        /// The resource.
        resource: Resource,
        /// The limit in force.
        limit: u64,
    },
}
