//! `mortar jobs …`.
