pub mod log_store;
