//! The Cartable coordinator (work in progress).
