//! The SQL text of the read side, rendered from row changes and table definitions. Pure:
//! no connection is needed, so every statement shape is unit-tested. Identifiers are always
//! quoted; values are always parameters, never spliced into the text.

use super::projection::{RowChange, TableDef};

/// The positions table: where each projection is, per input partition. Written in the
/// same transaction as the rows, so rows and position never disagree.
pub const OFFSETS_DDL: &str = "CREATE TABLE IF NOT EXISTS millrace_offsets (\
    projection text NOT NULL, topic text NOT NULL, partition integer NOT NULL, \
    next_offset bigint NOT NULL, updated_at timestamptz NOT NULL DEFAULT now(), \
    PRIMARY KEY (projection, topic, partition))";

/// The position of one partition, locked until the transaction ends: a second writer (a
/// zombie that has not yet noticed it lost the partition) waits here, then sees the
/// position moved and gives up its batch.
pub const LOCK_POSITION: &str =
    "SELECT next_offset FROM millrace_offsets WHERE projection = $1 AND topic = $2 AND partition = $3 FOR UPDATE";

pub const POSITIONS: &str = "SELECT topic, partition, next_offset FROM millrace_offsets WHERE projection = $1";

pub const UPSERT_POSITION: &str = "INSERT INTO millrace_offsets (projection, topic, partition, next_offset) \
    VALUES ($1, $2, $3, $4) ON CONFLICT (projection, topic, partition) \
    DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()";

/// A first position, where none was: fails (unique violation) if another writer inserted
/// one meanwhile, which is the same conflict as a moved position.
pub const INSERT_POSITION: &str =
    "INSERT INTO millrace_offsets (projection, topic, partition, next_offset) VALUES ($1, $2, $3, $4)";

/// An outbox table as the relay expects it. `txid` is what makes the relay exact: the
/// transaction that inserted the row (`readside::outbox`).
pub fn create_outbox(table: &str) -> String {
    let t = ident(table);
    let index = ident(&format!("{}_txid_idx", table.rsplit('.').next().unwrap_or(table)));
    format!(
        "CREATE TABLE IF NOT EXISTS {t} (id bigserial PRIMARY KEY, topic text NOT NULL, key text, value jsonb, \
         headers jsonb, created_at timestamptz NOT NULL DEFAULT now(), txid xid8 NOT NULL DEFAULT pg_current_xact_id()); \
         CREATE INDEX IF NOT EXISTS {index} ON {t} (txid)"
    )
}

/// The rows of transactions that committed after snapshot `$1` and by snapshot `$2`, past
/// id `$3`, in id order, at most `$4`. `txid >= xmin($1)` only lets the index skip what
/// `$1` already saw.
pub fn outbox_rows(table: &str) -> String {
    format!(
        "SELECT id, topic, key, value::text, headers::text FROM {} \
         WHERE txid >= pg_snapshot_xmin($1::text::pg_snapshot) \
         AND pg_visible_in_snapshot(txid, $2::text::pg_snapshot) \
         AND NOT pg_visible_in_snapshot(txid, $1::text::pg_snapshot) \
         AND id > $3 ORDER BY id LIMIT $4",
        ident(table)
    )
}

/// Rows relayed in a batch.
pub fn outbox_delete(table: &str) -> String {
    format!("DELETE FROM {} WHERE id = ANY($1)", ident(table))
}

/// Rows every transaction of which committed before snapshot `$1` was taken: all relayed
/// (what a crash between the Kafka commit and `outbox_delete` leaves).
pub fn outbox_cleanup(table: &str) -> String {
    format!("DELETE FROM {} WHERE txid < pg_snapshot_xmin($1::text::pg_snapshot)", ident(table))
}

/// `name` quoted as a PostgreSQL identifier; `schema.table` quotes each part.
pub fn ident(name: &str) -> String {
    name.split('.').map(|part| format!("\"{}\"", part.replace('"', "\"\""))).collect::<Vec<_>>().join(".")
}

pub fn create_table(def: &TableDef) -> String {
    let mut cols = vec![format!("{} {} PRIMARY KEY", ident(&def.key.name), def.key.sql_type)];
    cols.extend(def.columns.iter().map(|c| format!("{} {}", ident(&c.name), c.sql_type)));
    format!("CREATE TABLE IF NOT EXISTS {} ({})", ident(&def.name), cols.join(", "))
}

