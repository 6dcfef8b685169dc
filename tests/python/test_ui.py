"""The chat page in a real browser: headless Chromium from Debian (/usr/bin/chromium) driven by
Playwright, against the session's server (default model, with an API key). Covers the key
prompt, a streamed answer with its TTFT and tokens/s, stopping mid-answer (Esc), finding the
conversation after a reload, the model picker (on a second server with two models, switching
loads the chosen one), and markup in messages rendered inert under the page's CSP. Takes desktop and phone
screenshots (into docs/ with STELLARCHAT_UPDATE_SCREENSHOTS=1).
"""

import json
import os
import pathlib
import urllib.request

import pytest

from conftest import API_KEY, MODEL, MODEL_FILE, ROOT, serve

CHROMIUM = os.environ.get("STELLARCHAT_CHROMIUM", "/usr/bin/chromium")

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (just venv)")
if not pathlib.Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium", allow_module_level=True)

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        # --no-sandbox: CI runs as root, where Chromium's sandbox cannot start.
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def context(browser):
    ctx = browser.new_context(viewport=DESKTOP)
    ctx.set_default_timeout(TIMEOUT_MS)
    yield ctx
    ctx.close()


def open_chat(context, server, page=None):
    """The page, past the API-key prompt (the server runs with --api-key)."""
    page = page or context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server + "/")
    page.wait_for_selector("#key-dialog:not([hidden])")
    page.fill("#key-input", API_KEY)
    page.click("#key-form button[type=submit]")
    page.wait_for_selector("#key-dialog", state="hidden")
    page.wait_for_function("() => document.getElementById('model').options.length > 0")
    page.errors = errors
    return page


def set_max_tokens(page, n):
    page.click("#settings-toggle")
    page.fill("#max-tokens", str(n))
    page.dispatch_event("#max-tokens", "change")
    page.click("#settings-toggle")


def send(page, text):
    page.fill("#input", text)
    page.press("#input", "Enter")


LAST_ANSWER = ".msg.assistant:last-child .content"


def test_key_prompt_refuses_a_wrong_key(context, server):
    page = context.new_page()
    page.goto(server + "/")
    page.wait_for_selector("#key-dialog:not([hidden])")
    page.fill("#key-input", "sk-wrong")
    page.click("#key-form button[type=submit]")
    page.wait_for_selector("#key-error:not([hidden])")
    assert page.is_visible("#key-dialog")


def test_streamed_answer_with_stats_and_model_picker(context, server):
    page = open_chat(context, server)
    options = page.eval_on_selector_all("#model option", "os => os.map(o => o.value)")
    assert options == [MODEL], "the server serves one model; the picker lists exactly it"
    page.select_option("#model", MODEL)
    # A long answer: with a short one, a renderer starved on a loaded machine could handle
    # every streamed message, the last included, before it painted a frame.
    set_max_tokens(page, 120)
    send(page, "Write a long story about a lighthouse keeper.")
    # Streaming: text appears while the stop button is up.
    page.wait_for_function(
        f"() => !document.getElementById('stop').hidden && "
        f"document.querySelector('{LAST_ANSWER}')?.textContent.trim().length > 0"
    )
    page.wait_for_selector("#send:not([hidden])")
    stats = page.text_content(".msg.assistant:last-child .stats")
    assert "TTFT" in stats and "tok/s" in stats, stats
    assert page.text_content(".msg.user .content").strip() == "Write a long story about a lighthouse keeper."
    assert page.errors == []


def test_stop_mid_answer_then_reload_finds_the_conversation(context, server):
    page = open_chat(context, server)
    set_max_tokens(page, 400)
    send(page, "Write a long story about a lighthouse keeper.")
    page.wait_for_function(f"() => document.querySelector('{LAST_ANSWER}')?.textContent.trim().length > 0")
    page.keyboard.press("Escape")
    page.wait_for_selector("#send:not([hidden])")
    assert "cut" in page.get_attribute(".msg.assistant:last-child", "class")
    stats = page.text_content(".msg.assistant:last-child .stats")
    tokens = int(stats.split(" tokens")[0].split()[-1])
    assert 0 < tokens < 400, stats
    answer = page.text_content(LAST_ANSWER)

    page.reload()
    page.wait_for_selector("#conversations li")
    titles = page.eval_on_selector_all("#conversations li .open", "bs => bs.map(b => b.textContent)")
    assert any(t.startswith("Write a long story") for t in titles), titles
    page.click("#conversations li .open >> text=Write a long story")
    assert page.text_content(LAST_ANSWER) == answer

    # The server kept the same conversation, cut where it stopped; the next turn follows it.
    set_max_tokens(page, 8)
    send(page, "Continue.")
    page.wait_for_selector(".msg.assistant >> nth=1")
    page.wait_for_selector("#send:not([hidden])")
    assert page.locator(".msg").count() == 4
    assert page.errors == []


@pytest.fixture(scope="module")
def two_models():
    """A second server with two models: the default one (loaded at start-up) and a small
    random-weight one that loads when first asked for."""
    args = ["--model", str(MODEL_FILE), "--model", "synthetic:tiny", "--served-model-name", MODEL,
            "--served-model-name", "tiny", "--api-key", API_KEY]
    for base, _log in serve(args):
        yield base


