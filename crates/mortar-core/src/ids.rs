//! ULID identifiers: sortable by creation time, and strictly increasing within this process
//! (a monotonic generator), so "ORDER BY id" is creation order even within one millisecond.

use std::sync::Mutex;

static GENERATOR: Mutex<Option<ulid::Generator>> = Mutex::new(None);

/// A new ULID, greater than every one this process made before.
pub fn new_ulid() -> ulid::Ulid {
    let mut guard = GENERATOR
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let generator = guard.get_or_insert_with(ulid::Generator::new);
    // Overflow needs 2^80 ids in one millisecond; fall back to a fresh random id then.
    generator.generate().unwrap_or_else(|_| ulid::Ulid::new())
}

/// A new ULID as lowercase text (the form used in URLs and tokens).
pub fn new_id() -> String {
    new_ulid().to_string().to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_strictly_increase() {
        let ids: Vec<String> = (0..1000).map(|_| super::new_id()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(ids[0].len(), 26);
    }
}
