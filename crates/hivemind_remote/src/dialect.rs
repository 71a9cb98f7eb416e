//! What each server is sent, and how its events are read back.
//!
//! | dialect | endpoint | constrained output |
//! |---|---|---|
//! | `LlamaServer` | `/completion` (the prompt's exact text) | `grammar` (the batch's GBNF), `cache_prompt`, `id_slot` |
//! | `Vllm` | `/v1/completions` | `structured_outputs: {grammar}` |
//! | `Sglang` | `/v1/completions` | `ebnf` |
//! | `Ollama` | `/v1/chat/completions` | `response_format` with a JSON schema |
//! | `OpenAi` | `/v1/chat/completions` | `response_format` with a strict JSON schema |
//!
//! Whatever the server promises, every answer still goes through the core stream parser and
//! the registry's validation, exactly as the local model's does.

use hivemind_core::action::{ActionRegistry, ArgKind};
use hivemind_core::backend::{Batch, BatchAgent, stream_prompt_text};
use hivemind_core::config::{Dialect, IntentStyle, RemoteConfig, Sampling};
use hivemind_core::plan::OutputFormat;
use hivemind_core::prompt::{ChatTemplate, PromptText};
use hivemind_core::snapshot::estimate_tokens;
use serde_json::{Value, json};

/// One HTTP request: where it goes and what it carries.
#[derive(Clone, Debug, PartialEq)]
pub struct RemoteRequest {
    /// The path after the base URL.
    pub path: &'static str,
    /// The JSON body.
    pub body: Value,
    /// About how many prompt tokens it carries, until the server says.
    pub prompt_tokens: u64,
}

/// What the request of one stream needs beyond the batch.
#[derive(Clone, Debug)]
pub struct RequestShape<'a> {
    /// The server's settings.
    pub remote: &'a RemoteConfig,
    /// The most tokens one agent's answer may take.
    pub max_tokens: u32,
    /// How guided answers name their intent.
    pub intents: IntentStyle,
    /// The chat format the prompt was written in, to split it into messages for a chat
    /// endpoint.
    pub chat: &'a ChatTemplate,
    /// llama-server slots to spread personas over; 0 lets the server choose.
    pub slots: usize,
}

/// Whether `dialect` can answer a shared prompt (several agents' objects in one stream): only
/// those that take a grammar can.
pub fn takes_shared_prompt(dialect: Dialect) -> bool {
    matches!(
        dialect,
        Dialect::LlamaServer | Dialect::Vllm | Dialect::Sglang
    )
}

