//! Instance ids and names: the id made at create, the naming rule.

use unicompute_plugin_api::sync::lock;

/// Whether a name is 1-63 characters of `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// A new instance id: `i-`, then 12 hex digits of the creation millisecond, 4 of a
/// counter within that millisecond, and 4 random ones. Ids sort in creation order, so
/// the list order (`createdAt`, then `id`) is the creation order even for creates in
/// one millisecond; the random part keeps ids unique across restarts.
pub fn new_id(millis: i64) -> String {
    static LAST: std::sync::Mutex<(u64, u16)> = std::sync::Mutex::new((0, 0));
    let mut last = lock(&LAST);
    let ms = u64::try_from(millis).unwrap_or(0).max(last.0);
    let (ms, seq) = if ms == last.0 {
        match last.1.checked_add(1) {
            Some(n) => (ms, n),
            // 65,536 creates in one millisecond: borrow the next one.
            None => (ms + 1, 0),
        }
    } else {
        (ms, 0)
    };
    *last = (ms, seq);
    let random = u16::from_le_bytes(
        *uuid::Uuid::new_v4()
            .as_bytes()
            .first_chunk()
            .unwrap_or(&[0; 2]),
    );
    format!("i-{:012x}{seq:04x}{random:04x}", ms & 0xffff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::{new_id, valid_name};

    #[test]
    fn ids_sort_in_creation_order() {
        let mut ids: Vec<String> = (0..1000).map(|_| new_id(1_800_000_000_000)).collect();
        assert!(ids.iter().all(|i| i.len() == 22 && i.starts_with("i-")));
        let made = ids.clone();
        ids.sort();
        assert_eq!(ids, made, "same millisecond: the counter orders them");
        let later = new_id(1_800_000_000_001);
        assert!(later > made[999]);
        // A clock that goes back does not make an id sort before earlier ones.
        assert!(new_id(1_700_000_000_000) > later);
        ids.dedup();
        assert_eq!(ids.len(), 1000);
    }

    #[test]
    fn names() {
        for ok in ["a", "web-1", "A.b_c-9", &"x".repeat(63)] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "-a", ".a", "_a", "a b", "a/b", "é", &"x".repeat(64)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
