//! A user's own millrace binary: one aggregate of its own (loyalty points), registered in
//! one line, wired by its own topology file. Run it against a broker with
//!
//! ```sh
//! cargo run --release --features test-util --example loyalty -- examples/loyalty/loyalty.yaml 127.0.0.1:19092
//! ```
//!
//! and test it without one: `cargo test --release --features test-util --example loyalty`.

use millrace::processor::{Aggregate, Rejection};
use millrace::{topology, App, AppConfig, Registry};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "type", content = "payload")]
enum LoyaltyCommand {
    Enroll { name: String },
    Earn { points: i64 },
    Redeem { points: i64 },
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "type", content = "payload")]
enum LoyaltyEvent {
    Enrolled { name: String },
    Earned { points: i64 },
    Redeemed { points: i64 },
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
struct Account {
    name: String,
    enrolled: bool,
    balance: i64,
}

struct Loyalty;

impl Aggregate for Loyalty {
    type Command = LoyaltyCommand;
    type Event = LoyaltyEvent;
    type State = Account;

    fn decide(s: &Account, c: &LoyaltyCommand) -> Result<Vec<LoyaltyEvent>, Rejection> {
        match c {
            LoyaltyCommand::Enroll { .. } if s.enrolled => Err(Rejection::Rule("already enrolled".into())),
            LoyaltyCommand::Enroll { name } => Ok(vec![LoyaltyEvent::Enrolled { name: name.clone() }]),
            _ if !s.enrolled => Err(Rejection::Rule("not enrolled".into())),
            LoyaltyCommand::Earn { points } | LoyaltyCommand::Redeem { points } if *points <= 0 => {
                Err(Rejection::Malformed(format!("points must be positive, got {points}")))
            }
            LoyaltyCommand::Earn { points } => Ok(vec![LoyaltyEvent::Earned { points: *points }]),
            LoyaltyCommand::Redeem { points } if *points > s.balance => {
                Err(Rejection::Rule(format!("balance {} is less than {points}", s.balance)))
            }
            LoyaltyCommand::Redeem { points } => Ok(vec![LoyaltyEvent::Redeemed { points: *points }]),
        }
    }

    fn evolve(s: Account, e: &LoyaltyEvent) -> Account {
        match e {
            LoyaltyEvent::Enrolled { name } => Account { name: name.clone(), enrolled: true, balance: 0 },
            LoyaltyEvent::Earned { points } => Account { balance: s.balance + points, ..s },
            LoyaltyEvent::Redeemed { points } => Account { balance: s.balance - points, ..s },
        }
    }

    fn event_type(e: &LoyaltyEvent) -> &'static str {
        match e {
            LoyaltyEvent::Enrolled { .. } => "Enrolled",
            LoyaltyEvent::Earned { .. } => "Earned",
            LoyaltyEvent::Redeemed { .. } => "Redeemed",
        }
    }
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.register::<Loyalty>("loyalty");
    r
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let file = args.get(1).map_or("examples/loyalty/loyalty.yaml", String::as_str);
    let bootstrap = args.get(2).map_or("127.0.0.1:19092", String::as_str);
    let topology = match topology::load(std::path::Path::new(file)) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let listen = topology.http.listen.clone();
    let config = AppConfig {
        kafka: millrace::kafka::Clients::plain(bootstrap),
        state_dir: "./state-loyalty".into(),
        instance_id: "loyalty-0".into(),
        advertised_http: None,
        http: Default::default(),
        postgres_url: None,
        run: Default::default(),
    };
    let app = App::new(topology, &registry(), config).expect("topology matches the registry");
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen).await.expect("bind http");
        app.run(listener, None, async { let _ = tokio::signal::ctrl_c().await; }).await
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use millrace::testing::TopologyDriver;
    use serde_json::json;

    fn driver() -> TopologyDriver {
        let t = topology::load(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/loyalty/loyalty.yaml")))
            .unwrap();
        TopologyDriver::new(t, &registry()).unwrap()
    }

    fn send(d: &mut TopologyDriver, id: &str, acct: &str, ty: &str, payload: serde_json::Value) {
        let v = json!({"command_id": id, "aggregate_id": acct, "type": ty, "payload": payload});
        d.pipe("loyalty-commands", acct, &serde_json::to_vec(&v).unwrap()).unwrap();
    }

    #[test]
    fn earning_and_redeeming_through_the_engine() {
        let mut d = driver();
        send(&mut d, "1", "acct-1", "Enroll", json!({"name": "Ada"}));
        send(&mut d, "2", "acct-1", "Earn", json!({"points": 50}));
        send(&mut d, "3", "acct-1", "Redeem", json!({"points": 80}));
        send(&mut d, "4", "acct-1", "Redeem", json!({"points": 30}));
        send(&mut d, "5", "acct-1", "Earn", json!({"points": -1}));
        d.commit().unwrap();
        let snap = d.store("accounts", "acct-1").unwrap();
        assert_eq!(snap["version"], 3);
        assert_eq!(snap["state"], json!({"name": "Ada", "enrolled": true, "balance": 20}));
        let rejected: Vec<_> = d.read_output("loyalty-replies").iter().map(|r| r.json())
            .filter(|r| r["outcome"] == "rejected").map(|r| r["reason"].clone()).collect();
        assert_eq!(rejected, vec![json!("balance 50 is less than 80")]);
        let dead = d.read_output("loyalty-dead-letters");
        assert_eq!(dead.len(), 1, "non-positive points are malformed, not a business rejection");
        assert!(dead[0].headers.get_str("millrace.dlq.reason").unwrap().contains("points must be positive"));
    }
}
