//! Raft log store over the WAL.
