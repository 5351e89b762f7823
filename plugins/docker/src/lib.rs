//! The docker backend plugin (in progress).
