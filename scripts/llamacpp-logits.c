// llama.cpp's logits for a GGUF model, as JSON: our reference for teacher-forced logits and
// greedy continuations. Build and run it through the peer script (never by CI):
//
//   scripts/llamacpp-peer.sh logits [--parse-special] [--kv f32|f16] [--flash-attn off|on|auto]
//                                   MODEL K N PROMPT [PROMPT..]
//
// For each PROMPT: llama.cpp's tokenization (BOS prepended when the model's vocab asks for it,
// llama_vocab_get_add_bos; no EOS; special tokens NOT parsed unless --parse-special), one
// teacher-forced batch with logits at every position (top K [id, logit] pairs per position,
// largest first, ties to the lower id), then N greedy tokens (argmax of the raw logits, no
// sampling, no stop at end-of-generation tokens). Output on stdout:
//
//   {"model": "<file name>", "kv_cache": "f32", "flash_attn": "off", "prompts": [{"prompt": "...", "ids": [...],
//    "top": [[[id, logit], ..K], ..one per position], "greedy": [..N ids]}, ..]}
//
// The KV cache is f32 and flash attention off by default (llama.cpp's own defaults are an f16
// cache and flash attention auto: --kv f16 --flash-attn auto), so that on F32 weights the only
// approximation is llama.cpp's f32 arithmetic: SmolLM2-135M dequantized to F32 comes within
// 7e-5 of the float64 reference logits of tests/golden/smollm2-135m-instruct-q4_1.json.
// Quantized weights still quantize activations in llama.cpp's matrix products (Q4_1: Q8_1).
// Only llama.cpp's warnings and errors reach stderr.
#include "llama.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static enum ggml_log_level last_level = GGML_LOG_LEVEL_NONE;

static void log_cb(enum ggml_log_level level, const char *text, void *user) {
    (void)user;
    if (level != GGML_LOG_LEVEL_CONT) last_level = level;
    if (last_level >= GGML_LOG_LEVEL_WARN) fputs(text, stderr);
}

static void die(const char *msg) {
    fprintf(stderr, "llamacpp-logits: %s\n", msg);
    exit(1);
}

static void usage(void) {
    fprintf(stderr, "usage: llamacpp-logits [--parse-special] [--kv f32|f16] [--flash-attn off|on|auto] MODEL K N PROMPT [PROMPT..]\n");
    exit(2);
}

static void json_string(const char *s) {
    putchar('"');
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        switch (*p) {
            case '"': fputs("\\\"", stdout); break;
            case '\\': fputs("\\\\", stdout); break;
            case '\n': fputs("\\n", stdout); break;
            case '\r': fputs("\\r", stdout); break;
            case '\t': fputs("\\t", stdout); break;
            default:
                if (*p < 0x20) printf("\\u%04x", *p);
                else putchar(*p);  // UTF-8 passes through
        }
    }
    putchar('"');
}

static void json_float(float v) {
    if (isfinite(v)) printf("%.6f", v);
    else fputs("null", stdout);  // not valid JSON otherwise; a reader must treat it as a failure
}

// Indices of the k largest values (descending; ties to the lower index; NaN never selected).
static int top_k(const float *x, int n, int k, int *out) {
    int m = 0;
    for (int i = 0; i < n; i++) {
        float v = x[i];
        if (!(v == v)) continue;
        if (m == k && !(v > x[out[m - 1]])) continue;
        int j = m < k ? m++ : m - 1;
        while (j > 0 && v > x[out[j - 1]]) { out[j] = out[j - 1]; j--; }
        out[j] = i;
    }
    return m;
}

static int tokenize(const struct llama_vocab *vocab, const char *text, int parse_special, llama_token **out) {
    int len = (int)strlen(text);
    int bos = llama_vocab_get_add_bos(vocab) ? 1 : 0;
    int cap = len + 8;
    llama_token *ids = malloc(sizeof(llama_token) * (size_t)(cap + bos));
    int n = llama_tokenize(vocab, text, len, ids + bos, cap, false, parse_special != 0);
    if (n < 0) {
        cap = -n;
        ids = realloc(ids, sizeof(llama_token) * (size_t)(cap + bos));
        n = llama_tokenize(vocab, text, len, ids + bos, cap, false, parse_special != 0);
        if (n < 0) die("tokenization failed");
    }
    if (bos) ids[0] = llama_vocab_bos(vocab);
    *out = ids;
    return n + bos;
}

static void batch_set(struct llama_batch *b, const llama_token *ids, int n, int pos0, int all_logits) {
    b->n_tokens = n;
    for (int i = 0; i < n; i++) {
        b->token[i] = ids[i];
        b->pos[i] = pos0 + i;
        b->n_seq_id[i] = 1;
        b->seq_id[i][0] = 0;
        b->logits[i] = all_logits || i == n - 1;
    }
}

