//! # mortar-cron — a distributed cron scheduler
pub mod engine;
