//! Aggregates the binary knows, by the name topology files use. Registering one is one line:
//! `registry.register::<CustomerAggregate>("customer")`. Rust projections register the same
//! way, by name.

use crate::processor::{
    Aggregate, AggregateProcessor, AggregateSettings, Processor, SnapshotRenderer, ValueRenderer,
};
use crate::codec::Format;
use crate::processor::refold::{AggregateRefolder, Refolder};
use crate::readside::Projection;
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;

type ProcessorFactory = Arc<dyn Fn(AggregateSettings) -> Box<dyn Processor> + Send + Sync>;
type RendererFactory = Arc<dyn Fn(Format) -> Arc<dyn ValueRenderer> + Send + Sync>;
/// A refolder for (event format, store format, dedup window).
type RefolderFactory = Arc<dyn Fn(Format, Format, usize) -> Arc<dyn Refolder> + Send + Sync>;
/// Decodes a command envelope and body as the processor will: the reason if it cannot.
pub(crate) type CommandCheck = Arc<dyn Fn(Format, &[u8]) -> Result<(), String> + Send + Sync>;

#[derive(Clone)]
pub(crate) struct Registered {
    pub processor: ProcessorFactory,
    pub renderer: RendererFactory,
    pub check: CommandCheck,
    pub refolder: RefolderFactory,
    pub supports_protobuf: bool,
}

#[derive(Clone, Default)]
pub struct Registry {
    aggregates: BTreeMap<String, Registered>,
    projections: BTreeMap<String, Arc<dyn Projection>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes aggregate `A` available to topology files as `name`.
    pub fn register<A: Aggregate>(&mut self, name: &str) -> &mut Self {
        self.aggregates.insert(
            name.to_string(),
            Registered {
                processor: Arc::new(|s| Box::new(AggregateProcessor::<A>::new(s))),
                renderer: Arc::new(|format| {
                    Arc::new(SnapshotRenderer::<A> { format, _aggregate: PhantomData })
                }),
                check: Arc::new(|format, bytes| {
                    crate::processor::wire::decode_command::<A>(format, bytes).map(drop).map_err(|e| e.to_string())
                }),
                refolder: Arc::new(|event_format, store_format, dedup_window| {
                    Arc::new(AggregateRefolder::<A> { event_format, store_format, dedup_window, _aggregate: PhantomData })
                }),
                supports_protobuf: A::supports_protobuf(),
            },
        );
        self
    }

    /// Makes a Rust projection available to topology files as `name`
    /// (`projections: {node: {from: [...], projection: name}}`).
    pub fn register_projection(&mut self, name: &str, projection: impl Projection) -> &mut Self {
        self.projections.insert(name.to_string(), Arc::new(projection));
        self
    }

    pub fn projection_names(&self) -> impl Iterator<Item = &str> + Clone {
        self.projections.keys().map(String::as_str)
    }

    pub(crate) fn projection(&self, name: &str) -> Option<Arc<dyn Projection>> {
        self.projections.get(name).cloned()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> + Clone {
        self.aggregates.keys().map(String::as_str)
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Registered> {
        self.aggregates.get(name)
    }

    /// The format of an aggregate node's snapshots: as the topology says, or the compact
    /// default (protobuf when the aggregate has a schema).
    pub(crate) fn store_format(&self, node: &crate::topology::AggregateNode) -> Option<Format> {
        let registered = self.get(&node.aggregate)?;
        Some(node.store_codec.unwrap_or(if registered.supports_protobuf { Format::Protobuf } else { Format::Json }))
    }
}
