//! Generated wire types. They stay inside the node: handlers convert them to
//! domain types at the boundary.

/// The seed-compatible ControlPlane (package `messages`).
pub(crate) mod messages {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("messages");
}

/// Granary's own cluster protocol (package `granary.cluster.v1`).
pub(crate) mod cluster {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("granary.cluster.v1");
}

/// Remote grain calls (package `granary.grains.v2`); public as the
/// messages of the grain-call link (`cluster::link::messages`).
pub mod grains {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("granary.grains.v2");
}
