//! Legacy `/v1/completions` for evaluation tools, against the real binary: `echo` (the prompt
//! before the completion, and with `logprobs` the prompt tokens' logprobs, as
//! lm-evaluation-harness reads them), `max_tokens: 0` scoring, and `suffix`
//! (fill-in-the-middle on a copy of the default model whose vocabulary has FIM tokens; a 400
//! on the default model, which has none).

use std::path::PathBuf;

use serde_json::{Value, json};
use stellarchat_model::gguf::{GgufFile, GgufWriter, MetadataValue, ValueType};
use stellarchat_tests::{DEFAULT_MODEL_NAME, Server, client, default_model, routes, sse_json};

const PROMPT: &str = "The capital of France is";

async fn post(server: &Server, body: &Value) -> (u16, Value) {
    server.post_json(routes::COMPLETIONS, body).await
}

async fn complete(server: &Server, body: Value) -> Value {
    let (status, out) = post(server, &body).await;
    assert_eq!(status, 200, "{body} → {out}");
    out
}

fn request(model: &str, extra: Value) -> Value {
    let mut body = json!({"model": model, "prompt": PROMPT, "temperature": 0});
    if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
        b.extend(e);
    }
    body
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().expect("an array").iter().map(|s| s.as_str().expect("a string").to_string()).collect()
}

/// The parallel arrays have one entry per token, the tokens spell the text, and each
/// offset is where its token starts in the text (in characters).
fn check_logprobs_shape(choice: &Value) {
    let lp = &choice["logprobs"];
    let tokens = strings(&lp["tokens"]);
    let n = tokens.len();
    for key in ["token_logprobs", "top_logprobs", "text_offset"] {
        assert_eq!(lp[key].as_array().unwrap().len(), n, "{key}: {lp}");
    }
    assert_eq!(tokens.concat(), choice["text"].as_str().unwrap());
    let mut at = 0;
    for (i, token) in tokens.iter().enumerate() {
        assert_eq!(lp["text_offset"][i], at, "offset of token {i}");
        at += token.chars().count() as u64;
    }
}

