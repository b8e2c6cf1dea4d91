//! Who may use the dashboard: the listen address (loopback only), the one-time login token,
//! the session cookie it sets, and the same-origin rule for actions. Pure decisions; the
//! server in `mod.rs` carries them out.

use std::net::SocketAddr;

use thiserror::Error;

/// The session cookie's name before the port: cookies are kept per host, not per port, so
/// each dashboard on a machine has its own (`rollgate_dashboard_7480`).
pub const COOKIE_PREFIX: &str = "rollgate_dashboard";

/// The dashboard's secret and the cookie that carries it.
#[derive(Debug, Clone)]
pub struct Session {
    /// The login token, also the cookie's value.
    pub token: String,
    /// The cookie's name.
    pub cookie: String,
}

impl Session {
    /// A fresh session for the dashboard on `port`.
    pub fn new(port: u16) -> Self {
        Session {
            token: new_token(),
            cookie: format!("{COOKIE_PREFIX}_{port}"),
        }
    }

    /// The `Set-Cookie` value: HttpOnly (no script reads it), SameSite=Strict (no other
    /// site's page sends it).
    pub fn set_cookie(&self) -> String {
        format!(
            "{}={}; Path=/; HttpOnly; SameSite=Strict",
            self.cookie, self.token
        )
    }
}

/// Why a `--listen` address is refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ListenError {
    /// Not an IP address and port.
    #[error(
        "--listen {given:?} is not an address and port: use e.g. --listen 127.0.0.1:7480 \
         (port 0 picks a free one)"
    )]
    NotAnAddress {
        /// The value as given.
        given: String,
    },
    /// An address other machines (or containers, or other network namespaces) could reach.
    #[error(
        "--listen {given} is not a loopback address: the dashboard acts with your operator \
         certificate, so it serves only this machine (127.0.0.1 or [::1]). To see it from \
         elsewhere, forward the port over SSH: ssh -L 7480:127.0.0.1:7480 THIS_HOST"
    )]
    NotLoopback {
        /// The address as given.
        given: String,
    },
}

/// The address to listen on: `text` must be a loopback IP and a port.
pub fn listen_addr(text: &str) -> Result<SocketAddr, ListenError> {
    let text = text.trim();
    let addr: SocketAddr = text.parse().map_err(|_| ListenError::NotAnAddress {
        given: text.to_string(),
    })?;
    if !addr.ip().is_loopback() {
        return Err(ListenError::NotLoopback {
            given: text.to_string(),
        });
    }
    Ok(addr)
}

/// What a request has to show who it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct Credentials<'a> {
    /// The request's path.
    pub path: &'a str,
    /// Its query string (without `?`), if any.
    pub query: Option<&'a str>,
    /// Its `Cookie` header, if any.
    pub cookie: Option<&'a str>,
    /// Whether it changes something (any method but GET and HEAD).
    pub changes: bool,
    /// Its `Host` header, if any.
    pub host: Option<&'a str>,
    /// Its `Origin` header, if any.
    pub origin: Option<&'a str>,
}

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// It carries the session cookie (and, for an action, comes from the dashboard's page).
    Allow,
    /// The login link: set the session cookie and redirect to `/` (the token leaves the URL).
    LogIn,
    /// No session: 401 with this message.
    Unauthorized(&'static str),
    /// An action from another origin, or to a host name that is not ours: 403 with this message.
    Forbidden(&'static str),
}

/// Said to a request without the session cookie.
pub const NOT_LOGGED_IN: &str = "not logged in: open the address `rollgate dashboard` printed \
    (the one with ?token=...) in this browser, or restart it for a new one";

/// Said to a request whose Host header is not the dashboard's address.
pub const WRONG_HOST: &str = "this dashboard answers only at the address `rollgate dashboard` \
    printed (the Host header names another; a DNS rebinding attempt?)";

/// Said to an action that does not come from the dashboard's own page.
pub const WRONG_ORIGIN: &str = "actions are taken only from the dashboard's own page (the \
    request's Origin is missing or another site's)";

/// Decides on a request, given the session and the dashboard's own `host:port`s.
pub fn access(c: &Credentials<'_>, session: &Session, own_hosts: &[String]) -> Access {
    let token = session.token.as_str();
    if !c.host.is_some_and(|h| own_hosts.iter().any(|o| o == h)) {
        return Access::Forbidden(WRONG_HOST);
    }
    if c.cookie
        .and_then(|h| cookie_value(h, &session.cookie))
        .is_some_and(|t| same(t, token))
    {
        if c.changes && !origin_is(c.origin, c.host) {
            return Access::Forbidden(WRONG_ORIGIN);
        }
        return Access::Allow;
    }
    let login = !c.changes
        && c.path == "/"
        && c.query
            .and_then(query_token)
            .is_some_and(|t| same(t, token));
    if login {
        Access::LogIn
    } else {
        Access::Unauthorized(NOT_LOGGED_IN)
    }
}

/// Whether `origin` is `http://` + the request's own host.
fn origin_is(origin: Option<&str>, host: Option<&str>) -> bool {
    match (origin, host) {
        (Some(o), Some(h)) => o.strip_prefix("http://") == Some(h),
        _ => false,
    }
}

/// The value of the cookie `name` in a `Cookie` header.
fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header
        .split(';')
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The `token` parameter of a query string.
fn query_token(query: &str) -> Option<&str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "token")
        .map(|(_, v)| v)
}

