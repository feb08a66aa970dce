//! The customer aggregate, the seed's first system: customers are created, updated and
//! deleted through commands. A deleted customer keeps a snapshot with status DELETED, and
//! may be created again.

use crate::codec::proto::customer as pb;
use crate::processor::{Aggregate, Rejection};
use prost::Message;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "payload")]
pub enum CustomerCommand {
    CreateCustomer { name: String, email: String },
    UpdateCustomer { name: String, email: String },
    DeleteCustomer {},
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "payload")]
pub enum CustomerEvent {
    CustomerCreated { name: String, email: String },
    CustomerUpdated { name: String, email: String },
    CustomerDeleted {},
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    /// Never created.
    #[default]
    None,
    Active,
    Deleted,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    pub name: String,
    pub email: String,
    pub status: Status,
}

pub struct CustomerAggregate;

fn rename(obj: &mut serde_json::Map<String, serde_json::Value>, from: &str, to: &str) {
    if let Some(v) = obj.remove(from) {
        obj.insert(to.to_string(), v);
    }
}

fn validate(name: &str, email: &str) -> Result<(), Rejection> {
    if name.trim().is_empty() {
        return Err(Rejection::Malformed("name is empty".into()));
    }
    if !email.contains('@') {
        return Err(Rejection::Malformed(format!("email {email:?} has no @")));
    }
    Ok(())
}

impl Aggregate for CustomerAggregate {
    type Command = CustomerCommand;
    type Event = CustomerEvent;
    type State = Customer;

    fn decide(state: &Customer, command: &CustomerCommand) -> Result<Vec<CustomerEvent>, Rejection> {
        use CustomerCommand::*;
        match (command, state.status) {
            (CreateCustomer { .. }, Status::Active) => {
                Err(Rejection::Rule("customer already exists".into()))
            }
            (CreateCustomer { name, email }, _) => {
                validate(name, email)?;
                Ok(vec![CustomerEvent::CustomerCreated { name: name.clone(), email: email.clone() }])
            }
            (UpdateCustomer { .. } | DeleteCustomer {}, Status::None) => {
                Err(Rejection::Rule("customer does not exist".into()))
            }
            (UpdateCustomer { .. } | DeleteCustomer {}, Status::Deleted) => {
                Err(Rejection::Rule("customer is deleted".into()))
            }
            (UpdateCustomer { name, email }, Status::Active) => {
                validate(name, email)?;
                Ok(vec![CustomerEvent::CustomerUpdated { name: name.clone(), email: email.clone() }])
            }
            (DeleteCustomer {}, Status::Active) => Ok(vec![CustomerEvent::CustomerDeleted {}]),
        }
    }

    fn evolve(state: Customer, event: &CustomerEvent) -> Customer {
        match event {
            CustomerEvent::CustomerCreated { name, email }
            | CustomerEvent::CustomerUpdated { name, email } => {
                Customer { name: name.clone(), email: email.clone(), status: Status::Active }
            }
            CustomerEvent::CustomerDeleted {} => Customer { status: Status::Deleted, ..state },
        }
    }

    /// v1 (before the public contract) called the email field `mail`; v2 calls it `email`.
    const EVENT_SCHEMA_VERSION: u32 = 2;
    const STATE_SCHEMA_VERSION: u32 = 2;

    fn upcast_event(version: u32, mut event: serde_json::Value) -> Result<serde_json::Value, String> {
        if version < 2 {
            if let Some(payload) = event.get_mut("payload").and_then(serde_json::Value::as_object_mut) {
                rename(payload, "mail", "email");
            }
        }
        Ok(event)
    }

    fn upcast_state(version: u32, mut state: serde_json::Value) -> Result<serde_json::Value, String> {
        if version < 2 {
            let obj = state.as_object_mut().ok_or("v1 customer state is not an object")?;
            rename(obj, "mail", "email");
        }
        Ok(state)
    }

