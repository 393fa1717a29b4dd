//! RFC 8785 JSON canonicalization (JCS), the form the KBS hashes to bind evidence to a
//! session: object members sorted by the UTF-16 code units of their names, no
//! whitespace, strings escaped as ECMAScript's `JSON.stringify` does.
//!
//! Numbers: integers are written as integers; other numbers use serde_json's shortest
//! round-trip form, which matches ECMAScript's for the values JSON documents usually hold
//! but not for every exponent form. The KBS runtime data contains strings only.

use serde_json::Value;

/// The canonical bytes of `value`.
pub fn to_vec(value: &Value) -> Vec<u8> {
    let mut out = String::new();
    write_value(value, &mut out);
    out.into_bytes()
}

fn write_value(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
            out.push('{');
            for (i, (name, item)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(name, out);
                out.push(':');
                write_value(item, out);
            }
            out.push('}');
        }
    }
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn sorted_compact_escaped() {
        let value = json!({
            "tee-pubkey": {"kty": "EC", "crv": "P-256", "alg": "ECDH-ES+A256KW", "x": "X", "y": "Y"},
            "nonce": "N",
            "additional-evidence": "",
        });
        // PROTOCOLS.md §4.4's example.
        assert_eq!(
            String::from_utf8(to_vec(&value)).unwrap(),
            r#"{"additional-evidence":"","nonce":"N","tee-pubkey":{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":"X","y":"Y"}}"#
        );
        let tricky =
            json!({"b": [1, -2, true, null], "a\u{1}": "q\"\\\n\u{7f}é", "\u{e9}": 0, "z": 1});
        assert_eq!(
            String::from_utf8(to_vec(&tricky)).unwrap(),
            "{\"a\\u0001\":\"q\\\"\\\\\\n\u{7f}é\",\"b\":[1,-2,true,null],\"z\":1,\"é\":0}"
        );
        // UTF-16 order, not UTF-8 order: U+FF61 sorts after U+1F600 in UTF-8 but before it
        // in UTF-16 (surrogates are 0xD8xx).
        let order = json!({"\u{ff61}": 1, "\u{1f600}": 2});
        assert_eq!(
            String::from_utf8(to_vec(&order)).unwrap(),
            "{\"\u{1f600}\":2,\"\u{ff61}\":1}"
        );
    }
}
