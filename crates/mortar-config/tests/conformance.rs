//! The configuration contract, the same on SQLite and PostgreSQL: revisions strictly increase,
//! CAS on a key and on an environment, atomic change sets, fallback chains, history with
//! diffs, rollback, schemas, compaction that keeps every kept revision rebuildable.

use std::collections::BTreeMap;
use std::sync::Arc;

use mortar_config::service::{Author, ConfigError, Expect, Op, OpKind};
use mortar_config::{ConfigService, Settings};
use mortar_core::clock::ManualClock;
use mortar_core::storage::Storage;
use mortar_testkit::fixture::storage_at;
use serde_json::{Value, json};

const BY: Author<'static> = Author {
    principal: "tester",
    message: "",
};

fn settings() -> Settings {
    Settings {
        environments: BTreeMap::from([("prod".into(), vec!["staging".into()])]),
        max_value_bytes: 1024,
        ..Settings::default()
    }
}

fn set(key: &str, value: Value) -> Op {
    Op {
        op: OpKind::Set,
        key: key.into(),
        value: Some(value),
        secret: None,
    }
}

fn del(key: &str) -> Op {
    Op {
        op: OpKind::Delete,
        key: key.into(),
        value: None,
        secret: None,
    }
}

async fn the_contract(storage: &Storage) {
    let svc = ConfigService::new(
        storage,
        &settings(),
        Arc::new(ManualClock::at(1_800_000_000_000)),
    );
    let ns = format!("app{}", mortar_core::ids::new_id().to_lowercase());

    // Revisions strictly increase; reads say what they reflect.
    let r1 = svc
        .put(&ns, "base", "db.pool", json!(10), Expect::Anything, BY)
        .await
        .unwrap()
        .revision;
    let r2 = svc
        .put(&ns, "base", "greeting", json!("hi"), Expect::Anything, BY)
        .await
        .unwrap()
        .revision;
    let r3 = svc
        .put(&ns, "staging", "db.pool", json!(20), Expect::Anything, BY)
        .await
        .unwrap()
        .revision;
    assert!(r1 < r2 && r2 < r3, "{r1} {r2} {r3}");
    let v = svc.values(&ns, "prod", true).await.unwrap();
    assert!(v.revision >= r3);
    assert_eq!(v.chain, ["prod", "staging", "base"]);
    assert_eq!(
        (
            v.values["db.pool"].value.clone(),
            v.values["db.pool"].env.as_str()
        ),
        (json!(20), "staging")
    );
    assert_eq!(v.values["greeting"].env, "base");
    // dev falls back to base only.
    svc.put(&ns, "dev", "x", json!(1), Expect::Anything, BY)
        .await
        .unwrap();
    assert_eq!(
        svc.get(&ns, "dev", "db.pool", true)
            .await
            .unwrap()
            .entry
            .value,
        json!(10)
    );

    // CAS on a key: its revision, 0 for absent.
    let k = svc.get(&ns, "base", "db.pool", true).await.unwrap();
    assert_eq!(k.entry.revision, r1);
    let stale = svc
        .put(&ns, "base", "db.pool", json!(11), Expect::Key(r1 - 1), BY)
        .await;
    assert!(
        matches!(stale, Err(ConfigError::Precondition(_))),
        "{stale:?}"
    );
    let r4 = svc
        .put(&ns, "base", "db.pool", json!(11), Expect::Key(r1), BY)
        .await
        .unwrap()
        .revision;
    assert!(matches!(
        svc.put(&ns, "base", "new", json!(1), Expect::Key(5), BY)
            .await,
        Err(ConfigError::Precondition(_))
    ));
    svc.put(&ns, "base", "new", json!(1), Expect::Key(0), BY)
        .await
        .unwrap();

    // Change sets: atomic, one revision, CAS on the environment.
    let env_rev = svc.environments(&ns).await.unwrap()["base"];
    let bad = svc
        .apply(
            &ns,
            "base",
            vec![set("a", json!(1)), del("never-set")],
            Expect::Anything,
            BY,
        )
        .await;
    assert!(matches!(bad, Err(ConfigError::NotFound(_))), "{bad:?}");
    assert!(
        svc.get(&ns, "base", "a", true).await.is_err(),
        "nothing of a refused set is written"
    );
    assert!(matches!(
        svc.apply(
            &ns,
            "base",
            vec![set("a", json!(1))],
            Expect::Env(env_rev - 1),
            BY
        )
        .await,
        Err(ConfigError::Precondition(_))
    ));
    let w = svc
        .apply(
            &ns,
            "base",
            vec![set("a", json!(1)), set("b", json!([1, 2])), del("new")],
            Expect::Env(env_rev),
            BY,
        )
        .await
        .unwrap();
    assert_eq!(w.keys.len(), 3);
    let base = svc.values(&ns, "base", true).await.unwrap();
    assert_eq!(base.values["a"].revision, w.revision);
    assert_eq!(base.values["b"].revision, w.revision);
    assert!(!base.values.contains_key("new"));

    // Bad input.
    assert!(matches!(
        svc.put(&ns, "base", "a..b", json!(1), Expect::Anything, BY)
            .await,
        Err(ConfigError::Invalid(_))
    ));
    assert!(matches!(
        svc.put(
            &ns,
            "base",
            "big",
            json!("x".repeat(2000)),
            Expect::Anything,
            BY
        )
        .await,
        Err(ConfigError::TooLarge(_))
    ));
    assert!(matches!(
        svc.values("nosuchns", "base", true).await,
        Err(ConfigError::NotFound(_))
    ));
    assert!(matches!(
        svc.values(&ns, "qa", true).await,
        Err(ConfigError::NotFound(_))
    ));
    assert!(
        svc.values(&ns, "prod", true).await.is_ok(),
        "configured environments read before a write"
    );

    // History: newest first, with the principal and a diff.
    let h = svc
        .history(&ns, "base", Some("db.pool"), None, 10, true)
        .await
        .unwrap();
    let revs: Vec<i64> = h.items.iter().map(|c| c.revision).collect();
    assert_eq!(revs, [r4, r1]);
    assert_eq!(h.items[0].previous, Some(json!(10)));
    assert_eq!(h.items[0].principal, "tester");
    assert_eq!(
        h.items[0].diff,
        json!([{"op": "replace", "path": "", "value": 11}])
    );
    let page = svc.history(&ns, "base", None, None, 2, true).await.unwrap();
    assert_eq!(page.items.len(), 2);
    let cursor: i64 = page.next_cursor.unwrap().parse().unwrap();
    let rest = svc
        .history(&ns, "base", None, Some(cursor), 100, true)
        .await
        .unwrap();
    assert!(rest.items.iter().all(|c| c.revision < cursor));

    // Rollback: the environment as it was, as a new revision.
    let before = svc.values(&ns, "base", true).await.unwrap();
    svc.put(&ns, "base", "a", json!(99), Expect::Anything, BY)
        .await
        .unwrap();
    svc.delete(&ns, "base", "b", Expect::Anything, BY)
        .await
        .unwrap();
    svc.put(&ns, "base", "c", json!(3), Expect::Anything, BY)
        .await
        .unwrap();
    let rb = svc
        .rollback(&ns, "base", before.revision, "tester")
        .await
        .unwrap();
    let after = svc.values(&ns, "base", true).await.unwrap();
    let plain = |v: &mortar_config::service::Values| -> BTreeMap<String, Value> {
        v.values
            .iter()
            .map(|(k, e)| (k.clone(), e.value.clone()))
            .collect()
    };
    assert_eq!(plain(&after), plain(&before));
    assert!(rb.revision > before.revision);
    assert!(matches!(
        svc.rollback(&ns, "base", rb.revision, "tester").await,
        Err(ConfigError::Conflict(_))
    ));

    // Schemas: writes validated; a schema the stored values break is refused.
    let schema =
        json!({"type": "object", "properties": {"db.pool": {"type": "integer", "maximum": 100}}});
    svc.set_schema(&ns, Some(schema), "tester").await.unwrap();
    let refused = svc
        .put(&ns, "staging", "db.pool", json!(500), Expect::Anything, BY)
        .await;
    let Err(ConfigError::Invalid(errors)) = refused else {
        panic!("{refused:?}")
    };
    assert_eq!(errors[0].field, "/db.pool", "{errors:?}");
    assert!(errors[0].message.contains("staging"), "{errors:?}");
    // A base value that only some environments see is checked in each of them.
    svc.put(&ns, "base", "db.pool", json!(50), Expect::Anything, BY)
        .await
        .unwrap();
    let breaks = json!({"type": "object", "properties": {"greeting": {"type": "integer"}}});
    assert!(matches!(
        svc.set_schema(&ns, Some(breaks), "tester").await,
        Err(ConfigError::Invalid(_))
    ));
    assert!(matches!(
        svc.set_schema(
            &ns,
            Some(json!({"$ref": "https://example.com/s.json"})),
            "tester"
        )
        .await,
        Err(ConfigError::Invalid(_))
    ));
    svc.set_schema(&ns, None, "tester").await.unwrap();
    svc.put(&ns, "staging", "db.pool", json!(500), Expect::Anything, BY)
        .await
        .unwrap();

    // Compaction: superseded history at or below the floor goes; every key's newest change
    // stays, so rollback to any kept revision still works.
    let (head, _) = svc.store().head().await.unwrap();
    let kept_from = svc.values(&ns, "base", true).await.unwrap();
    svc.put(&ns, "base", "a", json!(-1), Expect::Anything, BY)
        .await
        .unwrap();
    svc.store().compact(head).await.unwrap();
    let (_, floor) = svc.store().head().await.unwrap();
    assert_eq!(floor, head);
    let h = svc
        .history(&ns, "base", Some("a"), None, 100, true)
        .await
        .unwrap();
    assert!(
        h.items.iter().filter(|c| c.revision <= head).count() <= 1,
        "{h:?}"
    );
    svc.rollback(&ns, "base", head, "tester").await.unwrap();
    assert_eq!(
        plain(&svc.values(&ns, "base", true).await.unwrap()),
        plain(&kept_from)
    );
    assert!(matches!(
        svc.rollback(&ns, "base", head - 1, "tester").await,
        Err(ConfigError::Invalid(_))
    ));
}

