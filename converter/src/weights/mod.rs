//! Checkpoint loading (placeholder until the loader lands).
