//! The product aggregate of the order domain: products are created, stocked, and stock is
//! reserved for orders. Stock never goes below zero: a reservation larger than what is
//! available is rejected with the numbers.

use crate::processor::{Aggregate, Rejection};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "payload")]
pub enum ProductCommand {
    CreateProduct { name: String },
    AddStock { quantity: i64 },
    ReserveStock { order_id: String, quantity: i64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "payload")]
pub enum ProductEvent {
    ProductCreated { name: String },
    StockAdded { quantity: i64 },
    StockReserved { order_id: String, quantity: i64 },
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    pub name: String,
    pub exists: bool,
    /// Units available for new reservations.
    pub stock: i64,
    /// Units reserved by orders so far.
    pub reserved: i64,
}

pub struct ProductAggregate;

impl Aggregate for ProductAggregate {
    type Command = ProductCommand;
    type Event = ProductEvent;
    type State = Product;

    fn decide(s: &Product, c: &ProductCommand) -> Result<Vec<ProductEvent>, Rejection> {
        use ProductCommand::*;
        match c {
            CreateProduct { .. } if s.exists => Err(Rejection::Rule("product already exists".into())),
            CreateProduct { name } if name.trim().is_empty() => Err(Rejection::Malformed("name is empty".into())),
            CreateProduct { name } => Ok(vec![ProductEvent::ProductCreated { name: name.clone() }]),
            _ if !s.exists => Err(Rejection::Rule("product does not exist".into())),
            AddStock { quantity } | ReserveStock { quantity, .. } if *quantity <= 0 => {
                Err(Rejection::Malformed(format!("quantity must be positive, got {quantity}")))
            }
            AddStock { quantity } => Ok(vec![ProductEvent::StockAdded { quantity: *quantity }]),
            ReserveStock { quantity, .. } if *quantity > s.stock => Err(Rejection::Rule(format!(
                "insufficient stock: {} available, {quantity} requested",
                s.stock
            ))),
            ReserveStock { order_id, quantity } => {
                Ok(vec![ProductEvent::StockReserved { order_id: order_id.clone(), quantity: *quantity }])
            }
        }
    }

    fn evolve(s: Product, e: &ProductEvent) -> Product {
        match e {
            ProductEvent::ProductCreated { name } => Product { name: name.clone(), exists: true, ..s },
            ProductEvent::StockAdded { quantity } => Product { stock: s.stock + quantity, ..s },
            ProductEvent::StockReserved { quantity, .. } => {
                Product { stock: s.stock - quantity, reserved: s.reserved + quantity, ..s }
            }
        }
    }

    fn event_type(e: &ProductEvent) -> &'static str {
        match e {
            ProductEvent::ProductCreated { .. } => "ProductCreated",
            ProductEvent::StockAdded { .. } => "StockAdded",
            ProductEvent::StockReserved { .. } => "StockReserved",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reservations_respect_stock() {
        let s = Product::default();
        assert!(matches!(ProductAggregate::decide(&s, &ProductCommand::AddStock { quantity: 1 }), Err(Rejection::Rule(_))));
        let s = crate::processor::aggregate::fold::<ProductAggregate>(s, &[
            ProductEvent::ProductCreated { name: "p".into() },
            ProductEvent::StockAdded { quantity: 5 },
        ]);
        let r = ProductAggregate::decide(&s, &ProductCommand::ReserveStock { order_id: "o1".into(), quantity: 6 });
        assert_eq!(r, Err(Rejection::Rule("insufficient stock: 5 available, 6 requested".into())));
        let evs = ProductAggregate::decide(&s, &ProductCommand::ReserveStock { order_id: "o1".into(), quantity: 5 }).unwrap();
        let s = crate::processor::aggregate::fold::<ProductAggregate>(s, &evs);
        assert_eq!((s.stock, s.reserved), (0, 5));
        assert!(matches!(ProductAggregate::decide(&s, &ProductCommand::AddStock { quantity: 0 }), Err(Rejection::Malformed(_))));
    }

    fn arb() -> impl Strategy<Value = ProductCommand> {
        prop_oneof![
            Just(ProductCommand::CreateProduct { name: "p".into() }),
            (-2i64..10).prop_map(|quantity| ProductCommand::AddStock { quantity }),
            (-2i64..10).prop_map(|quantity| ProductCommand::ReserveStock { order_id: "o".into(), quantity }),
        ]
    }

    proptest! {
        /// Stock never goes negative, and stock + reserved equals everything ever added.
        #[test]
        fn stock_is_conserved(cmds in prop::collection::vec(arb(), 0..80)) {
            let mut s = Product::default();
            let mut added = 0;
            for c in &cmds {
                if let Ok(evs) = ProductAggregate::decide(&s, c) {
                    for e in &evs {
                        if let ProductEvent::StockAdded { quantity } = e { added += quantity; }
                        s = ProductAggregate::evolve(s, e);
                    }
                }
                prop_assert!(s.stock >= 0);
                prop_assert_eq!(s.stock + s.reserved, added);
            }
        }
    }
}
