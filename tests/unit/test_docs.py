"""The documentation site stays in step with the code without a full ``mkdocs build``.

``mkdocs build --strict`` (run by the README's test command) executes the tutorials and checks
every link; these tests check, in a second, what the site generates from the code: the CLI
reference names every option of every command, the API reference lists exactly
``tunedlens.__all__``, the navigation and the pages agree, and the getting-started page shows the
README's two commands as they are.
"""

import importlib.util
import re
from pathlib import Path

import pytest
import typer
import yaml

import tunedlens
from tunedlens.cli.app import app

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
GENERATED = {"reference/cli.md", "reference/api.md"}


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _AnyTagLoader(yaml.SafeLoader):
    """Reads mkdocs.yml with its ``!ENV`` and ``!!python/name`` tags as plain values."""


_AnyTagLoader.add_multi_constructor("", lambda loader, suffix, node: None)
_AnyTagLoader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)


def _nav_pages(entries) -> list[str]:
    pages = []
    for entry in entries:
        for value in entry.values() if isinstance(entry, dict) else [entry]:
            pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def _commands(command, path=()):
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from _commands(sub, (*path, name))


def test_the_cli_reference_names_every_command_and_option():
    sections = {
        section.split("`")[1]: section for section in _hooks().cli_page().split("\n## ")[1:]
    }
    for path, command in _commands(typer.main.get_command(app)):
        section = sections[" ".join(("tunedlens", *path))]
        for parameter in command.params:
            if parameter.param_type_name == "option" and not parameter.hidden:
                assert re.search(rf"[`, ]{parameter.opts[0]}\b", section), (parameter.opts, path)
        for name in getattr(command, "commands", {}):
            assert f"[`{name}`]" in section


def test_the_cli_reference_shows_help_as_written():
    page = _hooks().cli_page()
    # Rich's escapes are gone; Markdown's keep "[/SUB][@REV]" from reading as a link.
    assert r"hf:ORG/REPO\[/SUB\]\[@REV\]" in page and r"\\[" not in page


def test_the_api_reference_lists_exactly_the_exports():
    page = _hooks().api_page()
    documented = re.findall(r"^::: ([\w.]+)$", page, flags=re.M)
    assert [name.rsplit(".", 1)[1] for name in documented] == tunedlens.__all__
    for target in documented:
        module, name = target.rsplit(".", 1)
        assert tunedlens._EXPORTS[name] == module


def test_the_architecture_table_lists_every_registered_family():
    from tunedlens.arch.registry import ARCHS

    table = _hooks().architectures_table()
    assert {f"| `{name}` |" for name in ARCHS} <= {
        line[: line.index(" |") + 2] for line in table.splitlines()
    }


def test_navigation_and_pages_agree():
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=_AnyTagLoader)
    nav = _nav_pages(config["nav"])
    assert len(nav) == len(set(nav))
    written = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    tutorials = {p.relative_to(DOCS).as_posix() for p in (DOCS / "tutorials").glob("*.py")}
    assert set(nav) == written | tutorials | GENERATED
    assert len(tutorials) >= 3


@pytest.mark.parametrize("marker", ["<!-- main-command -->", "<!-- test-command -->"])
def test_getting_started_shows_the_readme_commands(marker):
    readme = (ROOT / "README.md").read_text()
    command = re.search(re.escape(marker) + r"\n```bash\n(.*?)\n```", readme, flags=re.S)[1]
    assert command in (DOCS / "getting-started.md").read_text()


def test_the_pictures_are_those_make_pictures_drew_from_the_main_jobs_lens():
    """docs/make_pictures.py records each picture's sha256 and the lens it showed.

    A picture replaced by hand, or a README main command whose lens is no longer the one the
    pictures show (another model, corpus or token budget), fails here: rerun the script.
    """
    import hashlib
    import json
    import shlex

    manifest = json.loads((DOCS / "pictures.json").read_text())
    for name, digest in manifest["pictures"].items():
        assert hashlib.sha256((DOCS / name).read_bytes()).hexdigest() == digest, name
    readme = (ROOT / "README.md").read_text()
    main = re.search(r"<!-- main-command -->\n```bash\n(.*?)\n```", readme, flags=re.S)[1]
    train = next(part for part in main.split(" && ") if part.startswith("tunedlens train "))
    words = shlex.split(train)
    assert words[2] == manifest["lens"]["model_spec"]
    assert int(words[words.index("--tokens") + 1]) == manifest["lens"]["train_tokens"]
    from tunedlens.data import default_data_spec

    assert "--data" not in words and manifest["lens"]["data"] == default_data_spec("demo")
    show = next(part for part in main.split(" && ") if part.startswith("tunedlens show "))
    assert shlex.split(show)[3] == manifest["prompt"]


def test_tutorial_links_are_site_urls():
    """mkdocs-jupyter renders a tutorial's Markdown itself: links to ``page.md`` are not rewritten.

    A tutorial's page lives at ``tutorials/NAME/``, so its links are site URLs from there
    (``../../getting-started/``), which the rendered page can follow.
    """
    for tutorial in sorted((DOCS / "tutorials").glob("*.py")):
        links = re.findall(r"\]\(([^)]+)\)", tutorial.read_text())
        assert not [link for link in links if link.split("#")[0].endswith(".md")], tutorial.name
