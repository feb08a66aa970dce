//! PostgreSQL for projections: the connection pool, the schema, and the one transaction a
//! batch commits in, holding its row changes and its new positions together. This is the
//! only file that names tokio-postgres types.
//!
//! A batch commits only where its positions are what its writer believed: each partition's
//! row of `millrace_offsets` is locked first and compared. A writer that lost the
//! partition (a zombie past a rebalance) finds it moved and gives the batch up, so two
//! writers never both apply the same events.

use super::projection::{RowChange, TableDef};
use super::sql;
use super::ReadSideError;
use crate::record::TopicPartition;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::NoTls;

/// Whether `url` is a PostgreSQL URL this driver can use (checked before anything starts).
pub fn check_url(url: &str) -> Result<(), ReadSideError> {
    url.parse::<tokio_postgres::Config>().map(drop).map_err(|e| ReadSideError::Url { reason: e.to_string() })
}

/// A pool of connections to the database at `url` (`postgres://user:pass@host:port/db`).
pub fn pool(url: &str, size: usize) -> Result<Pool, ReadSideError> {
    let mut config: tokio_postgres::Config =
        url.parse().map_err(|e: tokio_postgres::Error| ReadSideError::Url { reason: e.to_string() })?;
    config.connect_timeout(Duration::from_secs(5)).application_name("millrace");
    let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    Pool::builder(manager)
        .max_size(size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(10)))
        .build()
        .map_err(|e| ReadSideError::Url { reason: e.to_string() })
}

/// One batch: the changes of each event in order, and where each partition moves.
pub struct Batch {
    /// Per partition: the position this writer believes is stored (None: none yet), and
    /// the position after the batch.
    pub partitions: Vec<(TopicPartition, Option<i64>, i64)>,
    /// Each event's changes, or why it cannot be projected (it goes to the dead letters).
    pub items: Vec<Result<Vec<RowChange>, String>>,
}

/// What a committed batch did.
#[derive(Debug, Default, PartialEq)]
pub struct Committed {
    /// Rows written (statements that changed a row).
    pub rows: u64,
    /// Events that went to the dead letters instead, by index in the batch, with why.
    pub dead: Vec<(usize, String)>,
}

/// The dead letters of a batch, sent (and flushed) before it commits: a crash in between
/// repeats them, never loses them.
pub type SendDead<'a> = &'a (dyn Fn(&[(usize, String)]) -> Result<(), ReadSideError> + Sync);

/// A projection's view of the database.
pub struct ProjectionDb {
    pool: Pool,
    projection: String,
}

