//! Change-data-capture envelopes: `FORMAT DEBEZIUM | CANAL | MAXWELL ENCODE JSON`.
//!
//! Each message becomes a list of [`Action`]s on a table with a primary key, applied in
//! order: `Put` stores a row (insert or replace by key), `Delete` removes the row with the
//! key of the given image. An update is `Delete(before)` then `Put(after)`, which also
//! handles a changed primary key. The row images are JSON object texts, decoded to columns
//! like `PLAIN JSON` payloads.
//!
//! - Debezium: `{"before": {...}, "after": {...}, "op": "c|r|u|d"}`, optionally wrapped in
//!   `{"schema": ..., "payload": {...}}`. Temporal columns arrive as numbers in the column's
//!   unit (Debezium's `MicroTimestamp` for `timestamp`, days for `date`); decimals must be
//!   sent as strings or doubles (`decimal.handling.mode = string | double`).
//! - Canal: `{"type": "INSERT|UPDATE|DELETE", "data": [{...}], "old": [{...}], "isDdl": false}`;
//!   `old[i]` holds the previous values of the columns an update changed in `data[i]`.
//! - Maxwell: `{"type": "insert|update|delete|bootstrap-insert", "data": {...}, "old": {...}}`.
//!
//! DDL events, transaction markers, bootstrap start/complete and Debezium tombstones are
//! not changes: they produce no action.

use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Put(String),
    Delete(String),
}

fn object(v: &Value, what: &str) -> Result<String, String> {
    match v {
        Value::Object(_) => Ok(v.to_string()),
        _ => Err(format!("{what} is not a JSON object")),
    }
}

fn parse(payload: &[u8]) -> Result<Value, String> {
    serde_json::from_slice(payload).map_err(|e| format!("not JSON: {e}"))
}

pub fn debezium(payload: &[u8]) -> Result<Vec<Action>, String> {
    let v = parse(payload)?;
    let env = match v.get("payload") {
        Some(p) if v.get("schema").is_some() || p.get("op").is_some() => p,
        _ => &v,
    };
    if env.is_null() {
        return Ok(Vec::new());
    }
    let op = env
        .get("op")
        .and_then(Value::as_str)
        .ok_or("Debezium event without \"op\"")?;
    let image = |name: &str| -> Result<Option<String>, String> {
        match env.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => object(x, &format!("\"{name}\"")).map(Some),
        }
    };
    Ok(match op {
        "c" | "r" => vec![Action::Put(
            image("after")?.ok_or("Debezium create without \"after\"")?,
        )],
        "u" => {
            let mut out = Vec::new();
            if let Some(b) = image("before")? {
                out.push(Action::Delete(b));
            }
            out.push(Action::Put(
                image("after")?.ok_or("Debezium update without \"after\"")?,
            ));
            out
        }
        "d" => vec![Action::Delete(
            image("before")?.ok_or("Debezium delete without \"before\"")?,
        )],
        "t" | "m" => Vec::new(),
        other => return Err(format!("unknown Debezium op \"{other}\"")),
    })
}

/// `data` with the values in `old` put back: the row before an update.
fn before_image(data: &Map<String, Value>, old: Option<&Value>) -> String {
    let mut before = data.clone();
    if let Some(Value::Object(old)) = old {
        for (k, v) in old {
            before.insert(k.clone(), v.clone());
        }
    }
    Value::Object(before).to_string()
}

pub fn canal(payload: &[u8]) -> Result<Vec<Action>, String> {
    let v = parse(payload)?;
    if v.get("isDdl").and_then(Value::as_bool) == Some(true) {
        return Ok(Vec::new());
    }
    let kind = v
        .get("type")
        .and_then(Value::as_str)
        .ok_or("Canal event without \"type\"")?
        .to_uppercase();
    let data = match v.get("data") {
        Some(Value::Array(rows)) => rows,
        Some(Value::Null) | None => return Ok(Vec::new()),
        Some(_) => return Err("Canal \"data\" is not an array".into()),
    };
    let old = v.get("old").and_then(Value::as_array);
    let mut out = Vec::new();
    for (i, row) in data.iter().enumerate() {
        let Value::Object(map) = row else {
            return Err("a Canal \"data\" row is not an object".into());
        };
        match kind.as_str() {
            "INSERT" => out.push(Action::Put(row.to_string())),
            "UPDATE" => {
                out.push(Action::Delete(before_image(
                    map,
                    old.and_then(|o| o.get(i)),
                )));
                out.push(Action::Put(row.to_string()));
            }
            "DELETE" => out.push(Action::Delete(row.to_string())),
            "CREATE" | "ALTER" | "ERASE" | "TRUNCATE" | "QUERY" => {}
            other => return Err(format!("unknown Canal type \"{other}\"")),
        }
    }
    Ok(out)
}

