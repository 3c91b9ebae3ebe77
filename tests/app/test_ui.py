"""How the page is served: security headers, cache policy, versioned assets, the switch.

What the page does in a browser is in `test_ui_browser.py`.
"""

from __future__ import annotations

import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from app.ui import ASSET_CACHE, ASSETS_DIR, STATIC_DIR, asset_version

pytestmark = pytest.mark.anyio

ASSET_URL = re.compile(r'(?:src|href)="(assets/[^"]+)"')
# text/javascript or application/javascript, as the platform's MIME table says; both run
MEDIA_TYPES = {".js": "javascript", ".css": "text/css", ".svg": "image/svg+xml"}


def assert_security_headers(headers) -> None:
    policy = headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy
    assert "connect-src 'self'" in policy and "unsafe" not in policy
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"


async def test_the_page_is_served_with_security_headers_and_revalidated(client):
    response = await client.get("/ui/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["cache-control"] == "no-cache"
    assert_security_headers(response.headers)


async def test_ui_without_its_slash_redirects_relatively(client):
    response = await client.get("/ui")
    assert response.status_code == 308
    assert response.headers["location"] == "ui/"  # still right behind a path prefix


async def test_every_asset_the_page_names_is_versioned_and_cached_for_a_year(client):
    page = (await client.get("/ui/")).text
    urls = ASSET_URL.findall(page)
    assert urls and all(url.startswith(f"assets/{asset_version()}/") for url in urls)
    for url in urls:
        response = await client.get(f"/ui/{url}")
        assert response.status_code == 200, url
        assert response.headers["cache-control"] == ASSET_CACHE
        assert MEDIA_TYPES[Path(url).suffix] in response.headers["content-type"]
        assert_security_headers(response.headers)


async def test_every_module_a_script_imports_is_served(client):
    version = asset_version()
    for script in ASSETS_DIR.glob("*.js"):
        for name in re.findall(r'from "\./([\w.]+)"', script.read_text()):
            response = await client.get(f"/ui/assets/{version}/{name}")
            assert response.status_code == 200, f"{script.name} imports {name}"


async def test_an_unknown_asset_is_a_404_error_body_that_is_not_cached(client, assert_error):
    for path in ("/ui/assets/000000000000/main.js", f"/ui/assets/{asset_version()}/nope.js"):
        response = await client.get(path)
        assert_error(response, 404, "not_found")
        assert "immutable" not in response.headers.get("cache-control", "")


def test_the_version_changes_when_any_asset_changes(tmp_path):
    copy = shutil.copytree(ASSETS_DIR, tmp_path / "assets")
    before = asset_version(copy)
    (copy / "ui.css").write_text((copy / "ui.css").read_text() + "\n")
    assert asset_version(copy) != before
    assert asset_version(ASSETS_DIR) == asset_version(shutil.copytree(ASSETS_DIR, tmp_path / "b"))


class _InlineCode(HTMLParser):
    """Collects what a strict Content-Security-Policy would refuse in a page."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name for name, _ in attrs}
        self.found += [f"{tag} {name}" for name in names if name.startswith("on")]
        if "style" in names or tag == "style":
            self.found.append(f"{tag} style")
        self._in_script = tag == "script" and "src" not in names

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.found.append("inline script")

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False


def test_the_page_has_no_inline_script_or_style():
    parser = _InlineCode()
    parser.feed((STATIC_DIR / "index.html").read_text())
    assert parser.found == []


async def test_the_page_needs_no_key_while_the_api_does(serve):
    async with serve(api_keys=("secret",)) as client:
        page = await client.get("/ui/")
        asset = await client.get(f"/ui/{ASSET_URL.findall(page.text)[0]}")
        assert page.status_code == 200 and asset.status_code == 200
        assert (await client.get("/model")).status_code == 401


async def test_vae_ui_false_turns_the_page_off(serve, monkeypatch, assert_error):
    monkeypatch.setenv("VAE_UI", "false")
    async with serve() as client:
        assert_error(await client.get("/ui/"), 404, "not_found")
        assert_error(await client.get(f"/ui/assets/{asset_version()}/main.js"), 404, "not_found")
        assert (await client.get("/model")).status_code == 200


async def test_the_page_is_not_part_of_the_api_document(client):
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert not [path for path in paths if path.startswith("/ui")]
