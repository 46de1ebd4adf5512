//! Placement of bundle replicas (work in progress).