/// The request for `stream` of `batch`, or `None` for a stream the batch does not have.
pub fn request(shape: &RequestShape<'_>, batch: &Batch, stream: usize) -> Option<RemoteRequest> {
    let prompt = defuse(&stream_prompt_text(batch, stream)?, shape.chat);
    let (grammar, agents, persona): (&str, usize, &str) = match &batch.shared {
        Some(shared) => (&shared.grammar, batch.agents.len(), "ensemble"),
        None => {
            let agent = batch.agents.get(stream)?;
            (&agent.grammar, 1, &agent.persona)
        }
    };
    let max_tokens = shape
        .max_tokens
        .saturating_mul(u32::try_from(agents).unwrap_or(u32::MAX));
    let prompt_tokens = estimate_tokens(&prompt) as u64;
    let remote = shape.remote;
    let mut body = serde_json::Map::new();
    if !remote.model.is_empty() {
        body.insert("model".into(), json!(remote.model));
    }
    body.insert("stream".into(), json!(true));
    body.insert("seed".into(), json!(batch.seed & 0x7fff_ffff));
    sampling(&mut body, batch.sampling, remote.dialect);
    let path = match remote.dialect {
        Dialect::LlamaServer => {
            body.insert("prompt".into(), json!(prompt));
            body.insert("n_predict".into(), json!(max_tokens));
            body.insert("grammar".into(), json!(grammar));
            body.insert("cache_prompt".into(), json!(true));
            if shape.slots > 0 {
                let slot = fnv(persona.as_bytes()) % shape.slots as u64;
                body.insert("id_slot".into(), json!(slot));
            }
            "/completion"
        }
        Dialect::Vllm | Dialect::Sglang => {
            body.insert("prompt".into(), json!(prompt));
            body.insert("max_tokens".into(), json!(max_tokens));
            body.insert("stream_options".into(), json!({"include_usage": true}));
            if remote.dialect == Dialect::Vllm {
                body.insert("structured_outputs".into(), json!({"grammar": grammar}));
            } else {
                body.insert("ebnf".into(), json!(grammar));
            }
            "/v1/completions"
        }
        Dialect::Ollama | Dialect::OpenAi => {
            // One agent per request: a schema describes one object.
            let agent = batch.agents.get(stream)?;
            let strict = remote.dialect == Dialect::OpenAi;
            body.insert("messages".into(), messages(&prompt, shape.chat));
            body.insert("max_tokens".into(), json!(max_tokens));
            if strict {
                body.insert("max_completion_tokens".into(), json!(max_tokens));
            }
            body.insert("stream_options".into(), json!({"include_usage": true}));
            let schema = answer_schema(batch.format, agent, &batch.registry, shape.intents);
            body.insert(
                "response_format".into(),
                json!({
                    "type": "json_schema",
                    "json_schema": {"name": "answer", "schema": schema, "strict": strict},
                }),
            );
            "/v1/chat/completions"
        }
    };
    Some(RemoteRequest {
        path,
        body: Value::Object(body),
        prompt_tokens,
    })
}

/// The sampling fields: OpenAI refuses the ones it does not know, the others take them all.
fn sampling(body: &mut serde_json::Map<String, Value>, sampling: Sampling, dialect: Dialect) {
    match sampling {
        Sampling::Greedy => {
            body.insert("temperature".into(), json!(0.0));
        }
        Sampling::Random {
            temperature,
            top_k,
            top_p,
            min_p,
            repeat_penalty,
        } => {
            body.insert("temperature".into(), json!(decimal(temperature)));
            body.insert("top_p".into(), json!(decimal(top_p)));
            if dialect == Dialect::OpenAi {
                return;
            }
            body.insert("top_k".into(), json!(top_k));
            body.insert("min_p".into(), json!(decimal(min_p)));
            if repeat_penalty > 1.0 {
                body.insert("repeat_penalty".into(), json!(decimal(repeat_penalty)));
            }
        }
    }
}

/// A setting as it was written (0.8, not 0.800000011920929).
fn decimal(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(f64::from(x))
}

fn fnv(bytes: &[u8]) -> u64 {
    let mut h = hivemind_core::prompt::Fnv64::new();
    h.write(bytes);
    h.finish()
}

/// The prompt as the text a server reads, special tokens and all.
///
/// A server parses special tokens anywhere in a text prompt, so a delimiter of `chat` written outside the template's
/// ranges (a modder's rule, say) is broken with a look-alike `‹` for its `<`: it stays
/// readable, and can neither end a turn nor split the chat messages.
pub fn defuse(prompt: &PromptText, chat: &ChatTemplate) -> String {
    let delimiters = chat_tags(chat);
    let mut out = String::with_capacity(prompt.as_str().len());
    for (piece, template) in prompt.pieces() {
        if template {
            out.push_str(piece);
            continue;
        }
        let mut piece = piece.to_owned();
        for tag in &delimiters {
            if piece.contains(tag.as_str()) {
                piece = piece.replace(tag.as_str(), &tag.replacen('<', "‹", 1));
            }
        }
        out.push_str(&piece);
    }
    out
}

