//! The order aggregate of the order domain: an order is placed PENDING and ends CONFIRMED
//! or REJECTED, once. Confirming (after stock was reserved) and rejecting (a product that
//! never appeared, stock that ran out) are commands, so the outcome is an event like any
//! other, replayable and auditable.
//!
//! A PENDING order waits for its products (`awaiting`): with `awaits` in the topology, the
//! engine confirms it once every product exists, or rejects it with the reason when they
//! do not appear in time. This is the seed's "stash until the dependency arrives".

use crate::processor::{Aggregate, Await, Rejection};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub product_id: String,
    pub quantity: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "payload")]
pub enum OrderCommand {
    PlaceOrder { customer_id: String, items: Vec<Item> },
    ConfirmOrder {},
    RejectOrder { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "payload")]
pub enum OrderEvent {
    OrderPlaced { customer_id: String, items: Vec<Item> },
    // Every event names the customer, so downstream nodes (shipping's enrichment) can key
    // any of them by customer without state of their own.
    OrderConfirmed { customer_id: String },
    OrderRejected { customer_id: String, reason: String },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    #[default]
    None,
    Pending,
    Confirmed,
    Rejected,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub status: OrderStatus,
    pub customer_id: String,
    pub items: Vec<Item>,
    pub reason: Option<String>,
}

pub struct OrderAggregate;

impl Aggregate for OrderAggregate {
    type Command = OrderCommand;
    type Event = OrderEvent;
    type State = Order;

    fn decide(s: &Order, c: &OrderCommand) -> Result<Vec<OrderEvent>, Rejection> {
        use OrderCommand::*;
        match (c, s.status) {
            (PlaceOrder { customer_id, items }, OrderStatus::None) => {
                if customer_id.is_empty() {
                    return Err(Rejection::Malformed("customer_id is empty".into()));
                }
                if items.is_empty() {
                    return Err(Rejection::Malformed("an order needs at least one item".into()));
                }
                if let Some(bad) = items.iter().find(|i| i.quantity <= 0 || i.product_id.is_empty()) {
                    return Err(Rejection::Malformed(format!("item {:?} needs a product and a positive quantity", bad.product_id)));
                }
                Ok(vec![OrderEvent::OrderPlaced { customer_id: customer_id.clone(), items: items.clone() }])
            }
            (PlaceOrder { .. }, _) => Err(Rejection::Rule("order already placed".into())),
            (ConfirmOrder {}, OrderStatus::Pending) => Ok(vec![OrderEvent::OrderConfirmed { customer_id: s.customer_id.clone() }]),
            (RejectOrder { reason }, OrderStatus::Pending) => {
                Ok(vec![OrderEvent::OrderRejected { customer_id: s.customer_id.clone(), reason: reason.clone() }])
            }
            (ConfirmOrder {} | RejectOrder { .. }, OrderStatus::None) => Err(Rejection::Rule("order does not exist".into())),
            (ConfirmOrder {} | RejectOrder { .. }, done) => {
                Err(Rejection::Rule(format!("order is already {}", if done == OrderStatus::Confirmed { "CONFIRMED" } else { "REJECTED" })))
            }
        }
    }

    fn evolve(s: Order, e: &OrderEvent) -> Order {
        match e {
            OrderEvent::OrderPlaced { customer_id, items } => {
                Order { status: OrderStatus::Pending, customer_id: customer_id.clone(), items: items.clone(), reason: None }
            }
            OrderEvent::OrderConfirmed { .. } => Order { status: OrderStatus::Confirmed, ..s },
            OrderEvent::OrderRejected { reason, .. } => Order { status: OrderStatus::Rejected, reason: Some(reason.clone()), ..s },
        }
    }

    fn awaiting(s: &Order) -> Option<Await<OrderCommand>> {
        (s.status == OrderStatus::Pending).then(|| Await {
            keys: s.items.iter().map(|i| i.product_id.clone()).collect(),
            ready: OrderCommand::ConfirmOrder {},
            expired: |reason| OrderCommand::RejectOrder { reason },
        })
    }

    fn event_type(e: &OrderEvent) -> &'static str {
        match e {
            OrderEvent::OrderPlaced { .. } => "OrderPlaced",
            OrderEvent::OrderConfirmed { .. } => "OrderConfirmed",
            OrderEvent::OrderRejected { .. } => "OrderRejected",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb() -> impl Strategy<Value = OrderCommand> {
        prop_oneof![
            (0i64..3).prop_map(|q| OrderCommand::PlaceOrder {
                customer_id: "c".into(),
                items: vec![Item { product_id: "p".into(), quantity: q }],
            }),
            Just(OrderCommand::ConfirmOrder {}),
            Just(OrderCommand::RejectOrder { reason: "no stock".into() }),
        ]
    }

    proptest! {
        /// PENDING comes first and the order ends CONFIRMED or REJECTED exactly once:
        /// nothing happens to it after that.
        #[test]
        fn an_order_ends_once(cmds in prop::collection::vec(arb(), 0..40)) {
            let mut s = Order::default();
            let mut log = Vec::new();
            for c in &cmds {
                if let Ok(evs) = OrderAggregate::decide(&s, c) {
                    for e in &evs { s = OrderAggregate::evolve(s, e); }
                    log.extend(evs);
                }
            }
            prop_assert!(log.len() <= 2);
            if let Some(first) = log.first() {
                prop_assert!(matches!(first, OrderEvent::OrderPlaced { .. }), "first event is the placement");
            }
            if log.len() == 2 {
                prop_assert!(matches!(s.status, OrderStatus::Confirmed | OrderStatus::Rejected));
            }
        }
    }

    #[test]
    fn bad_orders_are_malformed_and_late_commands_are_rule_rejections() {
        let place = |q| OrderCommand::PlaceOrder { customer_id: "c".into(), items: vec![Item { product_id: "p".into(), quantity: q }] };
        assert!(matches!(OrderAggregate::decide(&Order::default(), &place(0)), Err(Rejection::Malformed(_))));
        let s = crate::processor::aggregate::fold::<OrderAggregate>(Order::default(), &OrderAggregate::decide(&Order::default(), &place(2)).unwrap());
        let s = crate::processor::aggregate::fold::<OrderAggregate>(s.clone(), &OrderAggregate::decide(&s, &OrderCommand::ConfirmOrder {}).unwrap());
        assert_eq!(
            OrderAggregate::decide(&s, &OrderCommand::RejectOrder { reason: "x".into() }),
            Err(Rejection::Rule("order is already CONFIRMED".into()))
        );
    }
}