impl ProjectionDb {
    pub fn new(pool: Pool, projection: &str) -> Self {
        Self { pool, projection: projection.to_string() }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, ReadSideError> {
        self.pool.get().await.map_err(|e| ReadSideError::Pool { reason: e.to_string() })
    }

    /// Creates the positions table and the projection's tables where missing.
    pub async fn prepare(&self, tables: &[TableDef]) -> Result<(), ReadSideError> {
        let client = self.client().await?;
        let mut ddl = vec![sql::OFFSETS_DDL.to_string()];
        ddl.extend(tables.iter().map(sql::create_table));
        for statement in ddl {
            client.batch_execute(&statement).await.map_err(pg("create table"))?;
        }
        Ok(())
    }

    /// The name positions are stored under.
    pub fn name(&self) -> &str {
        &self.projection
    }

    /// Whether a table (or view) of this name exists.
    pub async fn table_exists(&self, table: &str) -> Result<bool, ReadSideError> {
        let client = self.client().await?;
        let row = client.query_one("SELECT to_regclass($1) IS NOT NULL", &[&sql::ident(table)]).await.map_err(pg("look a table up"))?;
        Ok(row.get(0))
    }

    /// Creates `shadow` as a copy of `live`'s definition (columns, defaults, constraints,
    /// indexes: the user's migrations included), or from `def` when there is no live table.
    pub async fn create_shadow(&self, live: &str, shadow: &str, def: &TableDef) -> Result<(), ReadSideError> {
        let statement = if self.table_exists(live).await? {
            format!("CREATE TABLE IF NOT EXISTS {} (LIKE {} INCLUDING ALL)", sql::ident(shadow), sql::ident(live))
        } else {
            sql::create_table(&TableDef { name: shadow.to_string(), ..def.clone() })
        };
        self.client().await?.batch_execute(&statement).await.map_err(pg("create the shadow table"))
    }

    /// Forgets every position of this projection.
    pub async fn forget_positions(&self) -> Result<(), ReadSideError> {
        let client = self.client().await?;
        client.execute("DELETE FROM millrace_offsets WHERE projection = $1", &[&self.projection]).await.map_err(pg("forget positions"))?;
        Ok(())
    }

    /// The blue/green swap, in one transaction: the live projection's positions become this
    /// one's (taking the live writer's position rows first, so a batch of it in flight
    /// commits before, and the next one finds its positions moved and rejoins from these),
    /// each live table is renamed to its old name and each shadow to the live name.
    /// `renames` holds (live, shadow, old) per table; `drop_old` drops the old ones.
    pub async fn swap_into(&self, live_projection: &str, renames: &[(String, String, String)], drop_old: bool) -> Result<(), ReadSideError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg("begin"))?;
        // In the writers' order (see `attempt`), so the swap and a live batch never deadlock.
        tx.query("SELECT next_offset FROM millrace_offsets WHERE projection = $1 ORDER BY topic, partition FOR UPDATE", &[&live_projection])
            .await
            .map_err(pg("lock live positions"))?;
        tx.execute("DELETE FROM millrace_offsets WHERE projection = $1", &[&live_projection]).await.map_err(pg("swap positions"))?;
        tx.execute(
            "INSERT INTO millrace_offsets (projection, topic, partition, next_offset) \
             SELECT $1, topic, partition, next_offset FROM millrace_offsets WHERE projection = $2",
            &[&live_projection, &self.projection],
        )
        .await
        .map_err(pg("swap positions"))?;
        tx.execute("DELETE FROM millrace_offsets WHERE projection = $1", &[&self.projection]).await.map_err(pg("swap positions"))?;
        for (live, shadow, old) in renames {
            let mut ddl = Vec::new();
            if drop_old {
                ddl.push(format!("DROP TABLE IF EXISTS {}", sql::ident(old)));
            }
            let exists: bool = tx.query_one("SELECT to_regclass($1) IS NOT NULL", &[&sql::ident(live)]).await.map_err(pg("look a table up"))?.get(0);
            if exists {
                ddl.push(format!("ALTER TABLE {} RENAME TO {}", sql::ident(live), sql::ident(unqualified(old))));
            }
            ddl.push(format!("ALTER TABLE {} RENAME TO {}", sql::ident(shadow), sql::ident(unqualified(live))));
            if drop_old && exists {
                ddl.push(format!("DROP TABLE {}", sql::ident(old)));
            }
            tx.batch_execute(&ddl.join("; ")).await.map_err(pg("swap tables"))?;
        }
        tx.commit().await.map_err(pg("commit the swap"))
    }

    pub async fn positions(&self) -> Result<HashMap<TopicPartition, i64>, ReadSideError> {
        let client = self.client().await?;
        let rows = client.query(sql::POSITIONS, &[&self.projection]).await.map_err(pg("read positions"))?;
        Ok(rows.iter().map(|r| (TopicPartition::new(r.get::<_, String>(0), r.get::<_, i32>(1)), r.get::<_, i64>(2))).collect())
    }

    /// Commits `batch` in one transaction. A row the database refuses (a value out of
    /// range, a constraint) fails only its own event: the batch is then redone one event
    /// at a time behind savepoints, and that event goes to the dead letters.
    pub async fn commit(&self, batch: &Batch, send_dead: SendDead<'_>) -> Result<Committed, ReadSideError> {
        let mut client = self.client().await?;
        match self.attempt(&mut client, batch, false, send_dead).await {
            Err(e) if e.is_row_fault() => {
                tracing::info!(projection = %self.projection, error = %e, "a row was refused; redoing the batch event by event");
                self.attempt(&mut client, batch, true, send_dead).await
            }
            r => r,
        }
    }

    async fn attempt(
        &self,
        client: &mut deadpool_postgres::Object,
        batch: &Batch,
        one_by_one: bool,
        send_dead: SendDead<'_>,
    ) -> Result<Committed, ReadSideError> {
        let tx = client.transaction().await.map_err(pg("begin"))?;
        // Locked in one order, (topic, partition), by every writer and by the blue/green
        // swap: two transactions taking the same rows in different orders deadlock.
        let mut locking: Vec<&(TopicPartition, Option<i64>, i64)> = batch.partitions.iter().collect();
        locking.sort_by(|a, b| (&a.0.topic, a.0.partition).cmp(&(&b.0.topic, b.0.partition)));
        for (tp, believed, _) in locking {
            let row = tx.query_opt(sql::LOCK_POSITION, &[&self.projection, &tp.topic, &tp.partition]).await.map_err(pg("lock position"))?;
            let stored = row.map(|r| r.get::<_, i64>(0));
            if stored != *believed {
                return Err(ReadSideError::Moved { topic: tp.topic.clone(), partition: tp.partition, believed: *believed, stored });
            }
        }
        let mut done = Committed::default();
        // Each event's statements with their parameters converted to the columns' types;
        // an event whose values do not convert is dead before anything of it runs.
        let mut prepared = Vec::with_capacity(batch.items.len());
        for (i, item) in batch.items.iter().enumerate() {
            let changes = match item {
                Ok(changes) => changes,
                Err(reason) => {
                    done.dead.push((i, reason.clone()));
                    continue;
                }
            };
            let mut statements = Vec::with_capacity(changes.len());
            let mut bad = None;
            for change in changes {
                let statement = tx.prepare_cached(&sql::statement(change)).await.map_err(pg("prepare"))?;
                match convert(&statement, &sql::parameters(change)) {
                    Ok(params) => statements.push((statement, params)),
                    Err(Convert::Bad(reason)) => {
                        bad = Some(format!("table {}: {reason}", change.table()));
                        break;
                    }
                    Err(Convert::Unsupported { column, sql_type }) => {
                        return Err(ReadSideError::UnsupportedType { table: change.table().to_string(), column, sql_type })
                    }
                }
            }
            match bad {
                Some(reason) => done.dead.push((i, reason)),
                None => prepared.push((i, statements)),
            }
        }
        if one_by_one {
            for (i, statements) in &prepared {
                tx.batch_execute("SAVEPOINT millrace_event").await.map_err(pg("savepoint"))?;
                let mut rows = 0;
                let mut refused = None;
                for (statement, params) in statements {
                    match tx.execute(statement, &refs(params)).await {
                        Ok(n) => rows += n,
                        Err(e) => {
                            let e = pg("write row")(e);
                            if !e.is_row_fault() {
                                return Err(e);
                            }
                            refused = Some(e.to_string());
                            break;
                        }
                    }
                }
                match refused {
                    None => {
                        tx.batch_execute("RELEASE SAVEPOINT millrace_event").await.map_err(pg("release savepoint"))?;
                        done.rows += rows;
                    }
                    Some(reason) => {
                        tx.batch_execute("ROLLBACK TO SAVEPOINT millrace_event").await.map_err(pg("rollback to savepoint"))?;
                        done.dead.push((*i, reason));
                    }
                }
            }
            done.dead.sort_by_key(|(i, _)| *i);
        } else {
            // Pipelined: every statement is sent before the first answer is awaited, in
            // order on the one connection, so a batch costs about one round trip.
            let param_refs: Vec<Vec<&(dyn ToSql + Sync)>> =
                prepared.iter().flat_map(|(_, s)| s.iter().map(|(_, p)| refs(p))).collect();
            let statements = prepared.iter().flat_map(|(_, s)| s.iter().map(|(st, _)| st));
            let writes = statements.zip(&param_refs).map(|(st, p)| tx.execute(st, p));
            let counts = futures::future::try_join_all(writes).await.map_err(pg("write rows"))?;
            done.rows = counts.iter().sum();
        }
        for (tp, believed, next) in &batch.partitions {
            let statement = if believed.is_some() { sql::UPSERT_POSITION } else { sql::INSERT_POSITION };
            tx.execute(statement, &[&self.projection, &tp.topic, &tp.partition, next]).await.map_err(|e| match e.code() {
                Some(c) if *c == tokio_postgres::error::SqlState::UNIQUE_VIOLATION => ReadSideError::Moved {
                    topic: tp.topic.clone(),
                    partition: tp.partition,
                    believed: None,
                    stored: Some(-1),
                },
                _ => pg("write position")(e),
            })?;
        }
        if !done.dead.is_empty() {
            send_dead(&done.dead)?;
        }
        tx.commit().await.map_err(pg("commit"))?;
        Ok(done)
    }
}