/// The tags in `chat`'s delimiters (`<|im_start|>`, `<end_of_turn>` …): each `<` to the `>`
/// after it.
fn chat_tags(chat: &ChatTemplate) -> Vec<String> {
    let mut tags: Vec<String> = Vec::new();
    let delimiters = [
        &chat.system_open,
        &chat.system_close,
        &chat.user_open,
        &chat.user_close,
        &chat.assistant_open,
    ];
    for delimiter in delimiters {
        let mut rest = delimiter.as_str();
        while let Some(open) = rest.find('<') {
            let Some(len) = rest[open..].find('>') else {
                break;
            };
            let tag = &rest[open..=open + len];
            if !tags.iter().any(|t| t == tag) {
                tags.push(tag.to_owned());
            }
            rest = &rest[open + len + 1..];
        }
    }
    tags
}

/// A prompt written in `chat`'s format, as chat messages: each system, user and assistant turn
/// one message, the open assistant turn at the end (where the answer begins) left for the
/// server to add.
pub fn messages(prompt: &str, chat: &ChatTemplate) -> Value {
    let opens = [
        (
            "system",
            chat.system_open.as_str(),
            chat.system_close.as_str(),
        ),
        ("user", chat.user_open.as_str(), chat.user_close.as_str()),
        // An assistant turn closes as a user turn does.
        (
            "assistant",
            chat.assistant_open.as_str(),
            chat.user_close.as_str(),
        ),
    ];
    let mut out = Vec::new();
    let mut rest = prompt;
    while !rest.is_empty() {
        let next = opens
            .iter()
            .filter(|(_, open, _)| !open.is_empty())
            .filter_map(|turn| rest.find(turn.1).map(|at| (at, turn)))
            .min_by_key(|(at, _)| *at);
        let Some((at, (role, open, close))) = next else {
            push_message(&mut out, "user", rest);
            break;
        };
        push_message(&mut out, "user", &rest[..at]);
        let body = &rest[at + open.len()..];
        let end = (!close.is_empty()).then(|| body.find(close)).flatten();
        match end {
            Some(end) => {
                push_message(&mut out, role, &body[..end]);
                rest = &body[end + close.len()..];
            }
            None => {
                // The open assistant turn: the answer goes there.
                if *role != "assistant" {
                    push_message(&mut out, role, body);
                }
                break;
            }
        }
    }
    Value::Array(out)
}

fn push_message(out: &mut Vec<Value>, role: &str, text: &str) {
    let text = text.trim_matches('\n');
    if !text.trim().is_empty() {
        out.push(json!({"role": role, "content": text}));
    }
}

/// A JSON schema of one agent's answer in `format`: the same shape its GBNF describes, with
/// targets bound to its snapshot.
pub fn answer_schema(
    format: OutputFormat,
    agent: &BatchAgent,
    registry: &ActionRegistry,
    intents: IntentStyle,
) -> Value {
    let id = json!({"type": "integer", "enum": [agent.agent.0]});
    let say = json!({"type": "string"});
    match format {
        OutputFormat::Line => object(&[("agent", id), ("say", say)]),
        OutputFormat::Guided => {
            let options = agent.task.options();
            let intent = match intents {
                IntentStyle::Name => {
                    let labels: Vec<&str> = options.iter().map(|o| o.label.as_str()).collect();
                    json!({"type": "string", "enum": labels})
                }
                IntentStyle::Number => {
                    let numbers: Vec<usize> = (1..=options.len()).collect();
                    json!({"type": "integer", "enum": numbers})
                }
            };
            object(&[("agent", id), ("intent", intent), ("say", say)])
        }
        OutputFormat::FreePlan => {
            let steps: Vec<Value> = registry
                .verbs
                .iter()
                .filter(|v| v.is_available(&agent.snapshot))
                .map(|verb| {
                    let mut fields = vec![("act", json!({"type": "string", "enum": [verb.name]}))];
                    for arg in &verb.args {
                        fields.push((arg.name.as_str(), arg_schema(&arg.kind, agent)));
                    }
                    object(&fields)
                })
                .collect();
            let steps = json!({"type": "array", "items": {"anyOf": steps}});
            object(&[("agent", id), ("steps", steps)])
        }
    }
}

