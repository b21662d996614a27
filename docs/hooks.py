"""MkDocs build hook: put files that live outside ``docs/`` into the site, once, with working links.

The README, the specification (``spec/``) and the project files (CHANGELOG, CONTRIBUTING,
SECURITY, LICENSE) are written to be read in the repository, with links relative to where they
sit there (``docs/getting-started.md`` from the README, ``../spec/FORMAT.md`` from a page of
``docs/``). This hook adds them to the site without copying them into ``docs/`` (see
:data:`EXTERNAL`), and rewrites every relative link or image whose target is one of the site's
files from its repository path to its path in the site, before MkDocs validates it. A link to
a repository file that is not in the site is left alone, so ``mkdocs build --strict`` fails on
it as it does on any broken link. Sphinx roles in docstrings (``:func:``) are dropped from the
API reference, keeping the code they mark.
"""

from __future__ import annotations

import posixpath
import re
import xml.etree.ElementTree as etree
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from markdown import Extension, Markdown
from markdown.treeprocessors import Treeprocessor
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

REPO = Path(__file__).resolve().parent.parent
DOCS = "docs/"

#: Repository path -> path in the site, for the files the site shows from outside ``docs/``.
EXTERNAL = {
    "README.md": "index.md",
    "CHANGELOG.md": "changelog.md",
    "CONTRIBUTING.md": "contributing.md",
    "SECURITY.md": "security.md",
    "LICENSE": "LICENSE.txt",
    "spec/FORMAT.md": "spec/FORMAT.md",
    "spec/PARTS.md": "spec/PARTS.md",
    "spec/CONVERSION.md": "spec/CONVERSION.md",
    "spec/manifest.schema.json": "spec/manifest.schema.json",
    "spec/generate.py": "spec/generate.py",
}
_SITE_TO_REPO = {site: repo for repo, site in EXTERNAL.items()}
#: A Sphinx role before inline code in a rendered docstring (``:func:`create```), which
#: mkdocstrings leaves as text: the code stays, the role goes.
_ROLE = re.compile(r":(?:func|class|meth|attr|data|mod|exc|obj):(?=<code>)")

# The treeprocessor below runs inside MkDocs' Markdown conversion, which has no notion of the
# page being converted: ``on_page_markdown`` records it here just before the conversion.
_current: dict[str, str] = {}


def repository_path(site_path: str) -> str:
    """The repository path of the site file ``site_path`` (``index.md`` -> ``README.md``)."""
    return _SITE_TO_REPO.get(site_path, DOCS + site_path)


def site_path(repo_path: str) -> str | None:
    """The site path of the repository file ``repo_path``, or None if the site lacks it."""
    if repo_path in EXTERNAL:
        return EXTERNAL[repo_path]
    if repo_path.startswith(DOCS) and (REPO / repo_path).is_file():
        return repo_path[len(DOCS) :]
    return None


def translate(target: str, page_repo_path: str, page_site_path: str) -> str:
    """``target`` as written in the repository file, as a link from the page in the site."""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path or parts.path.startswith("/"):
        return target
    repo_target = posixpath.normpath(posixpath.join(posixpath.dirname(page_repo_path), parts.path))
    in_site = site_path(repo_target)
    if in_site is None:
        return target
    relative = posixpath.relpath(in_site, posixpath.dirname(page_site_path) or ".")
    return urlunsplit(("", "", relative, parts.query, parts.fragment))


class _RepositoryLinks(Treeprocessor):
    def run(self, root: etree.Element) -> None:
        if not _current:
            return
        for element in root.iter():
            attribute = {"a": "href", "img": "src"}.get(element.tag)
            if attribute and element.get(attribute):
                element.set(
                    attribute,
                    translate(element.get(attribute, ""), _current["repo"], _current["site"]),
                )


class _RepositoryLinksExtension(Extension):
    def extendMarkdown(self, md: Markdown) -> None:
        # After "inline" (20), which makes the links, before MkDocs' "relpath" (0), which
        # validates them and turns .md paths into URLs.
        md.treeprocessors.register(_RepositoryLinks(md), "memshard_repository_links", 10)


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    config.markdown_extensions.append(_RepositoryLinksExtension())  # type: ignore[arg-type]
    return config


def on_files(files: Files, config: MkDocsConfig) -> Files:
    for repo_path, in_site in EXTERNAL.items():
        files.append(File.generated(config, in_site, abs_src_path=str(REPO / repo_path)))
    return files


def on_page_markdown(markdown: str, page: Page, **_: Any) -> str:
    _current["site"] = page.file.src_uri
    _current["repo"] = repository_path(page.file.src_uri)
    return markdown


def on_page_content(html: str, **_: Any) -> str:
    _current.clear()
    return _ROLE.sub("", html)
