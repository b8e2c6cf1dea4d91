//! `rollgate dashboard`: a live web dashboard served on the operator's machine (loopback only),
//! speaking to the coordinator with the operator's own certificate, so the coordinator gains no
//! new surface and every action is audited under the operator's identity.
//!
//! Layout:
//! - this file: [`run`] (bind, print the login address, serve until Ctrl-C), the axum router,
//!   the access check and the JSON and action handlers.
//! - [`auth`]: the loopback rule, the login token, the session cookie, the same-origin rule.
//! - [`hub`]: one feed of the fleet (the coordinator's event stream, the fleet and rollout
//!   list read after events) shared by every open page.
//! - [`live`]: the server-sent event streams of the page: the hub's messages, rollout watches.
//! - [`model`]: pure functions from wire messages to the page's JSON.
//! - `assets/`: the page (HTML, CSS, plain JavaScript), embedded in the binary.

use std::sync::Arc;

use anyhow::Context;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio::sync::watch;

use crate::client::{ControlError, Coordinator, Target};
use crate::commands::Finish;

pub mod auth;
mod hub;
mod live;
pub mod model;

use auth::{Access, Credentials};
use model::Action;

/// What every handler shares.
#[derive(Clone)]
struct Dashboard {
    /// The coordinator, reached with the operator's certificate.
    coord: Coordinator,
    /// The login token and the cookie that carries it.
    session: Arc<auth::Session>,
    /// The `host:port` names the page may be reached at (Host header check).
    own_hosts: Arc<[String]>,
    /// Flips to true at shutdown, so live streams end and the server can stop.
    shutdown: watch::Receiver<bool>,
    /// The fleet feed every open page shares.
    hub: hub::Hub,
}

/// Serves the dashboard on `listen` until Ctrl-C.
pub async fn run(target: &Target, listen: &str, open: bool) -> anyhow::Result<Finish> {
    let addr = auth::listen_addr(listen)?;
    let coord = Coordinator::connect(target).await?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}: pick another --listen port"))?;
    let addr = listener
        .local_addr()
        .context("cannot read the bound address")?;
    let (stop, shutdown) = watch::channel(false);
    let state = Dashboard {
        hub: hub::Hub::start(coord.clone(), shutdown.clone()),
        coord,
        session: auth::Session::new(addr.port()).into(),
        own_hosts: auth::own_hosts(addr).into(),
        shutdown,
    };
    let url = format!("http://{addr}/?token={}", state.session.token);
    println!("dashboard: {url}");
    eprintln!("rollgate: dashboard serving on {addr} (loopback only); Ctrl-C stops it");
    if open {
        open_browser(&url);
    }
    let app = router(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = tokio::signal::ctrl_c().await;
            eprintln!("rollgate: dashboard stopping");
            let _ = stop.send(true);
        })
        .await
        .context("the dashboard server failed")?;
    Ok(Finish::Success)
}

/// Asks the desktop to open `url`; says so when it cannot (the address is printed anyway).
fn open_browser(url: &str) {
    match std::process::Command::new("xdg-open").arg(url).spawn() {
        // Reaped in the background, so it leaves no zombie behind.
        Ok(mut child) => drop(std::thread::spawn(move || child.wait())),
        Err(e) => {
            eprintln!("rollgate: cannot open a browser ({e}); open the address above yourself")
        }
    }
}