fn arg_schema(kind: &ArgKind, agent: &BatchAgent) -> Value {
    let point = json!({
        "type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2,
    });
    match kind {
        ArgKind::Entity { set } => {
            let ids: Vec<u32> = agent.snapshot.entities_in(set).map(|e| e.id.0).collect();
            json!({"type": "integer", "enum": ids})
        }
        ArgKind::Point { .. } | ArgKind::Cell => point,
        ArgKind::Int { min, max } => json!({"type": "integer", "minimum": min, "maximum": max}),
        _ => json!({"type": "string"}),
    }
}

/// A closed object whose every field is required, in this order (the order a strict server
/// writes them in, and the one the stream parser expects).
fn object(fields: &[(&str, Value)]) -> Value {
    let names: Vec<&str> = fields.iter().map(|(n, _)| *n).collect();
    let properties: serde_json::Map<String, Value> = fields
        .iter()
        .map(|(n, v)| ((*n).to_owned(), v.clone()))
        .collect();
    json!({
        "type": "object",
        "properties": properties,
        "required": names,
        "additionalProperties": false,
    })
}

/// One event's worth of a server's answer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decoded {
    /// Answer text it adds.
    pub text: String,
    /// Prompt tokens the server reports having processed, if it does.
    pub prompt_tokens: Option<u64>,
    /// Tokens generated so far, if the server reports them.
    pub generated_tokens: Option<u64>,
    /// The answer is over (llama-server's `stop`, or `[DONE]`).
    pub done: bool,
    /// The server gave a finish reason: the answer is complete, though a usage event and
    /// `[DONE]` may follow.
    pub finished: bool,
}

/// Why an event could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The server reported an error in the stream.
    Server(String),
    /// The event is not what the dialect sends.
    Malformed(String),
}

/// Reads one `data:` payload of `dialect`'s stream.
pub fn decode(dialect: Dialect, data: &str) -> Result<Decoded, DecodeError> {
    let data = data.trim();
    if data == "[DONE]" {
        return Ok(Decoded {
            done: true,
            ..Decoded::default()
        });
    }
    let value: Value = serde_json::from_str(data).map_err(|e| {
        let mut shown: String = data.chars().take(80).collect();
        if shown.len() < data.len() {
            shown.push('…');
        }
        DecodeError::Malformed(format!("{e} in {shown:?}"))
    })?;
    if let Some(error) = value.get("error") {
        let message = error
            .get("message")
            .and_then(Value::as_str)
            .map_or_else(|| error.to_string(), str::to_owned);
        return Err(DecodeError::Server(message));
    }
    let u64_at = |v: &Value, key: &str| v.get(key).and_then(Value::as_u64);
    match dialect {
        Dialect::LlamaServer => {
            let Some(text) = value.get("content").and_then(Value::as_str) else {
                return Err(DecodeError::Malformed("an event without `content`".into()));
            };
            Ok(Decoded {
                text: text.to_owned(),
                prompt_tokens: u64_at(&value, "tokens_evaluated"),
                generated_tokens: u64_at(&value, "tokens_predicted"),
                done: value.get("stop").and_then(Value::as_bool).unwrap_or(false),
                finished: false,
            })
        }
        Dialect::Vllm | Dialect::Sglang | Dialect::Ollama | Dialect::OpenAi => {
            let Some(choices) = value.get("choices").and_then(Value::as_array) else {
                return Err(DecodeError::Malformed("an event without `choices`".into()));
            };
            let mut decoded = Decoded::default();
            if let Some(choice) = choices.first() {
                let text = choice
                    .get("text")
                    .or_else(|| choice.get("delta").and_then(|d| d.get("content")));
                if let Some(text) = text.and_then(Value::as_str) {
                    text.clone_into(&mut decoded.text);
                }
                decoded.finished = choice.get("finish_reason").is_some_and(|r| !r.is_null());
            }
            if let Some(usage) = value.get("usage").filter(|u| u.is_object()) {
                decoded.prompt_tokens = u64_at(usage, "prompt_tokens");
                decoded.generated_tokens = u64_at(usage, "completion_tokens");
            }
            Ok(decoded)
        }
    }
}

#[cfg(test)]
mod tests;