/// The statement of a change, with its parameters in order: the key first, then the
/// columns (upsert) or the version (delete). The text depends only on the change's shape,
/// so it is prepared once and cached by that text.
pub fn statement(change: &RowChange) -> String {
    match change {
        RowChange::Upsert { table, key, columns, version } => {
            let t = ident(table);
            let names: Vec<String> = std::iter::once(&key.column).chain(columns.iter().map(|(c, _)| c)).map(|c| ident(c)).collect();
            let params: Vec<String> = (1..=names.len()).map(|i| format!("${i}")).collect();
            let mut sql = format!("INSERT INTO {t} ({}) VALUES ({}) ON CONFLICT ({})", names.join(", "), params.join(", "), names[0]);
            if columns.is_empty() {
                sql.push_str(" DO NOTHING");
                return sql;
            }
            let set: Vec<String> = names[1..].iter().map(|c| format!("{c} = EXCLUDED.{c}")).collect();
            sql.push_str(&format!(" DO UPDATE SET {}", set.join(", ")));
            if let Some(v) = version {
                let v = ident(&v.column);
                sql.push_str(&format!(" WHERE {t}.{v} IS NULL OR {t}.{v} < EXCLUDED.{v}"));
            }
            sql
        }
        RowChange::Delete { table, key, version } => {
            let mut sql = format!("DELETE FROM {} WHERE {} = $1", ident(table), ident(&key.column));
            if let Some(v) = version {
                let v = ident(&v.column);
                sql.push_str(&format!(" AND ({v} IS NULL OR {v} < $2)"));
            }
            sql
        }
    }
}

/// The parameters of `statement(change)`, in order.
pub fn parameters(change: &RowChange) -> Vec<(&str, serde_json::Value)> {
    match change {
        RowChange::Upsert { key, columns, .. } => std::iter::once((key.column.as_str(), key.value.clone()))
            .chain(columns.iter().map(|(c, v)| (c.as_str(), v.clone())))
            .collect(),
        RowChange::Delete { key, version, .. } => {
            let mut p = vec![(key.column.as_str(), key.value.clone())];
            if let Some(v) = version {
                p.push((v.column.as_str(), serde_json::Value::from(v.value)));
            }
            p
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::readside::projection::{Column, Key, Version};
    use serde_json::json;

    fn key() -> Key {
        Key { column: "id".into(), value: json!("c1") }
    }

    #[test]
    fn an_upsert_updates_only_its_columns_and_only_a_lower_version() {
        let change = RowChange::Upsert {
            table: "customers".into(),
            key: key(),
            columns: vec![("status".into(), json!("ACTIVE")), ("version".into(), json!(3))],
            version: Some(Version { column: "version".into(), value: 3 }),
        };
        assert_eq!(
            statement(&change),
            "INSERT INTO \"customers\" (\"id\", \"status\", \"version\") VALUES ($1, $2, $3) ON CONFLICT (\"id\") \
             DO UPDATE SET \"status\" = EXCLUDED.\"status\", \"version\" = EXCLUDED.\"version\" \
             WHERE \"customers\".\"version\" IS NULL OR \"customers\".\"version\" < EXCLUDED.\"version\""
        );
        assert_eq!(parameters(&change), vec![("id", json!("c1")), ("status", json!("ACTIVE")), ("version", json!(3))]);
    }

    #[test]
    fn a_delete_with_a_version_spares_a_newer_row() {
        let change = RowChange::Delete { table: "s.t".into(), key: key(), version: Some(Version { column: "v".into(), value: 9 }) };
        assert_eq!(statement(&change), "DELETE FROM \"s\".\"t\" WHERE \"id\" = $1 AND (\"v\" IS NULL OR \"v\" < $2)");
        assert_eq!(parameters(&change), vec![("id", json!("c1")), ("v", json!(9))]);
        let plain = RowChange::Delete { table: "t".into(), key: key(), version: None };
        assert_eq!(statement(&plain), "DELETE FROM \"t\" WHERE \"id\" = $1");
    }

    #[test]
    fn a_key_only_upsert_inserts_or_does_nothing_and_identifiers_are_quoted() {
        let change = RowChange::Upsert { table: "we\"ird".into(), key: key(), columns: vec![], version: None };
        assert_eq!(statement(&change), "INSERT INTO \"we\"\"ird\" (\"id\") VALUES ($1) ON CONFLICT (\"id\") DO NOTHING");
        let def = TableDef {
            name: "customers".into(),
            key: Column { name: "id".into(), sql_type: "text".into() },
            columns: vec![Column { name: "version".into(), sql_type: "bigint".into() }],
        };
        assert_eq!(create_table(&def), "CREATE TABLE IF NOT EXISTS \"customers\" (\"id\" text PRIMARY KEY, \"version\" bigint)");
    }
}
