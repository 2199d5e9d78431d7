//! `mortar bench jobs`.