    fn event_type(event: &CustomerEvent) -> &'static str {
        match event {
            CustomerEvent::CustomerCreated { .. } => "CustomerCreated",
            CustomerEvent::CustomerUpdated { .. } => "CustomerUpdated",
            CustomerEvent::CustomerDeleted {} => "CustomerDeleted",
        }
    }

    fn supports_protobuf() -> bool {
        true
    }

    fn command_from_proto(type_name: &str, payload: &[u8]) -> Result<CustomerCommand, String> {
        let err = |e: prost::DecodeError| format!("invalid {type_name} payload: {e}");
        Ok(match type_name {
            "CreateCustomer" => {
                let m = pb::CreateCustomer::decode(payload).map_err(err)?;
                CustomerCommand::CreateCustomer { name: m.name, email: m.email }
            }
            "UpdateCustomer" => {
                let m = pb::UpdateCustomer::decode(payload).map_err(err)?;
                CustomerCommand::UpdateCustomer { name: m.name, email: m.email }
            }
            "DeleteCustomer" => {
                pb::DeleteCustomer::decode(payload).map_err(err)?;
                CustomerCommand::DeleteCustomer {}
            }
            other => return Err(format!("unknown command type {other:?}")),
        })
    }

    fn event_to_proto(event: &CustomerEvent) -> Vec<u8> {
        match event {
            CustomerEvent::CustomerCreated { name, email } => {
                pb::CustomerCreated { name: name.clone(), email: email.clone() }.encode_to_vec()
            }
            CustomerEvent::CustomerUpdated { name, email } => {
                pb::CustomerUpdated { name: name.clone(), email: email.clone() }.encode_to_vec()
            }
            CustomerEvent::CustomerDeleted {} => pb::CustomerDeleted {}.encode_to_vec(),
        }
    }

    fn state_to_proto(state: &Customer) -> Vec<u8> {
        let status = match state.status {
            Status::None => pb::Status::Unspecified,
            Status::Active => pb::Status::Active,
            Status::Deleted => pb::Status::Deleted,
        };
        pb::CustomerState { name: state.name.clone(), email: state.email.clone(), status: status as i32 }
            .encode_to_vec()
    }

    fn state_from_proto(bytes: &[u8]) -> Result<Customer, String> {
        let m = pb::CustomerState::decode(bytes).map_err(|e| e.to_string())?;
        let status = match pb::Status::try_from(m.status) {
            Ok(pb::Status::Active) => Status::Active,
            Ok(pb::Status::Deleted) => Status::Deleted,
            _ => Status::None,
        };
        Ok(Customer { name: m.name, email: m.email, status })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::processor::aggregate::fold;
    use proptest::prelude::*;

    fn create(n: &str) -> CustomerCommand {
        CustomerCommand::CreateCustomer { name: n.into(), email: format!("{n}@example.org") }
    }

    #[test]
    fn business_rules() {
        let s0 = Customer::default();
        let rule = |r: Result<Vec<CustomerEvent>, Rejection>| matches!(r, Err(Rejection::Rule(_)));
        assert!(rule(CustomerAggregate::decide(&s0, &CustomerCommand::DeleteCustomer {})));
        assert!(rule(CustomerAggregate::decide(&s0, &CustomerCommand::UpdateCustomer {
            name: "x".into(),
            email: "x@y".into()
        })));
        let evs = CustomerAggregate::decide(&s0, &create("ada")).unwrap();
        let s1 = fold::<CustomerAggregate>(s0, &evs);
        assert_eq!(s1.status, Status::Active);
        assert!(rule(CustomerAggregate::decide(&s1, &create("ada"))));
        let evs = CustomerAggregate::decide(&s1, &CustomerCommand::DeleteCustomer {}).unwrap();
        let s2 = fold::<CustomerAggregate>(s1, &evs);
        assert_eq!(s2.status, Status::Deleted);
        assert_eq!(s2.name, "ada", "a deleted customer keeps its snapshot");
        assert!(rule(CustomerAggregate::decide(&s2, &CustomerCommand::DeleteCustomer {})));
        assert!(CustomerAggregate::decide(&s2, &create("ada")).is_ok(), "re-create after delete");
        assert!(matches!(
            CustomerAggregate::decide(&s2, &create("")),
            Err(Rejection::Malformed(_))
        ));
    }

    fn arb_command() -> impl Strategy<Value = CustomerCommand> {
        prop_oneof![
            "[a-c]{0,2}".prop_map(|n| CustomerCommand::CreateCustomer { email: format!("{n}@x"), name: n }),
            "[a-c]{1,2}".prop_map(|n| CustomerCommand::UpdateCustomer { email: format!("{n}@x"), name: n }),
            Just(CustomerCommand::DeleteCustomer {}),
        ]
    }

    proptest! {
        /// The version equals the number of accepted events, and no event follows a
        /// deletion except a re-creation.
        #[test]
        fn version_counts_events_and_nothing_follows_delete(cmds in prop::collection::vec(arb_command(), 0..60)) {
            let mut state = Customer::default();
            let mut log: Vec<CustomerEvent> = Vec::new();
            for c in &cmds {
                if let Ok(evs) = CustomerAggregate::decide(&state, c) {
                    for e in &evs {
                        state = CustomerAggregate::evolve(state, e);
                    }
                    log.extend(evs);
                }
            }
            prop_assert_eq!(fold::<CustomerAggregate>(Customer::default(), &log), state);
            for w in log.windows(2) {
                if matches!(w[0], CustomerEvent::CustomerDeleted {}) {
                    let recreated = matches!(w[1], CustomerEvent::CustomerCreated { .. });
                    prop_assert!(recreated, "event after a deletion: {:?}", w[1]);
                }
            }
        }
    }
}