/// Compares without stopping at the first difference (no timing hint about the token).
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A fresh random token (256 bits, hex).
fn new_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The `host:port` names a browser may use for the dashboard at `addr`.
pub fn own_hosts(addr: SocketAddr) -> Vec<String> {
    let port = addr.port();
    let mut hosts = vec![addr.to_string(), format!("localhost:{port}")];
    if addr.is_ipv4() {
        hosts.push(format!("127.0.0.1:{port}"));
    }
    hosts.dedup();
    hosts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_only_on_loopback() {
        assert!(listen_addr("127.0.0.1:0").is_ok());
        assert!(listen_addr("[::1]:7480").is_ok());
        assert!(listen_addr(" 127.0.0.2:80 ").is_ok());
        for bad in ["0.0.0.0:7480", "192.168.1.4:80", "[::]:7480"] {
            let err = listen_addr(bad).expect_err(bad);
            assert!(matches!(err, ListenError::NotLoopback { .. }), "{bad}");
            assert!(err.to_string().contains("not a loopback address"), "{err}");
        }
        for bad in ["localhost:80", "127.0.0.1", "", "x"] {
            let err = listen_addr(bad).expect_err(bad);
            assert!(matches!(err, ListenError::NotAnAddress { .. }), "{bad}");
        }
    }

    #[test]
    fn requests_need_the_cookie_the_token_gives() {
        let own = own_hosts("127.0.0.1:7480".parse().expect("addr"));
        let host = Some("127.0.0.1:7480");
        let cookie = Some("a=b; rollgate_dashboard_7480=tok");
        let session = Session {
            token: "tok".into(),
            cookie: "rollgate_dashboard_7480".into(),
        };
        let base = Credentials {
            path: "/",
            host,
            ..Credentials::default()
        };
        let table: Vec<(Credentials<'_>, Access)> = vec![
            (base, Access::Unauthorized(NOT_LOGGED_IN)),
            (
                Credentials {
                    query: Some("token=tok"),
                    ..base
                },
                Access::LogIn,
            ),
            (
                Credentials {
                    query: Some("token=toj"),
                    ..base
                },
                Access::Unauthorized(NOT_LOGGED_IN),
            ),
            (
                Credentials {
                    path: "/api/fleet",
                    query: Some("token=tok"),
                    ..base
                },
                Access::Unauthorized(NOT_LOGGED_IN),
            ),
            (
                Credentials {
                    path: "/api/fleet",
                    cookie,
                    ..base
                },
                Access::Allow,
            ),
            (
                Credentials {
                    cookie: Some("rollgate_dashboard_7480=tokk"),
                    ..base
                },
                Access::Unauthorized(NOT_LOGGED_IN),
            ),
            (
                Credentials {
                    cookie: Some("rollgate_dashboard_7481=tok"),
                    ..base
                },
                Access::Unauthorized(NOT_LOGGED_IN),
            ),
            (
                Credentials {
                    cookie,
                    host: Some("evil.example:7480"),
                    ..base
                },
                Access::Forbidden(WRONG_HOST),
            ),
            (
                Credentials {
                    cookie,
                    changes: true,
                    ..base
                },
                Access::Forbidden(WRONG_ORIGIN),
            ),
            (
                Credentials {
                    cookie,
                    changes: true,
                    origin: Some("http://evil.example"),
                    ..base
                },
                Access::Forbidden(WRONG_ORIGIN),
            ),
            (
                Credentials {
                    cookie,
                    changes: true,
                    origin: Some("http://127.0.0.1:7480"),
                    ..base
                },
                Access::Allow,
            ),
        ];
        for (c, want) in table {
            assert_eq!(access(&c, &session, &own), want, "{c:?}");
        }
    }

    #[test]
    fn cookie_is_http_only_and_strict() {
        let s = Session::new(7480);
        let c = s.set_cookie();
        assert!(c.starts_with("rollgate_dashboard_7480="), "{c}");
        assert!(
            c.contains("HttpOnly") && c.contains("SameSite=Strict"),
            "{c}"
        );
        assert_eq!(new_token().len(), 64);
        assert_ne!(new_token(), new_token());
    }
}