/// One outbox row.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub id: i64,
    pub topic: String,
    pub key: Option<String>,
    /// The value as JSON text.
    pub value: Option<String>,
    /// The headers object as JSON text.
    pub headers: Option<String>,
}

/// An outbox table, as its relay reads it.
pub struct OutboxDb {
    pool: Pool,
    table: String,
}

impl OutboxDb {
    pub fn new(pool: Pool, table: &str) -> Self {
        Self { pool, table: table.to_string() }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, ReadSideError> {
        self.pool.get().await.map_err(|e| ReadSideError::Pool { reason: e.to_string() })
    }

    /// Creates the table when missing; checks an existing one has the `txid` column.
    pub async fn prepare(&self) -> Result<(), ReadSideError> {
        let client = self.client().await?;
        client.batch_execute(&sql::create_outbox(&self.table)).await.map_err(pg("create the outbox table"))?;
        if let Err(e) = client.prepare(&sql::outbox_rows(&self.table)).await {
            return Err(match e.code() {
                Some(c) if *c == tokio_postgres::error::SqlState::UNDEFINED_COLUMN => ReadSideError::OutboxTable {
                    table: self.table.clone(),
                    reason: format!(
                        "{} (it needs id bigint, topic text, key text, value jsonb, headers jsonb and txid xid8; \
                         add the last with: ALTER TABLE {} ADD COLUMN txid xid8 NOT NULL DEFAULT pg_current_xact_id())",
                        e.as_db_error().map_or(e.to_string(), |d| d.message().to_string()),
                        self.table
                    ),
                },
                _ => pg("read the outbox")(e),
            });
        }
        Ok(())
    }

    /// The current snapshot, as text (`xmin:xmax:xip,...`).
    pub async fn snapshot(&self) -> Result<String, ReadSideError> {
        let row = self.client().await?.query_one("SELECT pg_current_snapshot()::text", &[]).await.map_err(pg("take a snapshot"))?;
        Ok(row.get(0))
    }

    /// Rows of transactions visible in `now` but not in `done`, past `after`, in id order.
    pub async fn rows(&self, done: &str, now: &str, after: i64, limit: usize) -> Result<Vec<OutboxRow>, ReadSideError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(&sql::outbox_rows(&self.table)).await.map_err(pg("read the outbox"))?;
        let rows = client.query(&statement, &[&done, &now, &after, &(limit as i64)]).await.map_err(pg("read the outbox"))?;
        Ok(rows
            .iter()
            .map(|r| OutboxRow { id: r.get(0), topic: r.get(1), key: r.get(2), value: r.get(3), headers: r.get(4) })
            .collect())
    }