def loaded(base):
    request = urllib.request.Request(base + "/v1/models", headers={"Authorization": f"Bearer {API_KEY}"})
    with urllib.request.urlopen(request) as res:
        return {m["id"]: m["loaded"] for m in json.load(res)["data"]}


def test_switching_models_sends_the_chosen_model(context, two_models):
    """The picker lists both models; picking the unloaded one sends it (the server loads it
    and answers), and picking the first again gets an answer from it."""
    page = open_chat(context, two_models)
    options = page.eval_on_selector_all("#model option", "os => os.map(o => o.value)")
    assert options == [MODEL, "tiny"], options
    assert loaded(two_models) == {MODEL: True, "tiny": False}
    set_max_tokens(page, 6)

    page.select_option("#model", "tiny")
    send(page, "Hello.")
    page.wait_for_selector("#send:not([hidden])")
    assert page.locator(".msg.assistant:last-child .error").count() == 0
    assert loaded(two_models) == {MODEL: True, "tiny": True}, "the request reached the chosen model"

    page.select_option("#model", MODEL)
    send(page, "Hello again.")
    page.wait_for_function(f"() => document.querySelector('{LAST_ANSWER}')?.textContent.trim().length > 0")
    page.wait_for_selector("#send:not([hidden])")
    assert page.locator(".msg.assistant:last-child .error").count() == 0
    assert page.errors == []


XSS = '<script>window.__xss = 1</script><img src="x" onerror="window.__xss = 2">\n\n**bold**'


def test_markup_in_messages_is_inert(context, server):
    page = open_chat(context, server)
    # An answer holding markup, as if the model wrote it: planted in the page's store, which
    # renders stored answers through the same Markdown path as streamed ones.
    planted = [{
        "id": "local-xss", "serverId": None, "title": "markup", "model": MODEL, "system": "",
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": XSS}],
        "created": 1, "updated": 9e15,
    }]
    page.evaluate("c => localStorage.setItem('stellarchat.conversations.v1', JSON.stringify(c))", planted)
    page.reload()
    page.wait_for_selector(".msg.assistant strong")
    # And typed by the user: the user's message takes the same path.
    set_max_tokens(page, 4)
    send(page, XSS)
    page.wait_for_selector(".msg.user >> nth=1")
    page.wait_for_selector("#send:not([hidden])")
    page.wait_for_timeout(300)  # an onerror would have fired by now
    assert page.evaluate("() => window.__xss") is None
    html = page.inner_html("#messages")
    assert "<script" not in html and "onerror" not in html, html
    assert page.locator("#messages strong").count() >= 2, "Markdown still renders"
    assert page.errors == []


def test_screenshots_desktop_and_phone(browser, server, tmp_path):
    out = ROOT / "docs" if os.environ.get("STELLARCHAT_UPDATE_SCREENSHOTS") else tmp_path
    for name, viewport in [("ui-desktop.png", DESKTOP), ("ui-phone.png", PHONE)]:
        ctx = browser.new_context(viewport=viewport, device_scale_factor=1)
        ctx.set_default_timeout(TIMEOUT_MS)
        page = open_chat(ctx, server)
        set_max_tokens(page, 40)
        send(page, "Give me three tips for writing clear code, as a list, then a tiny Python example.")
        page.wait_for_selector("#send:not([hidden])")
        # Phone: the conversation list is a drawer, the composer stays on screen.
        if viewport is PHONE:
            box = page.locator("#sidebar").bounding_box()
            assert page.is_visible("#open-sidebar") and box["x"] + box["width"] <= 0, box
            assert page.is_visible("#input") and page.is_visible("#send")
        page.screenshot(path=str(out / name))
        ctx.close()
        assert (out / name).stat().st_size > 10_000


def wait_for_new_answer(page, old_answer):
    """Waits until the answer node `old_answer` is gone (the page re-renders only once the
    server has truncated the conversation, so until then the old answer and its Regenerate
    button are still there) and the new answer has ended (its Regenerate button is up)."""
    page.wait_for_function("el => !el.isConnected", arg=old_answer)
    page.wait_for_selector(".msg.assistant .role button >> text=Regenerate")


def test_regenerate_edit_and_export(context, server):
    page = open_chat(context, server)
    set_max_tokens(page, 6)
    send(page, "Name a fruit.")
    page.wait_for_selector(".msg.assistant .role button >> text=Regenerate")
    old = page.query_selector(".msg.assistant")
    page.click(".msg.assistant .role button >> text=Regenerate")
    wait_for_new_answer(page, old)
    assert page.locator(".msg").count() == 2, "regenerate replaces the answer"
    page.click(".msg.user .role button >> text=Edit")
    assert page.input_value("#input") == "Name a fruit."
    page.fill("#input", "Name a vegetable.")
    old = page.query_selector(".msg.assistant")
    page.press("#input", "Enter")
    wait_for_new_answer(page, old)
    assert page.locator(".msg").count() == 2, "editing replaces the message and what follows"
    assert page.text_content(".msg.user .content").strip() == "Name a vegetable."
    with page.expect_download() as download:
        page.click("#export")
    exported = json.loads(pathlib.Path(download.value.path()).read_text())
    [conversation] = exported["conversations"]
    assert [m["content"] for m in conversation["messages"]][0] == "Name a vegetable."
    assert conversation["serverId"].startswith("conv_")
    assert page.errors == []
