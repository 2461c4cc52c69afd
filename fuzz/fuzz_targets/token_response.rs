//! A token endpoint's success response, from any bytes and from structured JSON.
//!
//! Properties: nothing panics; an accepted lifetime is between 1 s and a day; an error message never
//! quotes the access token, whatever else is wrong with the response.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

#[derive(Arbitrary, Debug)]
enum Field {
    Missing,
    Null,
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Field {
    fn value(&self) -> Option<Value> {
        match self {
            Field::Missing => None,
            Field::Null => Some(Value::Null),
            Field::Text(s) => Some(json!(s)),
            Field::Int(n) => Some(json!(n)),
            Field::Float(f) => Some(json!(f)),
            Field::Bool(b) => Some(json!(b)),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Input {
    Raw(Vec<u8>),
    Structured {
        token: String,
        token_type: Field,
        expires_in: Field,
        scope: Field,
        extra: Option<(String, String)>,
    },
}

/// The response with its access token replaced by `token`.
fn with_token(doc: &Value, token: &str) -> Vec<u8> {
    let mut doc = doc.clone();
    doc["access_token"] = json!(token);
    serde_json::to_vec(&doc).expect("serialisable")
}

fuzz_target!(|input: Input| {
    let scopes = vec!["consumption:read".to_owned()];
    let (body, doc) = match input {
        Input::Raw(bytes) => {
            let doc = serde_json::from_slice::<Value>(&bytes).ok();
            (bytes, doc)
        }
        Input::Structured {
            token,
            token_type,
            expires_in,
            scope,
            extra,
        } => {
            let mut doc = serde_json::Map::new();
            doc.insert("access_token".into(), json!(token));
            for (name, field) in [
                ("token_type", token_type),
                ("expires_in", expires_in),
                ("scope", scope),
            ] {
                if let Some(v) = field.value() {
                    doc.insert(name.into(), v);
                }
            }
            if let Some((k, v)) = extra {
                doc.entry(k).or_insert(json!(v));
            }
            let doc = Value::Object(doc);
            (serde_json::to_vec(&doc).expect("serialisable"), Some(doc))
        }
    };
    match fapi_host::fuzzing::token_response(&body, &scopes) {
        Ok((_, lifetime, _)) => {
            assert!(
                lifetime.as_secs_f64() >= 1.0 && lifetime.as_secs() <= 86_400,
                "{lifetime:?}"
            );
        }
        Err(message) => {
            let token = doc
                .as_ref()
                .filter(|d| d.is_object())
                .and_then(|d| Some((d, d.get("access_token")?.as_str()?.to_owned())));
            if let Some((doc, token)) = token
                && !token.is_empty()
                && message.contains(&token)
            {
                // A leak, unless the text is there whatever the token is (a field name, say):
                // the same response with another token of the same length gives it too.
                let other: String = token
                    .chars()
                    .map(|c| {
                        if c == '\u{2603}' {
                            '\u{2604}'
                        } else {
                            '\u{2603}'
                        }
                    })
                    .collect();
                let again = fapi_host::fuzzing::token_response(&with_token(doc, &other), &scopes);
                assert!(
                    again.is_err_and(|m| m.contains(&token)),
                    "the token leaked into: {message}"
                );
            }
        }
    }
});