#[tokio::test]
async fn the_contract_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let storage = storage_at(dir.path(), None, &[mortar_config::service::migrations()]).await;
    the_contract(&storage).await;
}

/// Storage on a fresh test database with the config migrations (`None`: skipped, see
/// `mortar_testkit::services`); the database and directory live as long as the handles.
async fn postgres(
    test: &str,
) -> Option<(Storage, mortar_testkit::TestDatabase, tempfile::TempDir)> {
    let db = mortar_testkit::services(test)?
        .create_database()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = Some(db.url.clone());
    let storage = storage_at(dir.path(), url, &[mortar_config::service::migrations()]).await;
    Some((storage, db, dir))
}

#[tokio::test]
async fn the_contract_on_postgres() {
    let Some((storage, _db, _dir)) = postgres("config postgres").await else {
        return;
    };
    the_contract(&storage).await;
}

/// Concurrent writers on PostgreSQL: every acknowledged revision is distinct, and the history
/// holds exactly them, in commit order.
#[tokio::test]
async fn concurrent_writers_get_distinct_revisions_in_commit_order() {
    let Some((storage, _db, _dir)) = postgres("config concurrent").await else {
        return;
    };
    let svc = ConfigService::new(&storage, &settings(), Arc::new(ManualClock::at(1)));
    let mut tasks = Vec::new();
    for t in 0..8 {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 0..25 {
                let w = svc
                    .put(
                        "race",
                        "base",
                        &format!("k{t}"),
                        json!(i),
                        Expect::Anything,
                        BY,
                    )
                    .await
                    .unwrap();
                revs.push(w.revision);
            }
            revs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 200);
    let rows = svc.store().changes(0, None, 1000).await.unwrap();
    let history: Vec<i64> = rows.iter().map(|r| r.revision).collect();
    assert_eq!(history, all);
}
