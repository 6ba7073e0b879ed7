"""The documentation: every public name has a docstring, and the built site
renders in a real browser with every link of the tutorials resolving."""

import functools
import http.server
import importlib
import inspect
import os
import shutil
import subprocess
import sys
import threading
import urllib.parse

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PUBLIC = [
    "advlib.models",
    "advlib.attacks",
    "advlib.losses",
    "advlib.training",
    "advlib.qnn",
    "advlib.qnn.engine",
    "advlib.qnn.verify",
    "advlib.certify",
    "advlib.stats",
    "advlib.bench",
    "advlib.datasets",
]
# methods whose contract Keras documents
KERAS_HOOKS = {
    "call",
    "build",
    "get_config",
    "from_config",
    "compute_output_shape",
    "train_step",
    "test_step",
    "compute_loss",
    "metrics",
    "on_train_begin",
    "on_train_end",
    "on_epoch_begin",
    "on_epoch_end",
}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def undocumented(module_name):
    """The public names of a package (its `__all__`) and of their classes' own
    methods and properties that have no docstring, inherited ones counting."""
    module = importlib.import_module(module_name)
    missing = []
    for attr in module.__all__:
        obj = getattr(module, attr)
        if inspect.ismodule(obj) or not (inspect.isclass(obj) or callable(obj)):
            continue
        if not (inspect.getdoc(obj) or "").strip():
            missing.append(f"{module_name}.{attr}")
        if not inspect.isclass(obj):
            continue
        for name, member in vars(obj).items():
            if name.startswith("_") or name in KERAS_HOOKS:
                continue
            is_method = callable(member) or isinstance(
                member, (property, staticmethod, classmethod)
            )
            if is_method and not (inspect.getdoc(getattr(obj, name)) or "").strip():
                missing.append(f"{module_name}.{attr}.{name}")
    return missing


@pytest.mark.parametrize("module_name", PUBLIC)
def test_every_public_name_has_a_docstring(module_name):
    assert undocumented(module_name) == []


def test_the_docstring_check_finds_a_missing_docstring(monkeypatch):
    from advlib.stats import proportion

    monkeypatch.setattr(proportion, "__doc__", None)
    assert undocumented("advlib.stats") == ["advlib.stats.proportion"]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The documentation site, built with --strict, served on 127.0.0.1."""
    folder = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(folder)],
        cwd=ROOT,
        check=True,
    )
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", folder
    server.shutdown()


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield browser
        browser.close()


API_PAGES = {
    "attacks": "FastGradientMethod",
    "models": "KerasModelWrapper",
    "training": "AdversarialModel",
    "qnn": "QuantDense",
    "engine": "BinaryEngine",
    "verify": "NetworkEncoding",
    "certify": "SmoothedClassifier",
    "bench": "evaluate",
    "datasets": "load",
    "backend": "require_installed",
}


@pytest.mark.slow
@pytest.mark.browser
def test_the_api_pages_render(site, browser):
    base, _ = site
    page = browser.new_page()
    for name, symbol in API_PAGES.items():
        response = page.goto(f"{base}api/{name}/")
        assert response.status == 200, name
        headings = page.locator(".doc-heading").all_inner_texts()
        assert len(headings) > 3, name
        assert any(symbol in heading for heading in headings), (name, headings[:5])
        # a parameter table, rendered from an Args section
        assert page.locator(".doc-section-title, .doc-section-item").count() > 0, name
    page.close()


@pytest.mark.slow
@pytest.mark.browser
def test_every_link_of_the_tutorials_resolves(site, browser):
    base, folder = site
    tutorials = sorted(
        f[:-3] for f in os.listdir(os.path.join(ROOT, "tutorials")) if f.endswith(".md")
    )
    page = browser.new_page()
    checked, broken = 0, []
    for tutorial in tutorials:
        url = f"{base}tutorials/{tutorial}/"
        assert page.goto(url).status == 200, tutorial
        assert page.locator("article h1").count() == 1, tutorial
        links = page.eval_on_selector_all("article a[href]", "nodes => nodes.map(n => n.href)")
        for link in links:
            target = urllib.parse.urlsplit(link)
            if not link.startswith(base):
                continue  # the outside world is out of reach here
            response = page.request.get(link.split("#")[0])
            checked += 1
            if response.status != 200:
                broken.append((tutorial, link, response.status))
            elif target.fragment and f'id="{target.fragment}"' not in response.text():
                broken.append((tutorial, link, "no such anchor"))
        for image in page.eval_on_selector_all("article img", "nodes => nodes.map(n => n.src)"):
            checked += 1
            if page.request.get(image).status != 200:
                broken.append((tutorial, image, "image"))
    page.close()
    assert broken == []
    assert checked >= len(tutorials)  # every tutorial links at least to its script