#[tokio::test]
async fn echo_with_logprobs_scores_the_prompt() {
    let server = Server::default_model(&[]).await;
    let m = DEFAULT_MODEL_NAME;
    let (_, tokenized) = {
        let res = client().post(server.url(routes::TOKENIZE)).json(&json!({"prompt": PROMPT})).send().await.unwrap();
        (res.status(), res.json::<Value>().await.unwrap())
    };
    let prompt_ids: Vec<u64> = tokenized["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap()).collect();
    let p = prompt_ids.len();

    // echo + logprobs: prompt then completion, in text and in the arrays.
    let plain = complete(&server, request(m, json!({"max_tokens": 5, "logprobs": 2}))).await;
    let echoed = complete(&server, request(m, json!({"max_tokens": 5, "logprobs": 2, "echo": true}))).await;
    let (plain, choice) = (&plain["choices"][0], &echoed["choices"][0]);
    assert_eq!(choice["text"], format!("{PROMPT}{}", plain["text"].as_str().unwrap()));
    check_logprobs_shape(choice);
    let lp = &choice["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), p + 5);
    assert_eq!(
        (&lp["token_logprobs"][0], &lp["top_logprobs"][0]),
        (&Value::Null, &Value::Null),
        "the first token has no prefix"
    );
    for i in 1..p {
        let logprob = lp["token_logprobs"][i].as_f64().expect("a prompt token's logprob");
        assert!(logprob <= 0.0, "{logprob}");
        assert_eq!(lp["top_logprobs"][i].as_object().unwrap().len(), 2, "{}", lp["top_logprobs"][i]);
    }
    // The generated part is exactly a normal completion's.
    assert_eq!(strings(&lp["tokens"])[p..], strings(&plain["logprobs"]["tokens"]));
    for i in 0..5 {
        let (a, b) =
            (lp["token_logprobs"][p + i].as_f64().unwrap(), plain["logprobs"]["token_logprobs"][i].as_f64().unwrap());
        assert!((a - b).abs() < 1e-4, "token {i}: {a} vs {b}");
    }
    assert_eq!(echoed["usage"]["prompt_tokens"], p as u64);

    // max_tokens 0 with echo: only the prompt, scored (lm-evaluation-harness's loglikelihood).
    let scored = complete(&server, request(m, json!({"max_tokens": 0, "logprobs": 1, "echo": true}))).await;
    let choice = &scored["choices"][0];
    assert_eq!(choice["text"], PROMPT);
    check_logprobs_shape(choice);
    assert_eq!(choice["logprobs"]["tokens"].as_array().unwrap().len(), p);
    assert_eq!(choice["finish_reason"], "length");
    assert_eq!(
        (scored["usage"]["prompt_tokens"].as_u64(), scored["usage"]["completion_tokens"].as_u64()),
        (Some(p as u64), Some(0))
    );
    // The same prompt logprobs with and without generation.
    for i in 1..p {
        let (a, b) =
            (choice["logprobs"]["token_logprobs"][i].as_f64().unwrap(), lp["token_logprobs"][i].as_f64().unwrap());
        assert!((a - b).abs() < 1e-4, "prompt token {i}: {a} vs {b}");
    }
    let text_only = complete(&server, request(m, json!({"max_tokens": 0, "echo": true}))).await;
    assert_eq!(
        (&text_only["choices"][0]["text"], &text_only["choices"][0]["logprobs"]),
        (&json!(PROMPT), &Value::Null)
    );

    // Scoring a prompt token equals generating it: the greedy next token, appended to the
    // prompt (as ids) and scored, has the logprob decoding gave it.
    let next =
        complete(&server, json!({"model": m, "prompt": prompt_ids, "max_tokens": 1, "logprobs": 1, "temperature": 0}))
            .await;
    let generated = next["choices"][0]["logprobs"]["token_logprobs"][0].as_f64().unwrap();
    let next_token = next["choices"][0]["logprobs"]["tokens"][0].as_str().unwrap().to_string();
    let (_, ids) = {
        let body = json!({"prompt": format!("{PROMPT}{next_token}")});
        let res = client().post(server.url(routes::TOKENIZE)).json(&body).send().await.unwrap();
        (res.status(), res.json::<Value>().await.unwrap())
    };
    let extended: Vec<u64> = ids["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap()).collect();
    assert_eq!(extended[..p], prompt_ids[..], "the next token does not merge with the prompt's last one");
    let rescored =
        complete(&server, json!({"model": m, "prompt": extended, "max_tokens": 0, "logprobs": 1, "echo": true})).await;
    let last = rescored["choices"][0]["logprobs"]["token_logprobs"][p].as_f64().unwrap();
    assert!((last - generated).abs() < 1e-3, "scored {last} vs generated {generated}");
    assert_eq!(rescored["choices"][0]["text"], format!("{PROMPT}{next_token}"), "token prompts echo their text");

    // Streamed: the echo chunk first (with the prompt's logprobs), then the same text.
    let mut body = request(m, json!({"max_tokens": 5, "logprobs": 1, "echo": true, "stream": true}));
    let text = client().post(server.url(routes::COMPLETIONS)).json(&body).send().await.unwrap().text().await.unwrap();
    let chunks = sse_json(&text);
    assert_eq!(chunks[0]["choices"][0]["text"], PROMPT);
    assert_eq!(chunks[0]["choices"][0]["logprobs"]["tokens"].as_array().unwrap().len(), p);
    assert_eq!(chunks[0]["choices"][0]["logprobs"]["token_logprobs"][0], Value::Null);
    let joined: String = chunks.iter().filter_map(|c| c["choices"][0]["text"].as_str()).collect();
    assert_eq!(joined, echoed["choices"][0]["text"].as_str().unwrap());
    let offsets: Vec<u64> = chunks
        .iter()
        .flat_map(|c| c["choices"][0]["logprobs"]["text_offset"].as_array().cloned().unwrap_or_default())
        .map(|o| o.as_u64().unwrap())
        .collect();
    assert_eq!(
        offsets,
        echoed["choices"][0]["logprobs"]["text_offset"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o.as_u64().unwrap())
            .collect::<Vec<_>>()
    );

    // What is refused, by name.
    body = request(m, json!({"max_tokens": 0}));
    let (status, e) = post(&server, &body).await;
    assert_eq!((status, &e["error"]["param"]), (400, &json!("max_tokens")), "max_tokens 0 needs echo: {e}");
    let (status, e) = post(&server, &request(m, json!({"suffix": " and that is all."}))).await;
    assert_eq!(
        (status, &e["error"]["param"], &e["error"]["code"]),
        (400, &json!("suffix"), &json!("unsupported_parameter")),
        "{e}"
    );
    assert!(e["error"]["message"].as_str().unwrap().contains("fill-in-the-middle"), "{e}");
    let (status, e) = post(&server, &request(m, json!({"suffix": "x", "echo": true}))).await;
    assert_eq!((status, &e["error"]["param"]), (400, &json!("suffix")), "{e}");
}

/// A copy of the default model whose vocabulary spells three unused control tokens as
/// StarCoder's FIM tokens, under the target directory; removed when dropped.
struct FimModel(PathBuf);

impl FimModel {
    fn new() -> FimModel {
        let file = GgufFile::open(default_model()).expect("open the default model");
        let mut writer = GgufWriter::new();
        writer.copy_metadata(&file.metadata, |key| key != "tokenizer.ggml.tokens").expect("copy metadata");
        let mut tokens = file.metadata.opt_array("tokenizer.ggml.tokens").unwrap().unwrap().to_vec();
        // `<jupyter_code>`, `<jupyter_output>`, `<jupyter_script>`: control tokens a chat never uses.
        for (id, name) in [(13, "<fim_prefix>"), (14, "<fim_suffix>"), (15, "<fim_middle>")] {
            assert!(matches!(&tokens[id], MetadataValue::String(s) if s.starts_with("<jupyter")), "{:?}", tokens[id]);
            tokens[id] = MetadataValue::String(name.into());
        }
        writer.add_typed_array("tokenizer.ggml.tokens", ValueType::String, tokens).expect("tokens");
        for info in file.tensors() {
            let bytes = file.tensor_bytes(info).expect("tensor bytes").to_vec();
            writer.add_tensor(&info.name, &info.dims, info.ggml_type, bytes).expect("copy a tensor");
        }
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("fim-{}.gguf", std::process::id()));
        std::fs::write(&path, writer.to_bytes()).expect("write the model");
        FimModel(path)
    }
}

impl Drop for FimModel {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test]
async fn suffix_fills_in_the_middle_where_the_vocabulary_can() {
    let model = FimModel::new();
    let server = Server::start(&["--model", model.0.to_str().unwrap(), "--served-model-name", "fim"]).await;
    server.wait_ready().await;
    let (prefix, suffix) = ("def add(a, b):\n    return", "\n\nprint(add(1, 2))\n");
    let fim = complete(
        &server,
        json!({"model": "fim", "prompt": prefix, "suffix": suffix, "max_tokens": 8, "temperature": 0}),
    )
    .await;
    // The same prompt written out with the FIM tokens gives the same tokens and text.
    let spelled = format!("<fim_prefix>{prefix}<fim_suffix>{suffix}<fim_middle>");
    let raw = complete(&server, json!({"model": "fim", "prompt": spelled, "max_tokens": 8, "temperature": 0})).await;
    assert_eq!(fim["usage"]["prompt_tokens"], raw["usage"]["prompt_tokens"]);
    assert_eq!(fim["choices"][0]["text"], raw["choices"][0]["text"]);
    let res = client().post(server.url(routes::TOKENIZE)).json(&json!({"prompt": spelled})).send().await.unwrap();
    let tokens: Value = res.json().await.unwrap();
    assert_eq!(tokens["tokens"][0], 13, "<fim_prefix> is one token: {tokens}");
    assert_eq!(fim["usage"]["prompt_tokens"], tokens["count"]);
    // Without a suffix the prompt is plain: fewer tokens.
    let plain = complete(&server, json!({"model": "fim", "prompt": prefix, "max_tokens": 1, "temperature": 0})).await;
    assert!(plain["usage"]["prompt_tokens"].as_u64() < fim["usage"]["prompt_tokens"].as_u64());
}
