//! Commands from the console: a form, sent through this server's command API with the
//! caller's token, answered with the reply and the new version.

use super::html::{esc, json_block, notice, url, with_status, Tab};
use super::Ui;
use axum::extract::{Form, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};
use std::fmt::Write;

/// The form, filled in; `expected` is the expected version as the field shows it.
pub(super) fn command_form(aggregate: &str, id: &str, expected: &str, ty: &str, payload: &str) -> String {
    format!(
        r#"<h2>Send a command</h2><form class="command" method="post" action="/ui/commands">
<label>Aggregate <input name="aggregate" value="{a}" required></label>
<label>Id <input name="id" value="{i}" required></label>
<label>Type <input name="type" value="{t}" placeholder="CreateCustomer" required></label>
<label>Expected version <input name="expected_version" value="{e}" inputmode="numeric"></label>
<label class="wide">Payload (JSON) <textarea name="payload" rows="4">{p}</textarea></label>
<button>Send</button></form>"#,
        a = esc(aggregate),
        i = esc(id),
        t = esc(ty),
        e = esc(expected),
        p = esc(payload),
    )
}

pub(super) async fn commands_form(State(ui): State<Ui>) -> Response {
    let first = ui.console.topology.aggregates.values().next().map(|a| a.aggregate.clone()).unwrap_or_default();
    let mut body = String::from("<h1>Commands</h1>");
    if ui.ctx.gateway.is_none() {
        body.push_str(&notice("warn", "this instance sends no commands (it runs no aggregate)"));
    }
    body.push_str(&command_form(&first, "", "", "", "{}"));
    ui.page("Commands", Tab::Commands, &body)
}

#[derive(serde::Deserialize)]
pub(super) struct CommandForm {
    aggregate: String,
    id: String,
    r#type: String,
    #[serde(default)]
    expected_version: String,
    #[serde(default)]
    payload: String,
}

pub(super) async fn send_command(State(ui): State<Ui>, headers: HeaderMap, Form(f): Form<CommandForm>) -> Response {
    // A form that cannot become a command is answered on the page, filled in as sent.
    let not_sent = |why: String| {
        let body = format!("<h1>Command not sent</h1>{}{}", notice("bad", &why),
            command_form(&f.aggregate, &f.id, &f.expected_version, &f.r#type, &f.payload));
        with_status(StatusCode::BAD_REQUEST, ui.page("Command", Tab::Commands, &body))
    };
    let payload = match f.payload.trim() {
        "" => Value::Object(Default::default()),
        text => match serde_json::from_str::<Value>(text) {
            Ok(v) => v,
            Err(e) => return not_sent(format!("the payload is not JSON: {e}")),
        },
    };
    let mut request = json!({"type": f.r#type, "payload": payload});
    match f.expected_version.trim() {
        "" => {}
        v => match v.parse::<u64>() {
            Ok(v) => request["expected_version"] = json!(v),
            Err(_) => return not_sent(format!("expected version {v:?} is not a whole number")),
        },
    }
    let mut body = String::from("<h1>Command sent</h1>");
    let path = format!("/aggregates/{}/{}/commands", url(&f.aggregate), url(&f.id));
    let answer = ui.call(Method::POST, &path, &headers, Some(request.to_string().into_bytes())).await;
    let outcome = answer.body["outcome"].as_str().unwrap_or("");
    let kind = if answer.status.is_success() { "ok" } else { "bad" };
    let summary = match outcome {
        "" => format!("{}: {}", answer.status, answer.error()),
        o => format!("{o}, version {}", answer.body["version"]),
    };
    let _ = write!(body, r#"<p class="notice {kind}" id="outcome">{}</p>"#, esc(&summary));
    body.push_str(&json_block(&answer.body));
    if let Some(store) = ui.ctx.catalog.aggregate_store(&f.aggregate) {
        let _ = write!(body, r#"<p><a href="/ui/stores/{}/keys/{}">Look up {}</a></p>"#, url(&store), url(&f.id), esc(&f.id));
    }
    let next = answer.body["version"].as_u64().unwrap_or(0);
    body.push_str(&command_form(&f.aggregate, &f.id, &next.to_string(), &f.r#type, &f.payload));
    ui.page("Command", Tab::Commands, &body)
}
