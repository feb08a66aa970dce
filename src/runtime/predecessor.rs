//! Asking the address that the last run under this instance id advertised who serves
//! there now, for the duplicate-instance check (`members.rs`, `refuse_duplicate`).
//!
//! A restart on a new address (a pod rescheduled with a new IP, a test harness's fresh
//! port) cannot tell a crashed predecessor from a live twin by the members topic alone,
//! and waits a heartbeat to see whether it publishes again. The predecessor's own address
//! usually answers sooner: nothing listening there, or another instance, means it no
//! longer serves; a run of this id there means a twin. Anything less clear is `Unknown`,
//! and the heartbeat decides as before.

use super::members::{Member, Presence};
use crate::query::forward::{Peers, Via};
use tokio_rustls::TlsConnector;

/// Asks `predecessor.http` for `/health`, which names the instance and run that answer.
/// `instance` and `incarnation` are this run's: the address may lead back to this very
/// process (another spelling of its own address), which is no twin.
pub async fn presence(predecessor: &Member, instance: &str, incarnation: &str, tls: Option<&TlsConnector>) -> Presence {
    let via = Via { tls, authorization: None };
    match Peers::default().get(&predecessor.http, "/health", via).await {
        // Connection refused: nobody listens at that address any more.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Presence::Gone,
        Err(_) => Presence::Unknown,
        Ok(a) if a.status != 200 => Presence::Unknown,
        Ok(a) => identify(&a.body, instance, incarnation),
    }
}

/// Who a `/health` body says answered.
fn identify(body: &[u8], instance: &str, incarnation: &str) -> Presence {
    let Ok(health) = serde_json::from_slice::<serde_json::Value>(body) else { return Presence::Unknown };
    match (health["instance"].as_str(), health["incarnation"].as_str()) {
        (Some(other), _) if other != instance => Presence::Gone,
        (Some(_), Some(run)) if run == incarnation => Presence::Gone,
        (Some(_), Some(_)) => Presence::Serving,
        // A version that does not say who it is.
        _ => Presence::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_health_answer_says_who_serves() {
        let id = |body: &str| identify(body.as_bytes(), "a", "run-2");
        assert_eq!(id(r#"{"status":"ok","instance":"a","incarnation":"run-1"}"#), Presence::Serving, "another run of a: a twin");
        assert_eq!(id(r#"{"status":"ok","instance":"b","incarnation":"run-1"}"#), Presence::Gone, "another instance took the address");
        assert_eq!(id(r#"{"status":"ok","instance":"a","incarnation":"run-2"}"#), Presence::Gone, "this very run");
        assert_eq!(id(r#"{"status":"ok"}"#), Presence::Unknown, "an older version");
        assert_eq!(id("not json"), Presence::Unknown);
    }

    fn predecessor(http: String) -> Member {
        Member { instance: "a".into(), http, stores: Default::default(), standbys: Default::default(), heartbeat_ms: 0, incarnation: "run-1".into() }
    }

    /// A port nobody listens on refuses the connection: gone. A listener that never
    /// answers tells nothing.
    #[tokio::test]
    async fn a_closed_port_is_gone_and_a_silent_one_unknown() {
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        assert_eq!(presence(&predecessor(closed.to_string()), "a", "run-2", None).await, Presence::Gone);
        // Accepted by the kernel (the backlog) but never answered: Peers gives up after its
        // timeout.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = silent.local_addr().unwrap().to_string();
        assert_eq!(presence(&predecessor(addr), "a", "run-2", None).await, Presence::Unknown);
    }
}
