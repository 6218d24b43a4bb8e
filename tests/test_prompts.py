"""Prompt templates: loaded and checked at start-up, rendered in a sandbox, errors are typed."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from bastion.config import ConfigError
from bastion.domain.errors import InvalidRequest
from bastion.services.prompts import (
    PromptLibrary,
    PromptTemplate,
    UnknownPrompt,
    check_variables,
)

TRIAGE_V1 = """\
messages:
  - role: user
    content: "Triage: {{ subject }}"
"""

TRIAGE_V3 = """\
description: Summarise a support ticket and suggest a priority.
messages:
  - role: system
    content: |
      You triage tickets for {{ product }}.
  - role: user
    content: |
      Subject: {{ ticket.subject }}
      {% for line in ticket.lines %}> {{ line }}
      {% endfor %}Answer in {{ language }}.
"""


def write(directory: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (directory / name).write_text(textwrap.dedent(text), encoding="utf-8")
    return directory


def one(tmp_path: Path, content: str) -> PromptTemplate:
    """A library with a single user message whose content is ``content``."""
    quoted = content.replace("'", "''")
    write(tmp_path, {"t@1.yaml": f"messages:\n  - role: user\n    content: '{quoted}'\n"})
    return PromptLibrary.load(tmp_path).get("t@1")


def problems_of(tmp_path: Path, files: dict[str, str]) -> list[tuple[str, str]]:
    write(tmp_path, files)
    with pytest.raises(ConfigError) as info:
        PromptLibrary.load(tmp_path)
    assert info.value.source == str(tmp_path)
    return info.value.problems


# --------------------------------------------------------------------------- loading


def test_loads_valid_files_and_lists_refs(tmp_path: Path) -> None:
    write(tmp_path, {"ticket_triage@1.yaml": TRIAGE_V1, "ticket_triage@3.yaml": TRIAGE_V3,
                     "greet@2.yaml": TRIAGE_V1, "README.md": "not a prompt"})
    lib = PromptLibrary.load(str(tmp_path))
    assert lib.refs() == ["greet@2", "ticket_triage@1", "ticket_triage@3"]
    assert len(lib) == 3
    v3 = lib.get("ticket_triage@3")
    assert (v3.name, v3.version, v3.ref) == ("ticket_triage", 3, "ticket_triage@3")
    assert v3.description == "Summarise a support ticket and suggest a priority."
    assert [m.role for m in v3.messages] == ["system", "user"]
    assert lib.get("ticket_triage@1").description == ""


def test_bare_name_resolves_to_the_latest_version(tmp_path: Path) -> None:
    write(tmp_path, {"ticket_triage@1.yaml": TRIAGE_V1, "ticket_triage@10.yaml": TRIAGE_V1,
                     "ticket_triage@3.yaml": TRIAGE_V3})
    lib = PromptLibrary.load(tmp_path)
    assert lib.get("ticket_triage").ref == "ticket_triage@10"  # numeric, not lexical, order
    assert lib.get("ticket_triage@3").version == 3


def test_unknown_refs_raise_a_lookup_error_listing_known_refs(tmp_path: Path) -> None:
    lib = PromptLibrary.load(write(tmp_path, {"a@1.yaml": TRIAGE_V1, "a@2.yaml": TRIAGE_V1}))
    for ref in ["a@3", "b", "a@x", "A@1", ""]:
        with pytest.raises(UnknownPrompt) as info:
            lib.get(ref)
        assert isinstance(info.value, LookupError)
        assert str(info.value) == f"unknown prompt {ref!r}; known: a@1, a@2"
    assert "a" in lib and "a@2" in lib
    assert "a@3" not in lib and "b" not in lib and 3 not in lib


def test_empty_library(tmp_path: Path) -> None:
    for lib in (PromptLibrary.empty(), PromptLibrary.load(tmp_path)):
        assert lib.refs() == [] and len(lib) == 0 and "x" not in lib
        with pytest.raises(UnknownPrompt, match=r"known: \(none\)"):
            lib.get("x")


def test_missing_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        PromptLibrary.load(tmp_path / "nope")
    assert info.value.problems == [("(directory)", "not a directory")]


# --------------------------------------------------------------------------- rendering


def test_render_returns_chat_messages(tmp_path: Path) -> None:
    lib = PromptLibrary.load(write(tmp_path, {"ticket_triage@3.yaml": TRIAGE_V3}))
    out = lib.get("ticket_triage").render({
        "product": "Acme Mail",
        "ticket": {"subject": "Cannot log in", "lines": ["It says 403.", "Since Monday."]},
        "language": "French",
        "unused": "ignored",
    })
    assert out == [
        {"role": "system", "content": "You triage tickets for Acme Mail."},
        {"role": "user", "content": "Subject: Cannot log in\n> It says 403.\n> Since Monday.\n"
                                    "Answer in French."},
    ]


def test_no_html_escaping(tmp_path: Path) -> None:
    out = one(tmp_path, "{{ text }}").render({"text": "<b> & \"q\""})
    assert out == [{"role": "user", "content": "<b> & \"q\""}]


def test_missing_variable_is_an_invalid_request_naming_it(tmp_path: Path) -> None:
    lib = PromptLibrary.load(write(tmp_path, {"ticket_triage@3.yaml": TRIAGE_V3}))
    with pytest.raises(InvalidRequest) as info:
        lib.get("ticket_triage").render({"product": "Acme", "ticket": {"subject": "s",
                                                                      "lines": []}})
    err = info.value
    assert err.param == "input" and err.status == 400
    assert "ticket_triage@3" in err.message and "'language' is undefined" in err.message
    assert "messages.1" in err.message


def test_missing_attribute_is_an_invalid_request(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match=r"t@1.*has no attribute 'subject'"):
        one(tmp_path, "{{ ticket.subject }}").render({"ticket": {}})


def test_optional_variables_can_be_guarded(tmp_path: Path) -> None:
    template = one(tmp_path, "{% if urgent is defined %}URGENT {% endif %}{{ x }}")
    assert template.render({"x": 1})[0]["content"] == "1"
    assert template.render({"x": 1, "urgent": True})[0]["content"] == "URGENT 1"


@pytest.mark.parametrize("source", [
    "{{ ''.__class__.__mro__ }}",
    "{{ x.__class__ }}",
    "{{ x.__class__.__base__.__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ x.append(4) }}",
])
def test_sandbox_violations_are_invalid_requests(tmp_path: Path, source: str) -> None:
    template = one(tmp_path, source)
    values = [1, 2, 3]
    with pytest.raises(InvalidRequest, match=r"t@1.*unsafe template operation.*is unsafe") as info:
        template.render({"x": values})
    assert info.value.param == "input"
    assert values == [1, 2, 3]


# --------------------------------------------------------------------------- load errors


@pytest.mark.parametrize("tag", [
    "{% include 'other.yaml' %}",
    "{% extends 'base' %}",
    "{% import 'macros' as m %}",
    "{% from 'macros' import m %}",
])
def test_cross_template_tags_are_rejected_at_load(tmp_path: Path, tag: str) -> None:
    problems = problems_of(tmp_path, {"p@1.yaml": f"messages:\n  - role: user\n"
                                                  f"    content: \"hi {tag}\"\n"})
    assert len(problems) == 1
    field, reason = problems[0]
    assert field == "p@1.yaml: messages.0.content"
    assert "is not allowed" in reason and "cannot load other templates" in reason


def test_syntax_error_names_file_field_and_line(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, {"ticket_triage@3.yaml": """\
        messages:
          - role: system
            content: fine
          - role: user
            content: |
              line one
              line two
              {{ subject | }}
        """})
    assert len(problems) == 1
    field, reason = problems[0]
    assert field == "ticket_triage@3.yaml: messages.1.content"
    assert reason.startswith("template syntax error at line 3:")


def test_unclosed_block_is_reported(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, {"p@1.yaml": "messages:\n  - role: user\n"
                                                  "    content: '{% if x %}open'\n"})
    assert len(problems) == 1
    assert problems[0][0] == "p@1.yaml: messages.0.content"
    assert "template syntax error at line 1:" in problems[0][1] and "endif" in problems[0][1]


def test_bad_yaml_is_reported_with_its_line(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, {"p@1.yaml": "messages:\n  - role: user\n"
                                                  "    content: {{ x }}\n"})
    assert len(problems) == 1
    assert problems[0][0] == "p@1.yaml"
    assert problems[0][1].startswith("invalid YAML: line 3,")


@pytest.mark.parametrize("name", [
    "Triage@1.yaml", "triage.yaml", "triage@0.yaml", "triage@v2.yaml", "1triage@1.yaml",
    "tri-age@1.yaml", "triage@1.yml", "triage@1.2.yaml",
])
def test_bad_file_names(tmp_path: Path, name: str) -> None:
    problems = problems_of(tmp_path, {name: TRIAGE_V1})
    rule = "file name must be <name>@<version>.yaml (name [a-z][a-z0-9_]*, version >= 1)"
    assert problems == [(name, rule)]


def test_subdirectories_and_other_files_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "old").mkdir()
    write(tmp_path / "old", {"BAD NAME.yaml": "::"})
    write(tmp_path, {"a@1.yaml": TRIAGE_V1, "notes.txt": "x", "a@1.yaml~": "backup"})
    assert PromptLibrary.load(tmp_path).refs() == ["a@1"]


def test_duplicate_name_and_version(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, {"triage@03.yaml": TRIAGE_V1, "triage@3.yaml": TRIAGE_V1})
    reason = "duplicate prompt triage@3 (also defined by triage@03.yaml)"
    assert problems == [("triage@3.yaml", reason)]


def test_structure_problems_are_all_collected(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, {
        "a@1.yaml": """\
            description: 7
            model: gpt-4
            messages:
              - role: developer
                content: hi
                name: bob
              - role: user
              - just a string
            """,
        "b@1.yaml": "description: no messages\n",
        "c@1.yaml": "messages: []\n",
        "d@1.yaml": "- a list\n",
        "e@1.yaml": TRIAGE_V1,
    })
    assert problems == [
        ("a@1.yaml: model", "unknown key (allowed: description, messages)"),
        ("a@1.yaml: description", "must be a string"),
        ("a@1.yaml: messages.0.name", "unknown key (allowed: role, content)"),
        ("a@1.yaml: messages.0.role", "must be one of system, user, assistant, not 'developer'"),
        ("a@1.yaml: messages.1.content", "required: a template string"),
        ("a@1.yaml: messages.2", "must be a mapping with 'role' and 'content'"),
        ("b@1.yaml: messages", "required: a non-empty list of {role, content}"),
        ("c@1.yaml: messages", "required: a non-empty list of {role, content}"),
        ("d@1.yaml", "must be a mapping with 'messages' and optional 'description'"),
    ]


def test_config_error_text_names_directory_file_and_field(tmp_path: Path) -> None:
    write(tmp_path, {"p@1.yaml": "messages:\n  - role: user\n    content: '{{ x '\n"})
    with pytest.raises(ConfigError) as info:
        PromptLibrary.load(tmp_path)
    text = str(info.value)
    assert text.startswith(f"{tmp_path}: invalid config\n  p@1.yaml: messages.0.content: "
                           "template syntax error at line 1:")


# --------------------------------------------------------------------------- variables


def test_variables_cover_every_message(tmp_path: Path) -> None:
    lib = PromptLibrary.load(write(tmp_path, {"ticket_triage@3.yaml": TRIAGE_V3}))
    assert lib.get("ticket_triage").variables == frozenset({"product", "ticket", "language"})


def test_variables_exclude_loop_set_macro_and_engine_names(tmp_path: Path) -> None:
    template = one(tmp_path, (
        "{% for item in items %}{{ loop.index }}{{ item.name }}{% endfor %}"
        "{% set total = items | length %}{{ total }}"
        "{% if vip %}{{ greeting }}{% else %}{{ fallback | default('x') }}{% endif %}"
        "{% macro tag(v) %}<{{ v }}>{% endmacro %}{{ tag(label) }}"
        "{% for i in range(2) %}{{ i }}{% endfor %}"
    ))
    assert template.variables == frozenset({"items", "vip", "greeting", "fallback", "label"})


def test_plain_text_has_no_variables(tmp_path: Path) -> None:
    template = one(tmp_path, "No variables here.")
    assert template.variables == frozenset()
    assert template.render({}) == [{"role": "user", "content": "No variables here."}]


def test_check_variables_reports_undeclared_names(tmp_path: Path) -> None:
    lib = PromptLibrary.load(write(tmp_path, {"ticket_triage@3.yaml": TRIAGE_V3}))
    template = lib.get("ticket_triage")
    assert check_variables(template, ["product", "ticket", "language", "extra"]) == []
    assert check_variables(template, {"ticket"}) == ["language", "product"]
    assert check_variables(template, iter(())) == ["language", "product", "ticket"]
