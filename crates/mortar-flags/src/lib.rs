//! mortar-flags: feature flags with targeting rules, reusable segments, sticky percentage
//! rollouts and experiments, evaluated by one pure engine in the server and in the Rust SDK,
//! and spoken over OpenFeature's remote evaluation protocol (OFREP).
//!
//! Phase 1 (this crate today) is the design below and its evaluation engine ([`engine`]) with
//! the JSON shapes of definitions and contexts ([`model`]). The store, service, HTTP API, stream,
//! SDK and CLI described here are phase 2 onwards ("Not built yet" at the end).
//!
//! # Model
//!
//! A **flag** has a key (1 to 128 characters of `A-Z a-z 0-9 _ - .`), a type (`boolean`,
//! `string`, `number`, `object`), named **variants** (values of that type), a default variant
//! and an off variant, and a **salt**: 1 to 64 characters of `A-Z a-z 0-9 _ -` fixed at
//! creation (the server uses the flag's ULID) and never changed by an update — the key can be.
//! Descriptions, tags, owner, `expires_at` and temporary/permanent are the service's metadata;
//! the engine never reads them.
//!
//! Per **environment** a flag has a state: `enabled`, ordered **rules** and a default serve.
//! Environments are mortar-config's: the same names, and the same chains (`[config.environments]`,
//! `prod → staging → base`): a flag evaluated in `prod` uses the state of the first environment
//! of the chain that has one, whole (states are not merged field by field). A flag with no state
//! anywhere in the chain is off there.
//!
//! A **rule** matches a context when all of its parts match: its explicit user list (the
//! context's `targetingKey` is in it), every **condition** (attribute, operator, values), and
//! every referenced **segment**. A rule with no parts matches every context. A matching rule
//! serves a variant or a **percentage split** across variants. Rules are evaluated in order;
//! the first match wins; none matching → the default serve (a variant or a split; absent: the
//! flag's default variant).
//!
//! A **segment** (`beta-testers`, `eu-customers`) is a named set of contexts: its `excluded`
//! users are never in it, its `included` users always are (excluded wins when a key is in
//! both), and any other context is in it when the segment has conditions and all of them
//! match. Segments are shared by every flag and environment.
//!
//! Operators: `equals`, `not_equals`, `in`, `not_in` (strings, numbers, booleans);
//! `contains`, `starts_with`, `ends_with` (strings; `contains` also tests a list attribute
//! for an element); `regex` (Rust `regex` syntax, compiled once at load, unanchored — write
//! `^…$` to anchor); `semver_eq/lt/lte/gt/gte` (SemVer 2.0 with pre-release ordering, a
//! leading `v` accepted); `number_eq/lt/lte/gt/gte` (JSON numbers only: `"30"` is not a
//! number); `date_before` / `date_after` (RFC 3339 strings or epoch milliseconds, on both
//! sides). The `not_` operators match only a present attribute of the right type. Attribute
//! `targetingKey` is the context's targeting key; `$now` is the evaluation time in epoch
//! milliseconds (for scheduled releases: `$now date_after 2027-01-01T00:00:00Z`).
//!
//! # Guarantees
//!
//! * **Deterministic evaluation.** An evaluation is a function of the definition, the context,
//!   the chain and the `now` passed in: no randomness, no clock reads, no IO. Server and SDK
//!   run the same code ([`engine`] has no serde, IO or async), so they cannot diverge.
//! * **Never an error for a condition.** A missing attribute or one of the wrong type makes the
//!   condition false. Only an evaluation that cannot proceed is an error, and it still answers
//!   the flag's default variant with reason `ERROR` and a code: a split whose bucket-by
//!   attribute is missing (`TARGETING_KEY_MISSING` for `targetingKey`, else `INVALID_CONTEXT`;
//!   also for a value that is not a string or number). Without a definition there is no
//!   default: `FLAG_NOT_FOUND`, a stored definition this engine cannot load `PARSE_ERROR` (a
//!   newer server's operator reaching an older SDK breaks that flag only), and a typed
//!   evaluation of a flag of another type `TYPE_MISMATCH`. A context over the limits, or with
//!   a `targetingKey` that is not a string, is refused before evaluation (`INVALID_CONTEXT`,
//!   [`model::context`]).
//! * **Reasons** (OpenFeature): `DISABLED` (off variant), `TARGETING_MATCH` (a rule's variant),
//!   `SPLIT` (a split, in a rule or the default), `STATIC` (enabled, no rules, a default
//!   variant), `DEFAULT` (rules, none matched, the default variant), `ERROR`. Metadata names
//!   the environment whose state served and the matching rule's index and id.
//! * **Sticky, rename-proof bucketing.** A context's bucket is
//!   `murmur3_x86_32(salt ":" value, seed 0) × 10 000 / 2³²` (0..10 000: 0.01 % steps), where
//!   `value` is the bucket-by attribute (`targetingKey` unless the split names another, such as
//!   `org_id`; a number is hashed as its decimal text) and `salt` the flag's, or the split's
//!   own when it sets one (to re-randomise an experiment). The key is not hashed: renaming a
//!   flag moves no one. The hash is the standard one (`mmh3`, flagd's `fractional`), so other
//!   languages can reproduce it.
//! * **Monotone rollouts.** The bucket → variant map depends only on the split's weights (no
//!   history), so returning to earlier weights restores exactly the earlier assignment. The
//!   split's last variant is its *rest* (`off`, `control`); each other variant `i` of `k` owns
//!   a lane `[i·10 000/(k−1), (i+1)·10 000/(k−1))` and fills it from its start, and the rest
//!   takes what the others leave. So:
//!   - two variants (every boolean rollout, in either order): raising a variant's percentage
//!     only adds contexts to it, lowering removes exactly the most recently added (the highest
//!     buckets), returning restores the same set;
//!   - more variants, while every non-rest variant fits its lane (≤ 100/(k−1) %: 50 % each of
//!     two arms, 33.33 % of three): each variant's set depends on its own weight only — raising
//!     it adds contexts (taken from the rest), lowering removes the most recently added,
//!     whatever the other variants do at the same time; the rest loses only what others gain;
//!   - a variant beyond its lane keeps the lane-full it owns under the same rules; its excess
//!     is placed in the free space of the lanes, from the top of the bucket range down, in
//!     variant order, so those contexts may move when other weights change. Changing the
//!     number or order of a split's variants re-buckets: it is a new split.
//! * **Validation before anything is stored**, every problem with a field path
//!   (`environments.prod.rules[2].conditions[0].values[0]`): unknown operator, values of the
//!   wrong type or count for the operator, a regex that does not compile or is over the size
//!   limit, a version that is not SemVer, a split whose weights do not sum to exactly 100 % (or
//!   use finer steps than 0.01 %), a variant value of another type than the flag's, an unknown
//!   segment or variant, a missing default or off variant, names and limits.
//!
//! # Limits
//!
//! Per flag: 64 variants, 64 environments; per environment 200 rules; per rule or segment 50
//! conditions, 20 segment references, 10 000 listed users; per condition 1 000 values; strings
//! in definitions and contexts 4 096 bytes; regexes 1 024 characters of pattern and 256 KiB
//! compiled. Contexts: 256 attributes, nested 8 deep (the HTTP layer also bounds the body).
//! Numbers are IEEE doubles (integers exact to 2⁵³). Conditions read top-level attributes only.
//!
//! # API (phase 2)
//!
//! Evaluation speaks OFREP (open-feature/protocol `service/openapi.yaml`) unchanged, so the
//! published OFREP providers work as they are. The environment is the `Mortar-Environment`
//! header (providers send static headers), else `[flags] environment`.
//!
//! * `POST /ofrep/v1/evaluate/flags/{key}` `{"context": {"targetingKey": "u1", "plan": "pro"}}` →
//!   200 `{"key", "value", "variant", "reason", "metadata": {"environment", "rule", "rule_id",
//!   "revision"}}`; 404 `{"key", "errorCode": "FLAG_NOT_FOUND", "errorDetails"}`; 400
//!   `{"key", "errorCode": "INVALID_CONTEXT" | "TARGETING_KEY_MISSING" | "PARSE_ERROR" |
//!   "GENERAL", "errorDetails"}`; 401/403; 429 with `Retry-After`. These bodies are OFREP's,
//!   not problem+json: the providers parse `errorCode` (the one exception to the house rule).
//! * `POST /ofrep/v1/evaluate/flags` (bulk, every flag of the environment) → 200
//!   `{"flags": [success | {"key", "errorCode", "errorDetails"}]}` with an `ETag` (a hash of
//!   the body); `If-None-Match` with it → 304. `GET /ofrep/v1/configuration` → capabilities
//!   (polling interval, supported types).
//!
//! Management, problem+json as everywhere, `If-Match` revisions (412) and `Idempotency-Key` on
//! creating POSTs, `message` (why) kept in the audit log. Keys `segments`, `environments`,
//! `stream`, `events`, `audit`, `config` are reserved (they name routes).
//!
//! * `GET /v1/flags?tag=&stale=true&limit=&cursor=` → `{items, next_cursor}`;
//!   `POST /v1/flags` ([`model::FlagDoc`] without `salt`) → 201 the flag with its salt and
//!   revision; `GET|PUT|DELETE /v1/flags/{key}` (the whole definition);
//!   `PUT|DELETE /v1/flags/{key}/environments/{env}` (one state: `{"enabled", "rules",
//!   "default"}`); `POST /v1/flags/{key}/environments/{env}/enable|disable|rollout`
//!   (`{"percent": 25}` — the CLI's verbs); `POST /v1/flags/{key}/evaluate` `{"environment",
//!   "context"}` → the evaluation with rule and bucket (for `mortar flags eval`).
//! * `GET|POST /v1/flags/segments`, `GET|PUT|DELETE /v1/flags/segments/{key}` (a segment in
//!   use by a flag cannot be deleted: 409 naming the flags); `GET|POST|DELETE
//!   /v1/flags/environments[/{env}]`.
//! * `GET /v1/flags/audit?key=&before=` and `GET /v1/flags/{key}/audit` → who, when, message and
//!   an RFC 6902 diff per revision.
//! * `GET /v1/flags/config?environment=` → every flag and segment at one revision (what an SDK
//!   loads); `GET /v1/flags/stream` → SSE, `id:` = revision: `snapshot`, then `change` events
//!   (the changed flags and segments), `reset` when a `Last-Event-ID` was compacted away.
//! * `POST /v1/flags/events` (exposures and conversions, batched) and
//!   `GET /v1/flags/{key}/experiment` (per variant: exposures, conversions, rate, two-proportion
//!   z-test p-value and confidence interval, sample-ratio-mismatch warning).
//!
//! # Store (phase 2): mortar-config's design, shared rather than copied
//!
//! SQL only (SQLite embedded, PostgreSQL cluster), definitions as JSON text of [`model`]'s shapes:
//! `flags_flags (key, salt, doc, revision)`, `flags_states (key, env, doc, revision)`,
//! `flags_segments (key, doc, revision)`, `flags_envs (env, revision)`, and the history,
//! which is the audit log: `flags_changes (revision, kind, key, env, doc, prev, principal,
//! message, at_ms)` — one row per object a revision changed, before and after. As in
//! mortar-config: one global, monotonic revision per block, allocated under a lock held to
//! commit (the counter row `FOR UPDATE` on PostgreSQL, the SQLite file's one writer) so
//! revisions commit in order and a reader at revision N has seen everything below it; a write
//! reads its state, lets the service decide (CAS, validation against the segments of the same
//! snapshot), and writes the rows and the history in one transaction; compaction below a floor
//! keeps each object's newest change. Every node follows the history in revision order and
//! publishes each revision on the hub's durable topic `flags:changes` (a doorbell on
//! `flags:written` wakes other nodes at once, a poll is the safety net), rebuilding its
//! in-memory [`engine::Ruleset`] at the same revision; stream clients catch up from the history,
//! then tail the topic. Hot-path evaluation never touches the store. Usage (last evaluated,
//! per flag and environment, for stale flags) and experiment counters are in-memory counts
//! group-committed every few seconds.
//!
//! What moves from mortar-config into mortar-core so both blocks (and later the event store)
//! use one implementation:
//! * `storage::revision` — the counter (`config_meta`'s `revision` + `floor`, becoming rows of
//!   one `core_revisions (stream, revision, floor)` table) and the write step that takes it:
//!   lock, read state, decide, write, bump, commit — `ConfigStore::write`'s two dialect paths
//!   with the block's statements as parameters — plus the compaction statement shape.
//! * `watch::follow` — `follow.rs`'s loop (start at the head, read the history after the
//!   position in batches that never end inside a revision, `by_revision`, wake on a local
//!   notify, the `<block>:written` doorbell or the poll, stop on `Stopping`) behind a small
//!   trait the block implements (read changes after N; publish one revision).
//! * `stream::Source` — `watch.rs`'s per-client catch-up (snapshot, or the history after a
//!   cursor, or `reset` below the floor; then the live tail, a hub reset repaired from the
//!   history), the open work ARCHITECTURE.md already names, so `stream::respond` serves both
//!   blocks' streams (and WebSocket with them).
//! * `env` — environment chains: `engine::chain`, `chains_problems`, `BASE` and the name rule,
//!   so the flags engine and SDK resolve chains without depending on mortar-config; the
//!   `[config.environments]` table stays config's setting and the flags block reads it through
//!   `ConfigService` (a block may use another block's service).
//!
//! # Not built yet
//!
//! Everything outside [`engine`] and [`model`]: the store and migrations, the service, the OFREP
//! and management routes, the stream, the Rust SDK (`FlagsClient`: load, follow, evaluate
//! locally, fall back to the last config, batch exposures), stored sticky assignments,
//! experiments and their statistics, stale-flag detection and the `FlagStale` event, metrics,
//! the CLI, the block's registration in mortar-server, the side-by-side benchmarks.

pub mod engine;
pub mod model;

pub use engine::{Context, Evaluation, FlagType, Reason, Ruleset, Value};