    pub async fn delete(&self, ids: &[i64]) -> Result<(), ReadSideError> {
        self.client().await?.execute(&sql::outbox_delete(&self.table), &[&ids]).await.map_err(pg("delete relayed rows"))?;
        Ok(())
    }

    /// Deletes every row of a transaction that committed before `done` was taken.
    pub async fn cleanup(&self, done: &str) -> Result<u64, ReadSideError> {
        self.client().await?.execute(&sql::outbox_cleanup(&self.table), &[&done]).await.map_err(pg("delete relayed rows"))
    }
}

/// `schema.table` → `table`: what ALTER TABLE ... RENAME TO takes.
fn unqualified(name: &str) -> &str {
    name.rsplit('.').next().unwrap_or(name)
}

fn pg(op: &'static str) -> impl Fn(tokio_postgres::Error) -> ReadSideError {
    move |source| ReadSideError::Postgres { op, source }
}

type Param = Box<dyn ToSql + Sync + Send>;

fn refs(params: &[Param]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect()
}

enum Convert {
    /// The event's value does not fit the column: the event's fault.
    Bad(String),
    /// The column's type is one millrace cannot write: the projection's fault.
    Unsupported { column: String, sql_type: String },
}

/// The parameters of a prepared statement, each converted to the type PostgreSQL inferred
/// for it (the type of the column it is written to).
fn convert(statement: &tokio_postgres::Statement, values: &[(&str, Value)]) -> Result<Vec<Param>, Convert> {
    statement.params().iter().zip(values).map(|(ty, (column, v))| to_param(column, ty, v)).collect()
}