pub fn maxwell(payload: &[u8]) -> Result<Vec<Action>, String> {
    let v = parse(payload)?;
    let kind = v
        .get("type")
        .and_then(Value::as_str)
        .ok_or("Maxwell event without \"type\"")?;
    let data = || match v.get("data") {
        Some(Value::Object(m)) => Ok(m),
        _ => Err(format!("Maxwell {kind} without a \"data\" object")),
    };
    Ok(match kind {
        "insert" | "bootstrap-insert" => {
            vec![Action::Put(Value::Object(data()?.clone()).to_string())]
        }
        "update" => {
            let d = data()?;
            vec![
                Action::Delete(before_image(d, v.get("old"))),
                Action::Put(Value::Object(d.clone()).to_string()),
            ]
        }
        "delete" => vec![Action::Delete(Value::Object(data()?.clone()).to_string())],
        "bootstrap-start" | "bootstrap-complete" | "table-create" | "table-alter"
        | "table-drop" | "database-create" | "database-drop" | "commit" => Vec::new(),
        other => return Err(format!("unknown Maxwell type \"{other}\"")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(s: &str) -> Action {
        Action::Put(s.into())
    }
    fn del(s: &str) -> Action {
        Action::Delete(s.into())
    }

    #[test]
    fn debezium_events() {
        assert_eq!(
            debezium(
                br#"{"schema": {}, "payload": {"before": null, "after": {"id": 1}, "op": "c"}}"#
            )
            .unwrap(),
            vec![put(r#"{"id":1}"#)]
        );
        assert_eq!(
            debezium(br#"{"before": {"id": 1}, "after": {"id": 2}, "op": "u"}"#).unwrap(),
            vec![del(r#"{"id":1}"#), put(r#"{"id":2}"#)]
        );
        assert_eq!(
            debezium(br#"{"before": {"id": 1}, "after": null, "op": "d"}"#).unwrap(),
            vec![del(r#"{"id":1}"#)]
        );
        assert!(debezium(br#"{"schema": null, "payload": null}"#)
            .unwrap()
            .is_empty());
        assert!(debezium(br#"{"op": "x"}"#).unwrap_err().contains("\"x\""));
        assert!(debezium(br#"{"after": {}}"#).is_err());
    }

    #[test]
    fn canal_events() {
        let msg = br#"{"data": [{"id": "1", "v": "b"}, {"id": "2", "v": "c"}],
                       "old": [{"v": "a"}, {"id": "3"}], "type": "UPDATE", "isDdl": false}"#;
        assert_eq!(
            canal(msg).unwrap(),
            vec![
                del(r#"{"id":"1","v":"a"}"#),
                put(r#"{"id":"1","v":"b"}"#),
                del(r#"{"id":"3","v":"c"}"#),
                put(r#"{"id":"2","v":"c"}"#),
            ]
        );
        assert!(canal(br#"{"type": "ALTER", "isDdl": true, "sql": "..."}"#)
            .unwrap()
            .is_empty());
        assert_eq!(
            canal(br#"{"data": [{"id": "1"}], "type": "DELETE"}"#).unwrap(),
            vec![del(r#"{"id":"1"}"#)]
        );
    }

    #[test]
    fn maxwell_events() {
        assert_eq!(
            maxwell(br#"{"type": "update", "data": {"id": 1, "v": 2}, "old": {"v": 1}}"#).unwrap(),
            vec![del(r#"{"id":1,"v":1}"#), put(r#"{"id":1,"v":2}"#)]
        );
        assert_eq!(
            maxwell(br#"{"type": "bootstrap-insert", "data": {"id": 1}}"#).unwrap(),
            vec![put(r#"{"id":1}"#)]
        );
        assert!(maxwell(br#"{"type": "bootstrap-start", "data": {}}"#)
            .unwrap()
            .is_empty());
        assert!(maxwell(br#"{"type": "delete"}"#).is_err());
    }
}