int main(int argc, char **argv) {
    int parse_special = 0;
    enum ggml_type kv_type = GGML_TYPE_F32;
    const char *kv_name = "f32";
    enum llama_flash_attn_type fa = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    const char *fa_name = "off";
    int a = 1;
    while (a < argc && strncmp(argv[a], "--", 2) == 0) {
        if (strcmp(argv[a], "--parse-special") == 0) { parse_special = 1; a++; }
        else if (strcmp(argv[a], "--kv") == 0 && a + 1 < argc) {
            kv_name = argv[a + 1];
            if (strcmp(kv_name, "f32") == 0) kv_type = GGML_TYPE_F32;
            else if (strcmp(kv_name, "f16") == 0) kv_type = GGML_TYPE_F16;
            else usage();
            a += 2;
        } else if (strcmp(argv[a], "--flash-attn") == 0 && a + 1 < argc) {
            fa_name = argv[a + 1];
            if (strcmp(argv[a + 1], "off") == 0) fa = LLAMA_FLASH_ATTN_TYPE_DISABLED;
            else if (strcmp(argv[a + 1], "on") == 0) fa = LLAMA_FLASH_ATTN_TYPE_ENABLED;
            else if (strcmp(argv[a + 1], "auto") == 0) fa = LLAMA_FLASH_ATTN_TYPE_AUTO;
            else usage();
            a += 2;
        } else usage();
    }
    if (argc - a < 4) usage();
    const char *path = argv[a];
    char *end;
    long k = strtol(argv[a + 1], &end, 10);
    if (*end || k < 1) die("K must be a positive integer");
    long n_gen = strtol(argv[a + 2], &end, 10);
    if (*end || n_gen < 0) die("N must be a non-negative integer");
    char **prompts = argv + a + 3;
    int n_prompts = argc - a - 3;

    llama_log_set(log_cb, NULL);
    llama_backend_init();

    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    struct llama_model *model = llama_model_load_from_file(path, mp);
    if (!model) die("failed to load the model (llama.cpp's error is above)");
    const struct llama_vocab *vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);

    llama_token **ids = malloc(sizeof(llama_token *) * (size_t)n_prompts);
    int *n_ids = malloc(sizeof(int) * (size_t)n_prompts);
    int longest = 1;
    for (int p = 0; p < n_prompts; p++) {
        n_ids[p] = tokenize(vocab, prompts[p], parse_special, &ids[p]);
        if (n_ids[p] == 0) die("a prompt has no tokens");
        if (n_ids[p] > longest) longest = n_ids[p];
    }

    int threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (threads < 1) threads = 1;
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t)(longest + n_gen + 1);
    cp.n_batch = (uint32_t)longest;
    cp.n_ubatch = (uint32_t)longest;  // one micro-batch per prompt
    cp.n_seq_max = 1;
    cp.n_threads = threads;
    cp.n_threads_batch = threads;
    cp.type_k = kv_type;
    cp.type_v = kv_type;
    cp.flash_attn_type = fa;
    cp.no_perf = true;
    struct llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) die("failed to create the context (llama.cpp's error is above)");

    struct llama_batch batch = llama_batch_init(longest, 0, 1);
    int *top = malloc(sizeof(int) * (size_t)k);

    printf("{\"model\": ");
    const char *base = strrchr(path, '/');
    json_string(base ? base + 1 : path);
    printf(", \"kv_cache\": ");
    json_string(kv_name);
    printf(", \"flash_attn\": ");
    json_string(fa_name);
    printf(", \"prompts\": [");
    for (int p = 0; p < n_prompts; p++) {
        llama_memory_clear(llama_get_memory(ctx), true);
        batch_set(&batch, ids[p], n_ids[p], 0, 1);
        int rc = llama_decode(ctx, batch);
        if (rc != 0) { fprintf(stderr, "llamacpp-logits: llama_decode returned %d\n", rc); return 1; }

        printf("%s\n {\"prompt\": ", p ? "," : "");
        json_string(prompts[p]);
        printf(", \"ids\": [");
        for (int i = 0; i < n_ids[p]; i++) printf("%s%d", i ? ", " : "", ids[p][i]);
        printf("],\n  \"top\": [");
        llama_token next = 0;
        for (int i = 0; i < n_ids[p]; i++) {
            const float *lg = llama_get_logits_ith(ctx, i);
            if (!lg) die("no logits for a position");
            int m = top_k(lg, n_vocab, (int)k, top);
            if (m == 0) die("all logits are NaN");
            printf("%s[", i ? ",\n   " : "");
            for (int j = 0; j < m; j++) {
                printf("%s[%d, ", j ? ", " : "", top[j]);
                json_float(lg[top[j]]);
                putchar(']');
            }
            putchar(']');
            next = top[0];
        }
        printf("],\n  \"greedy\": [");
        int pos = n_ids[p];
        for (long g = 0; g < n_gen; g++) {
            printf("%s%d", g ? ", " : "", next);
            if (g + 1 == n_gen) break;
            batch_set(&batch, &next, 1, pos++, 1);
            rc = llama_decode(ctx, batch);
            if (rc != 0) { fprintf(stderr, "llamacpp-logits: llama_decode returned %d\n", rc); return 1; }
            const float *lg = llama_get_logits_ith(ctx, 0);
            if (!lg || top_k(lg, n_vocab, 1, top) == 0) die("no logits while generating");
            next = top[0];
        }
        printf("]}");
        fflush(stdout);
    }
    printf("\n]}\n");

    free(top);
    llama_batch_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
