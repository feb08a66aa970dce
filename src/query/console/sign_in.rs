//! Signing in to a console whose server checks tokens: the token, once given, travels in
//! a cookie the browser keeps for `/ui` only.

use super::html::Tab;
use super::{Ui, TOKEN_COOKIE};
use axum::extract::{Form, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

pub(super) async fn login_form(State(ui): State<Ui>) -> Response {
    let body = r#"<h1>Sign in</h1><p>This cluster needs a token (the same tokens as its HTTP API).</p>
<form method="post" action="/ui/login"><label>Token <input name="token" type="password" required autocomplete="off"></label><button>Sign in</button></form>"#;
    ui.page("Sign in", Tab::Overview, body)
}

#[derive(serde::Deserialize)]
pub(super) struct LoginForm {
    token: String,
}

pub(super) async fn login(State(ui): State<Ui>, Form(f): Form<LoginForm>) -> Response {
    let token: String = f.token.trim().chars().filter(|c| c.is_ascii_graphic() && *c != ';').collect();
    // HttpOnly: no script reads it; SameSite=Strict: no other site's form sends it.
    let secure = if ui.ctx.security.tls.is_some() { "; Secure" } else { "" };
    let cookie = format!("{TOKEN_COOKIE}={token}; Path=/ui; HttpOnly; SameSite=Strict{secure}");
    (StatusCode::SEE_OTHER, [(header::SET_COOKIE, cookie), (header::LOCATION, "/ui".to_string())]).into_response()
}
