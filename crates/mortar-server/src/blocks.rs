//! The blocks this server serves, in start order (a block may use the services of the blocks
//! listed before it). Adding a block is its crate plus one line here; `registry.rs` derives
//! the rest (config section, migrations, start, routes, CLI, bench).

blocks! {
    ratelimit: mortar_ratelimit::block::RateLimit,
    resilience: mortar_resilience::block::Resilience,
    lock: mortar_lock::block::Lock,
    cache: mortar_cache::block::Cache,
    jobs: mortar_jobs::block::Jobs,
    cron: mortar_cron::block::Cron,
    config: mortar_config::block::Config,
}
