//! Names: flag keys and the other names definitions use.

use super::*;

#[test]
fn flag_keys_and_names() {
    assert!(is_flag_key("checkout.new-flow_v2"));
    assert!(!is_flag_key(""));
    assert!(!is_flag_key("a b"));
    assert!(!is_flag_key("a/b"));
    assert!(is_flag_key(&"k".repeat(MAX_KEY_LEN)));
    assert!(!is_flag_key(&"k".repeat(MAX_KEY_LEN + 1)));
    assert!(is_name("beta-testers_2"));
    assert!(!is_name("beta.testers"), "dots are for flag keys only");
    assert!(!is_name(&"n".repeat(MAX_NAME_LEN + 1)));
    for t in FlagType::ALL {
        assert_eq!(FlagType::parse(t.as_str()), Some(t));
    }
}
