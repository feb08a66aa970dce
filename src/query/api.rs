//! The HTTP API contract: an OpenAPI 3.1 document generated (utoipa) from the handlers'
//! own `#[utoipa::path]` annotations and the body schemas below, served at
//! `/openapi.json` and committed as `docs/openapi.json` (a test fails when the two
//! differ: `millrace openapi > docs/openapi.json` brings the file up to date).
//!
//! The schemas describe the JSON the handlers write; schemathesis (tests/schemathesis.rs)
//! checks a live instance's answers against them, so the two cannot drift apart unseen.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, IntoResponses, Modify, OpenApi, ToSchema};

/// Every error: a stable code, a message for people, and fields particular to the error
/// (`partition` for a moving partition, `version`/`min_version` for a key behind).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ErrorBody {
    /// Stable, for programs: `not_found`, `bad_request`, `unauthorized`, `moving`, ...
    error: String,
    message: String,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Health {
    /// `ok`, or `failed` once a processing thread died.
    status: String,
    reason: Option<String>,
    /// The instance id that answers.
    instance: Option<String>,
    /// Which run of that instance answers (new at every start).
    incarnation: Option<String>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Ready {
    ready: bool,
    reason: Option<String>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct StoreNames {
    stores: Vec<String>,
}

/// One key of a store: the key, then the fields the store renders (an aggregate's
/// `version` and `state`, a table's `value`).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Entry {
    key: String,
}

/// Which partitions a page covers.
#[derive(ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum PageScope {
    /// This instance's partitions only.
    Local,
    /// Every partition, gathered from their owners.
    Cluster,
}

/// A page of a listing or index query, gathered from every partition's owner.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Page {
    entries: Vec<Entry>,
    /// Pass as `after` for the next page; null on the last one.
    next: Option<String>,
    /// The partitions this page covers.
    partitions: Vec<i32>,
    total_partitions: i32,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Member {
    instance: String,
    http: String,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct PartitionOwners {
    partition: i32,
    owner: Option<Member>,
    standbys: Vec<Member>,
}

/// The routing table as this instance sees it.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Cluster {
    /// This instance (absent on a server without a members directory).
    me: Option<String>,
    instances: Vec<Member>,
    stores: std::collections::BTreeMap<String, Vec<PartitionOwners>>,
}

/// An aggregate's events in version order.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct History {
    aggregate_id: String,
    /// Each as docs/json-contract.md shows it (`type`, `version`, `payload`, ...).
    #[schema(value_type = Vec<Object>)]
    events: Vec<serde_json::Value>,
    /// Pass as `from_version` for the next page; null on the last one.
    next_version: Option<u64>,
    /// False only where a protobuf events topic could not be replayed into a lost history.
    complete: bool,
}

/// A command to send.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct CommandRequest {
    /// Idempotency key: a retry with the same id is answered with the first outcome.
    /// Generated when absent.
    #[schema(min_length = 1)]
    command_id: Option<String>,
    /// The command's type, as the aggregate names it (e.g. `CreateCustomer`).
    #[schema(min_length = 1)]
    r#type: String,
    #[schema(value_type = Option<Object>)]
    payload: Option<serde_json::Value>,
    /// Optimistic concurrency: the version the aggregate must be at.
    #[schema(minimum = 0, maximum = 9223372036854775807_i64)]
    expected_version: Option<u64>,
}

/// A command's reply (docs/json-contract.md).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Reply {
    command_id: String,
    aggregate_id: String,
    /// accepted, rejected, wrong_expected_version, duplicate, invalid or failed.
    outcome: String,
    version: u64,
    event_count: Option<u32>,
    reason: Option<String>,
    expected: Option<u64>,
    actual: Option<u64>,
    original_outcome: Option<String>,
}

/// A 400 to a command: the reply `invalid` when the aggregate refused it as malformed, or
/// the error when the request itself was wrong.
#[derive(ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum Refused {
    Reply(Reply),
    Error(ErrorBody),
}

/// A command sent whose reply did not come in time: ask `status_url`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Pending {
    command_id: String,
    status: String,
    status_url: String,
}

/// What every route behind a token can answer before its handler runs.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum Admission {
    #[response(status = 401, description = "no valid bearer token")]
    Unauthorized(ErrorBody),
    #[response(status = 403, description = "the token's scope does not reach this route")]
    Forbidden(ErrorBody),
    #[response(status = 503, description = "overloaded, or the request ran out of time (Retry-After)")]
    Unavailable(ErrorBody),
}

/// What a request sent as a command (a command, an operator's request, or asking for a
/// command's reply) can answer.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum Answered {
    #[response(status = 200, description = "accepted (or its duplicate)")]
    Accepted(Reply),
    #[response(status = 202, description = "sent; the reply did not come in time")]
    Pending(Pending),
    #[response(status = 409, description = "rejected, or the expected version did not match")]
    Rejected(Reply),
    #[response(status = 422, description = "failed: the engine could not run it (a quarantined key)")]
    Failed(Reply),
    #[response(status = 404, description = "no such aggregate")]
    UnknownAggregate(ErrorBody),
    #[response(status = 429, description = "too many commands wait for replies (Retry-After)")]
    TooManyPending(ErrorBody),
}

/// The paging parameters of listings and index queries.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct PageQuery {
    /// Entries a page (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// The `next` of the previous page.
    after: Option<String>,
    /// `local`: this instance's partitions only; `cluster` (the default): every partition.
    scope: Option<PageScope>,
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()));
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "millrace",
        description = "Interactive queries over an application's stores, the command gateway and operator requests. Any instance answers any key. With `--http-tokens`, routes need a bearer token of scope read, write or admin (docs/security.md).",
        license(name = "Apache-2.0"),
    ),
    paths(
        super::health, super::ready, super::metrics_text, super::openapi_json, super::stores, super::cluster,
        super::list, super::get_key, super::by_index,
        super::events::history,
        super::commands::submit, super::commands::status, super::commands::repair_snapshot, super::commands::delete_snapshot,
    ),
    components(schemas(PageScope, ErrorBody, Health, Ready, StoreNames, Entry, Page, Member, PartitionOwners, Cluster, History, CommandRequest, Reply, Refused, Pending)),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
pub struct ApiDoc;

/// The document, as served and as committed.
pub fn document() -> String {
    let mut text = ApiDoc::openapi().to_pretty_json().expect("the OpenAPI document serializes");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_committed_document_is_the_generated_one() {
        let committed = include_str!("../../docs/openapi.json");
        let generated = super::document();
        assert!(
            committed == generated,
            "docs/openapi.json differs from what the handlers describe; run `millrace openapi > docs/openapi.json`"
        );
        let doc: serde_json::Value = serde_json::from_str(&generated).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "OpenAPI 3.1");
        assert_eq!(doc["paths"].as_object().unwrap().len(), 14, "every route");
    }
}