fn to_param(column: &str, ty: &Type, v: &Value) -> Result<Param, Convert> {
    let bad = |expected: &str| Convert::Bad(format!("column {column} ({ty}): {expected}, got {}", short(v)));
    let int = |v: &Value| v.as_i64().or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()));
    let float = |v: &Value| v.as_f64().or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()));
    let null = v.is_null();
    Ok(match *ty {
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => Box::new(match v {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        }),
        Type::INT8 if null => Box::new(None::<i64>),
        Type::INT8 => Box::new(int(v).ok_or_else(|| bad("expected an integer"))?),
        Type::INT4 if null => Box::new(None::<i32>),
        Type::INT4 => Box::new(int(v).and_then(|n| i32::try_from(n).ok()).ok_or_else(|| bad("expected a 32-bit integer"))?),
        Type::INT2 if null => Box::new(None::<i16>),
        Type::INT2 => Box::new(int(v).and_then(|n| i16::try_from(n).ok()).ok_or_else(|| bad("expected a 16-bit integer"))?),
        Type::FLOAT8 if null => Box::new(None::<f64>),
        Type::FLOAT8 => Box::new(float(v).ok_or_else(|| bad("expected a number"))?),
        Type::FLOAT4 if null => Box::new(None::<f32>),
        Type::FLOAT4 => Box::new(float(v).ok_or_else(|| bad("expected a number"))? as f32),
        Type::BOOL if null => Box::new(None::<bool>),
        Type::BOOL => Box::new(match v {
            Value::Bool(b) => *b,
            Value::String(s) if s == "true" || s == "false" => s == "true",
            _ => return Err(bad("expected true or false")),
        }),
        Type::TIMESTAMPTZ if null => Box::new(None::<chrono::DateTime<chrono::Utc>>),
        Type::TIMESTAMPTZ => Box::new(timestamp(v).ok_or_else(|| bad("expected epoch milliseconds or an RFC 3339 time"))?),
        Type::TIMESTAMP if null => Box::new(None::<chrono::NaiveDateTime>),
        Type::TIMESTAMP => Box::new(timestamp(v).ok_or_else(|| bad("expected epoch milliseconds or an RFC 3339 time"))?.naive_utc()),
        Type::JSON | Type::JSONB if null => Box::new(None::<Value>),
        Type::JSON | Type::JSONB => Box::new(v.clone()),
        _ => return Err(Convert::Unsupported { column: column.to_string(), sql_type: ty.to_string() }),
    })
}

fn timestamp(v: &Value) -> Option<chrono::DateTime<chrono::Utc>> {
    match v {
        Value::Number(n) => n.as_i64().and_then(chrono::DateTime::from_timestamp_millis),
        Value::String(s) => chrono::DateTime::parse_from_rfc3339(s).ok().map(|t| t.with_timezone(&chrono::Utc)),
        _ => None,
    }
}

/// A value for a message: at most 80 characters of its JSON.
fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 80 { format!("{}...", s.chars().take(80).collect::<String>()) } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(ty: Type, v: Value) -> bool {
        to_param("c", &ty, &v).is_ok()
    }

    fn reason(ty: Type, v: Value) -> String {
        match to_param("c", &ty, &v) {
            Err(Convert::Bad(r)) => r,
            _ => panic!("expected a bad value"),
        }
    }

    #[test]
    fn values_convert_to_their_columns_types_or_say_why_not() {
        assert!(ok(Type::TEXT, json!(5)) && ok(Type::TEXT, json!(null)) && ok(Type::TEXT, json!({"a": 1})));
        assert!(ok(Type::INT8, json!(5)) && ok(Type::INT8, json!(" 7")) && ok(Type::INT8, json!(null)));
        assert!(reason(Type::INT8, json!("seven")).contains("column c (int8): expected an integer, got \"seven\""));
        assert!(reason(Type::INT4, json!(1i64 << 40)).contains("32-bit"));
        assert!(ok(Type::TIMESTAMPTZ, json!(1_700_000_000_000i64)) && ok(Type::TIMESTAMPTZ, json!("2026-12-03T10:00:00Z")));
        assert!(reason(Type::TIMESTAMPTZ, json!("yesterday")).contains("RFC 3339"));
        assert!(ok(Type::BOOL, json!(true)) && reason(Type::BOOL, json!(1)).contains("true or false"));
        assert!(ok(Type::JSONB, json!([1, 2])));
        assert!(matches!(to_param("c", &Type::NUMERIC, &json!(1)), Err(Convert::Unsupported { .. })));
        assert!(reason(Type::INT8, json!("x".repeat(200))).ends_with("..."));
    }
}