fn router(state: Dashboard) -> Router {
    Router::new()
        .route("/", get(|| asset(INDEX_HTML, "text/html; charset=utf-8")))
        .route(
            "/app.js",
            get(|| asset(APP_JS, "text/javascript; charset=utf-8")),
        )
        .route(
            "/style.css",
            get(|| asset(STYLE_CSS, "text/css; charset=utf-8")),
        )
        .route("/favicon.ico", get(|| asset(FAVICON, "image/svg+xml")))
        .route("/api/fleet", get(fleet))
        .route("/api/rollouts", get(rollouts))
        .route("/api/rollouts/{id}", get(rollout))
        .route("/api/rollouts/{id}/{action}", post(act))
        .route("/api/history/{service}", get(history))
        .route("/api/live", get(live::fleet_stream))
        .route("/api/rollouts/{id}/live", get(live::rollout_stream))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");
const FAVICON: &str = include_str!("assets/favicon.svg");

/// An embedded file. No caching: a restarted dashboard may be a newer build.
async fn asset(body: &'static str, kind: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

/// The access check in front of every route (see [`auth::access`]).
async fn guard(State(d): State<Dashboard>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let creds = Credentials {
        path: req.uri().path(),
        query: req.uri().query(),
        cookie: text(header::COOKIE),
        changes: !matches!(*req.method(), Method::GET | Method::HEAD),
        host: text(header::HOST),
        origin: text(header::ORIGIN),
    };
    match auth::access(&creds, &d.session, &d.own_hosts) {
        Access::Allow => next.run(req).await,
        Access::LogIn => {
            let mut resp = Response::new(Body::empty());
            *resp.status_mut() = StatusCode::SEE_OTHER;
            let h = resp.headers_mut();
            h.insert(header::LOCATION, HeaderValue::from_static("/"));
            if let Ok(v) = HeaderValue::from_str(&d.session.set_cookie()) {
                h.insert(header::SET_COOKIE, v);
            }
            resp
        }
        Access::Unauthorized(why) => plain(StatusCode::UNAUTHORIZED, why),
        Access::Forbidden(why) => plain(StatusCode::FORBIDDEN, why),
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    (status, headers, format!("{text}\n")).into_response()
}

/// A coordinator error as `{"error": "..."}`, with the HTTP status that says the same.
fn failed(e: &ControlError) -> Response {
    let body = json!({ "error": e.to_string() });
    (http_status(e), Json(body)).into_response()
}

/// The HTTP status for a coordinator error: its refusals keep their meaning (no such rollout,
/// not allowed, not now); a coordinator that could not be asked is a bad gateway.
fn http_status(e: &ControlError) -> StatusCode {
    use tonic::Code;
    match e {
        ControlError::Refused { code, .. } => match code {
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::PermissionDenied | Code::Unauthenticated => StatusCode::FORBIDDEN,
            Code::InvalidArgument | Code::FailedPrecondition | Code::AlreadyExists => {
                StatusCode::CONFLICT
            }
            _ => StatusCode::BAD_GATEWAY,
        },
        _ => StatusCode::BAD_GATEWAY,
    }
}

async fn fleet(State(d): State<Dashboard>) -> Response {
    match d.coord.list_hosts().await {
        Ok(r) => Json(model::fleet(&r.hosts)).into_response(),
        Err(e) => failed(&e),
    }
}

async fn rollouts(State(d): State<Dashboard>) -> Response {
    match d.coord.list_rollouts().await {
        Ok(r) => Json(model::rollouts(&r.rollouts)).into_response(),
        Err(e) => failed(&e),
    }
}

async fn rollout(State(d): State<Dashboard>, Path(id): Path<String>) -> Response {
    match d.coord.get_rollout(&id).await {
        Ok(s) => Json(model::rollout(&s)).into_response(),
        Err(e) => failed(&e),
    }
}

async fn history(State(d): State<Dashboard>, Path(service): Path<String>) -> Response {
    match d.coord.get_history(&service).await {
        Ok(r) => Json(model::history(&service, &r.entries)).into_response(),
        Err(e) => failed(&e),
    }
}

/// `POST /api/rollouts/ID/ACTION`: the action, under the operator's identity. Answers with the
/// rollout it now concerns (a rollback answers with the new rollback rollout).
async fn act(State(d): State<Dashboard>, Path((id, word)): Path<(String, String)>) -> Response {
    let Some(action) = Action::from_word(&word) else {
        let body = json!({
            "error": format!("no action {word:?}: pause, resume, promote, abort or rollback"),
        });
        return (StatusCode::NOT_FOUND, Json(body)).into_response();
    };
    let c = &d.coord;
    let result = match action {
        Action::Pause => c.pause_rollout(&id).await,
        Action::Resume => c.resume_rollout(&id).await,
        Action::Promote => c.promote_rollout(&id).await,
        Action::Abort => c.abort_rollout(&id).await,
        Action::Rollback => c.rollback_rollout(&id).await,
    };
    match result {
        Ok(s) => Json(model::rollout(&s)).into_response(),
        Err(e) => failed(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn coordinator_refusals_keep_their_meaning() {
        let refused = |code| ControlError::Refused {
            action: "pause rollout r-1".into(),
            code,
            detail: "no".into(),
        };
        let table = [
            (refused(Code::NotFound), StatusCode::NOT_FOUND),
            (refused(Code::PermissionDenied), StatusCode::FORBIDDEN),
            (refused(Code::FailedPrecondition), StatusCode::CONFLICT),
            (refused(Code::Internal), StatusCode::BAD_GATEWAY),
            (
                ControlError::Unreachable {
                    url: "https://c".into(),
                    cause: "connection refused".into(),
                },
                StatusCode::BAD_GATEWAY,
            ),
        ];
        for (e, want) in table {
            assert_eq!(http_status(&e), want, "{e}");
        }
    }
}
