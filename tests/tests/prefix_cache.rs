//! The prefix cache as clients see it: a request that starts like an earlier one reports the
//! reused prompt tokens as `cached_tokens` (chat completions, legacy completions, Responses),
//! `/metrics` counts queried and hit prompt tokens, and `--no-prefix-cache` turns it off.

use serde_json::{Value, json};
use stellarchat_tests::{DEFAULT_MODEL_NAME, Server, routes};

/// About 150 tokens: two whole 64-token cache blocks and some.
const SYSTEM: &str = "You are a concise assistant for a small bakery in Lyon. The bakery opens at seven in the \
morning and closes at seven in the evening, every day except Monday. It sells baguettes, croissants, pain au \
chocolat, brioche, fruit tarts and a rye loaf baked on Thursdays only. Orders of more than twenty items must be \
placed a day ahead. Payment is by card or cash. The owner is called Camille and has run the shop since 2009. \
Answer questions from customers in one or two short sentences, in English, and never invent products.";

const BLOCK: u64 = 64;

fn chat(question: &str) -> Value {
    json!({
        "model": DEFAULT_MODEL_NAME,
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
        "max_tokens": 8,
        "temperature": 0,
    })
}

async fn post(server: &Server, path: &str, body: &Value) -> Value {
    let (status, body) = server.post_json(path, body).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// `(prompt tokens, cached tokens)` of a chat or legacy completion.
fn usage(body: &Value) -> (u64, u64) {
    let usage = &body["usage"];
    let cached = usage["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or_else(|| panic!("{body}"));
    (usage["prompt_tokens"].as_u64().unwrap(), cached)
}

async fn counters(server: &Server) -> (f64, f64) {
    let queries = server.metric("stellarchat:prefix_cache_queries_tokens_total").await.expect("queries counter");
    let hits = server.metric("stellarchat:prefix_cache_hits_tokens_total").await.expect("hits counter");
    (queries, hits)
}

#[tokio::test]
async fn a_shared_prefix_is_reported_as_cached_tokens_and_counted() {
    let server = Server::default_model(&[]).await;
    let (prompt1, cached1) = usage(&post(&server, routes::CHAT_COMPLETIONS, &chat("When do you open?")).await);
    assert_eq!(cached1, 0, "nothing was cached yet");
    // Another question after the same system prompt: its whole blocks are reused.
    let (prompt2, cached2) = usage(&post(&server, routes::CHAT_COMPLETIONS, &chat("Who owns the shop?")).await);
    assert!(cached2 >= 2 * BLOCK && cached2.is_multiple_of(BLOCK) && cached2 < prompt2, "{cached2} of {prompt2}");

    // Legacy completions of a prompt twice: the second reuses all its whole blocks but the last token's.
    let prompt = format!("{SYSTEM}\n\nQ: Is there rye bread today?\nA:");
    let body = json!({"model": DEFAULT_MODEL_NAME, "prompt": prompt, "max_tokens": 4, "temperature": 0});
    let (prompt3, cached3) = usage(&post(&server, routes::COMPLETIONS, &body).await);
    let (prompt4, cached4) = usage(&post(&server, routes::COMPLETIONS, &body).await);
    assert_eq!(cached3, 0, "a new prompt");
    assert_eq!((prompt4, cached4), (prompt3, (prompt3 - 1) / BLOCK * BLOCK));

    // Responses: the same chat as the first request, as instructions and input.
    let body = json!({
        "model": DEFAULT_MODEL_NAME,
        "instructions": SYSTEM,
        "input": "When do you open?",
        "max_output_tokens": 8,
        "temperature": 0,
    });
    let response = post(&server, routes::RESPONSES, &body).await;
    let cached5 = response["usage"]["input_tokens_details"]["cached_tokens"].as_u64().expect("cached tokens");
    let prompt5 = response["usage"]["input_tokens"].as_u64().unwrap();
    assert!(cached5 >= 2 * BLOCK && cached5.is_multiple_of(BLOCK), "{response}");

    let (queries, hits) = counters(&server).await;
    assert_eq!(queries as u64, prompt1 + prompt2 + prompt3 + prompt4 + prompt5);
    assert_eq!(hits as u64, cached2 + cached4 + cached5);
}

#[tokio::test]
async fn no_prefix_cache_prefills_everything() {
    let server = Server::default_model(&["--no-prefix-cache"]).await;
    for _ in 0..2 {
        let (_, cached) = usage(&post(&server, routes::CHAT_COMPLETIONS, &chat("When do you open?")).await);
        assert_eq!(cached, 0);
    }
    assert_eq!(counters(&server).await, (0.0, 0.0));
}
