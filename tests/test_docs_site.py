"""The documentation site builds with warnings as errors, and every link inside it resolves.

``mkdocs build --strict`` already refuses a link to a missing page or anchor in the Markdown;
the test then reads every built HTML page (``html.parser``) and checks every internal ``href``
and ``src``, including those the theme and the API reference generate, against the files and
the element ids of the built site.
"""

from __future__ import annotations

import importlib.util
import os
import posixpath
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from types import ModuleType
from urllib.parse import unquote, urlsplit

import pytest

REPO = Path(__file__).resolve().parent.parent
#: Pages every build must have (site paths), one per part of the documentation.
EXPECTED_PAGES = [
    "index.html",
    "getting-started/index.html",
    "writing/index.html",
    "reading/index.html",
    "pytorch/index.html",
    "converting/index.html",
    "build/index.html",
    "scaling-out/index.html",
    "multinode/index.html",
    "reliability/index.html",
    "performance/index.html",
    "benchmarks/results/index.html",
    "scaling/index.html",
    "api/index.html",
    "spec/FORMAT/index.html",
    "spec/PARTS/index.html",
    "spec/CONVERSION/index.html",
    "changelog/index.html",
    "contributing/index.html",
    "security/index.html",
]


class _Page(HTMLParser):
    """The ids a page defines and the links (``href``/``src``) it contains."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if values.get("id"):
            self.ids.add(values["id"] or "")
        if tag == "a" and values.get("name"):
            self.ids.add(values["name"] or "")
        for attribute in ("href", "src"):
            if values.get(attribute) is not None:
                self.links.append(values[attribute] or "")


def build(config_dir: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=config_dir,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("site") / "site"
    result = build(REPO, target)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    return target


def parse(page: Path) -> _Page:
    parser = _Page()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


def broken_links(site: Path) -> list[str]:
    """Every internal link of the site whose file or anchor does not exist."""
    pages = {path.relative_to(site).as_posix(): parse(path) for path in site.rglob("*.html")}
    broken = []
    for name, page in pages.items():
        for link in page.links:
            parts = urlsplit(link)
            if parts.scheme or parts.netloc or link.startswith("//"):
                continue
            target = name if not parts.path else _resolve(name, unquote(parts.path), site)
            if target is None:
                broken.append(f"{name}: {link} (no such file)")
            elif (
                parts.fragment
                and target.endswith(".html")
                and unquote(parts.fragment) not in pages[target].ids
            ):
                broken.append(f"{name}: {link} (no anchor #{parts.fragment})")
    return broken


def _resolve(page: str, path: str, site: Path) -> str | None:
    """The site file that ``path``, linked from ``page``, names, or None if there is none.

    An absolute path is taken from the site's root (the 404 page's links are absolute)."""
    base = "" if path.startswith("/") else posixpath.dirname(page)
    joined = posixpath.normpath(posixpath.join(base, path.lstrip("/")))
    if joined.startswith("../"):
        return None
    for candidate in (joined, posixpath.join(joined, "index.html")):
        if (site / candidate).is_file():
            return candidate
    return None


def test_every_part_of_the_documentation_is_built(site: Path) -> None:
    missing = [page for page in EXPECTED_PAGES if not (site / page).is_file()]
    assert not missing
    assert (site / "LICENSE.txt").read_text() == (REPO / "LICENSE").read_text()
    assert (site / "benchmarks" / "images.png").is_file()


def test_every_internal_link_and_anchor_resolves(site: Path) -> None:
    pages = list(site.rglob("*.html"))
    assert len(pages) >= len(EXPECTED_PAGES)
    assert broken_links(site) == []


def test_links_between_repository_files_become_site_links(site: Path) -> None:
    home = parse(site / "index.html").links
    assert "getting-started/#install" in home  # docs/getting-started.md#install in README.md
    assert "spec/FORMAT/" in home  # spec/FORMAT.md
    assert "benchmarks/images.png" in home  # the chart, docs/benchmarks/images.png
    multinode = parse(site / "multinode" / "index.html").links
    assert "../spec/FORMAT/#9-concurrency" in multinode  # ../spec/FORMAT.md#9-concurrency


def test_the_api_reference_is_generated_from_the_docstrings(site: Path) -> None:
    api = parse(site / "api" / "index.html")
    for name in ("memshard.create", "memshard.open", "memshard.Dataset.take", "memshard.errors"):
        assert name in api.ids, name
    text = (site / "api" / "index.html").read_text()
    assert "Create an empty dataset at" in text
    assert ":func:" not in text
    assert ":class:" not in text


def test_the_link_checker_finds_a_broken_anchor(site: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(site, copy)
    page = copy / "reading" / "index.html"
    page.write_text(
        page.read_text().replace("</body>", '<a href="../writing/#no-such-part">x</a></body>')
    )
    assert broken_links(copy) == ["reading/index.html: ../writing/#no-such-part (no anchor "
                                  "#no-such-part)"]  # fmt: skip


def test_a_broken_link_in_the_markdown_fails_the_build(tmp_path: Path) -> None:
    copy = tmp_path / "repo"
    copy.mkdir()
    for name in ("mkdocs.yml", "README.md", "CHANGELOG.md", "CONTRIBUTING.md", "SECURITY.md"):
        shutil.copy(REPO / name, copy / name)
    shutil.copy(REPO / "LICENSE", copy / "LICENSE")
    for folder in ("docs", "spec", "memshard"):
        shutil.copytree(REPO / folder, copy / folder)
    readme = copy / "README.md"
    readme.write_text(readme.read_text() + "\n[gone](docs/no-such-page.md)\n")
    result = build(copy, tmp_path / "site")
    assert result.returncode != 0
    assert "no-such-page.md" in result.stderr


def _hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_hooks", REPO / "docs" / "hooks.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("target", "repo_page", "site_page", "expected"),
    [
        ("docs/writing.md", "README.md", "index.md", "writing.md"),
        ("docs/writing.md#committing", "README.md", "index.md", "writing.md#committing"),
        ("spec/FORMAT.md", "README.md", "index.md", "spec/FORMAT.md"),
        ("LICENSE", "README.md", "index.md", "LICENSE.txt"),
        ("docs/benchmarks/images.png", "README.md", "index.md", "benchmarks/images.png"),
        ("../spec/PARTS.md", "docs/scaling.md", "scaling.md", "spec/PARTS.md"),
        ("../CONTRIBUTING.md", "docs/api.md", "api.md", "contributing.md"),
        ("PARTS.md", "spec/FORMAT.md", "spec/FORMAT.md", "PARTS.md"),
        ("generate.py", "spec/FORMAT.md", "spec/FORMAT.md", "generate.py"),
        ("docs/reading.md", "CONTRIBUTING.md", "contributing.md", "reading.md"),
        ("../README.md", "spec/FORMAT.md", "spec/FORMAT.md", "../index.md"),
        ("writing.md", "docs/reading.md", "reading.md", "writing.md"),
        ("#local", "README.md", "index.md", "#local"),
        ("https://example.org/x.md", "README.md", "index.md", "https://example.org/x.md"),
        ("tests/test_crash.py", "README.md", "index.md", "tests/test_crash.py"),
    ],
)
def test_repository_links_are_translated_to_site_paths(
    target: str, repo_page: str, site_page: str, expected: str
) -> None:
    assert _hooks().translate(target, repo_page, site_page) == expected
