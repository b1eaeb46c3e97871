//! FC's id formats for what an instance makes: its own id (also its cgroup's name) and its
//! hooks' request ids. (A request's id is made at the front door: `api`.)

/// An FC style instance id: `c-<8 hex>-<8 hex>-<12 hex>`.
pub fn instance_id() -> String {
    let r = uuid::Uuid::new_v4().simple().to_string();
    format!("c-{}-{}-{}", &r[..8], &r[8..16], &r[16..28])
}

/// A hook's request id (FC uses plain UUIDs for hooks).
pub fn hook_request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_fc_shapes() {
        let i = instance_id();
        assert!(i.starts_with("c-") && i.len() == 2 + 8 + 1 + 8 + 1 + 12, "{i}");
        assert_ne!(i, instance_id());
        let h = hook_request_id();
        assert!(uuid::Uuid::parse_str(&h).is_ok(), "{h}");
    }
}
