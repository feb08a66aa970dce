//! What each instance tells the console about itself (`/ui/instance.json`): readiness,
//! the partitions it holds, its per-partition gauges (input lag, keys, restore remaining,
//! standby lag), its recent rates and commits, its last rebalances. The overview gathers
//! this from every live instance; one that does not answer in time is shown as such.

use super::{authorization, Ui};
use crate::processor::quarantine::Quarantined;
use crate::runtime::activity::{CommitSecond, Rebalance, Recent};
use crate::runtime::partition_gauges;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// How long the overview waits for another instance's feed.
const PEER_DEADLINE: Duration = Duration::from_millis(800);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Gauge {
    pub name: String,
    /// The topic (input lag) or store (the others).
    pub scope: String,
    pub partition: i32,
    pub value: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceFeed {
    pub instance: String,
    pub http: String,
    pub ready: bool,
    pub failure: Option<String>,
    /// Store → partitions held (and open) here.
    pub owned: BTreeMap<String, Vec<i32>>,
    pub gauges: Vec<Gauge>,
    pub rates: BTreeMap<String, f64>,
    pub commits: Vec<CommitSecond>,
    pub rebalances: Vec<Rebalance>,
    /// Keys whose snapshot cannot be read, as this instance's tasks have met them.
    pub quarantined: Vec<Quarantined>,
}

/// One instance as the overview sees it: its feed, or why there is none.
pub struct Seen {
    pub instance: String,
    pub http: String,
    pub feed: Result<InstanceFeed, String>,
}

impl InstanceFeed {
    pub fn gauge(&self, name: &str, scope: &str, partition: i32) -> Option<f64> {
        self.gauges.iter().find(|g| g.name == name && g.scope == scope && g.partition == partition).map(|g| g.value)
    }
}

pub(super) fn local(ui: &Ui) -> InstanceFeed {
    let ctx = &ui.ctx;
    let Recent { rates, commits, rebalances } = ctx.catalog.activity().recent_now();
    let (instance, http) = ctx.directory.as_ref().map_or_else(|| (ui.me(), String::new()), |d| (d.me.instance.clone(), d.me.http.clone()));
    InstanceFeed {
        instance,
        http,
        ready: ctx.catalog.is_ready(),
        failure: ctx.catalog.failure(),
        owned: ctx.catalog.owned(),
        gauges: partition_gauges::all()
            .into_iter()
            .map(|(name, scope, partition, value)| Gauge { name: name.to_string(), scope, partition, value })
            .collect(),
        rates,
        commits,
        rebalances,
        quarantined: ctx.catalog.quarantine().list(),
    }
}

pub(super) async fn instance_json(State(ui): State<Ui>) -> Response {
    Json(local(&ui)).into_response()
}

/// Every live instance's feed, this one's first.
pub(super) async fn gather(ui: &Ui, headers: &HeaderMap) -> Vec<Seen> {
    let me = local(ui);
    let mut seen = vec![Seen { instance: me.instance.clone(), http: me.http.clone(), feed: Ok(me) }];
    let Some(directory) = &ui.ctx.directory else { return seen };
    let authorization = authorization(headers);
    let others: Vec<_> = directory.live().into_iter().filter(|m| m.instance != directory.me.instance).collect();
    let fetches = others.iter().map(|m| {
        let via = crate::query::forward::Via {
            tls: ui.ctx.security.tls.as_ref().map(|t| &t.connector),
            authorization: authorization.as_deref(),
        };
        async move {
            let feed = match tokio::time::timeout(PEER_DEADLINE, ui.ctx.peers.get(&m.http, "/ui/instance.json", via)).await {
                Err(_) => Err(format!("no answer within {} ms", PEER_DEADLINE.as_millis())),
                Ok(Err(e)) => Err(format!("unreachable: {e}")),
                Ok(Ok(a)) if a.status != 200 => Err(format!("answered {}", a.status)),
                Ok(Ok(a)) => serde_json::from_slice::<InstanceFeed>(&a.body).map_err(|e| format!("unreadable answer: {e}")),
            };
            Seen { instance: m.instance.clone(), http: m.http.clone(), feed }
        }
    });
    seen.extend(futures::future::join_all(fetches).await);
    seen
}
