"""Config validation against a JSON schema, with defaults filled in and short error messages.

``snakemake.utils.validate`` raises jsonschema's error, whose text repeats the whole schema and
the whole config (~1,500 lines for a one-letter typo). This validates with the same semantics
(Draft 2020-12, schema defaults set while validating, as ``validate(set_default=True)``) and
reports each problem in a few lines: the key, its dotted path, what the schema expects, the
closest valid key for a typo and the schema's description of it.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import re
import sys
import textwrap
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from diffguard.config import ConfigError


@contextlib.contextmanager
def _unimportable(name: str) -> Iterator[None]:
    """Make ``import name`` raise ImportError inside the block (unless it is already loaded)."""
    if name in sys.modules:
        yield
        return
    sys.modules[name] = None  # type: ignore[assignment]  # the import system's "not found"
    try:
        yield
    finally:
        if sys.modules.get(name, 0) is None:
            del sys.modules[name]


# jsonschema's format module imports rfc3987_syntax when it is installed (jupyter's
# jsonschema[format-nongpl] brings it), which builds a lark grammar at import: ~2.5 s of CPU on
# every workflow parse (python-jsonschema/jsonschema#1521). Validation here uses no format
# checker (the schemas have no `format`), so jsonschema loads without that optional checker.
with _unimportable("rfc3987_syntax"):
    from jsonschema import Draft202012Validator, validators
    from jsonschema.exceptions import ValidationError, best_match

SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's safe loader where PyYAML has it (same constructors and resolver as
``yaml.safe_load``, ~10x faster: the schemas are read on every workflow parse)."""

MAX_ERRORS = 3
"""Problems reported in full; the rest are counted (one typo often causes only one)."""
_WIDTH = 96
_DESCRIPTION_LINES = 3
_VALUE_CHARS = 80
_EXPLAINED = {"type", "enum", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}
_EXPLAINED |= {"pattern", "minItems", "minProperties"}


def load_schema(path: str | Path) -> dict[str, Any]:
    """The schema in ``path`` (YAML or JSON)."""
    with open(path) as handle:
        schema = yaml.load(handle, Loader=SAFE_LOADER)
    if not isinstance(schema, dict):
        raise ConfigError(f"{path}: expected a JSON schema object, got {type(schema).__name__}")
    return schema


def _with_defaults(validator_class: type) -> type:
    """``validator_class`` that sets each property's schema default before validating it.

    The recipe of jsonschema's FAQ, as ``snakemake.utils.validate(set_default=True)`` uses it.
    """
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(
        validator: Any, properties: Mapping[str, Any], instance: Any, schema: Mapping[str, Any]
    ) -> Iterator[ValidationError]:
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if isinstance(subschema, dict) and "default" in subschema:
                    # a copy: the config must not share (and later mutate) the schema's object
                    instance.setdefault(name, copy.deepcopy(subschema["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    return validators.extend(validator_class, {"properties": set_defaults})


def dotted(path: Any, prefix: str = "") -> str:
    """``experiments.gdm_main.gdm`` for a jsonschema path (list indices as ``[i]``)."""
    text = prefix
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _VALUE_CHARS else text[: _VALUE_CHARS - 3] + "..."


def _description(schema: Any) -> list[str]:
    """The schema's description, wrapped and cut to a few lines."""
    text = schema.get("description") if isinstance(schema, dict) else None
    if not text:
        return []
    lines = textwrap.wrap(" ".join(str(text).split()), _WIDTH - 4)
    if len(lines) > _DESCRIPTION_LINES:
        lines = [*lines[: _DESCRIPTION_LINES - 1], lines[_DESCRIPTION_LINES - 1] + " ..."]
    return ["    " + line for line in lines]


def _in(where: str) -> str:
    return f"in {where}" if where else "at the top level"


def _expected(schema: Mapping[str, Any]) -> str:
    """What a (sub)schema accepts, in words: type, enum, bounds, pattern."""
    parts = []
    if "type" in schema:
        kinds = schema["type"]
        parts.append(" or ".join(kinds) if isinstance(kinds, list) else str(kinds))
    if "enum" in schema:
        parts.append("one of " + ", ".join(repr(v) for v in schema["enum"]))
    for key, sign in (
        ("minimum", ">="),
        ("exclusiveMinimum", ">"),
        ("maximum", "<="),
        ("exclusiveMaximum", "<"),
    ):
        if key in schema:
            parts.append(f"{sign} {schema[key]}")
    if "pattern" in schema:
        parts.append(f"matching {schema['pattern']}")
    for key, what in (("minItems", "items"), ("minProperties", "entries")):
        if key in schema:
            parts.append(f"at least {schema[key]} {what}")
    return ", ".join(parts) or "see the schema"


def _unknown_keys(error: ValidationError) -> list[str]:
    """The keys an ``additionalProperties: false`` error is about."""
    known = set(error.schema.get("properties", {}))
    patterns = list(error.schema.get("patternProperties", {}))
    return sorted(
        str(key)
        for key in error.instance
        if key not in known and not any(re.search(p, str(key)) for p in patterns)
    )


def _problems(error: ValidationError, prefix: str) -> list[list[str]]:
    """A few lines about each problem in one validation error (one per unknown key)."""
    where = dotted(error.absolute_path, prefix)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        properties = error.schema.get("properties", {})
        problems = []
        listed = False  # the valid keys of this location, printed once
        for key in _unknown_keys(error):
            lines = [f"{dotted([key], where)}: unknown key {key!r} {_in(where)}"]
            close = difflib.get_close_matches(key, list(properties), n=1, cutoff=0.6)
            if close:
                lines.append(f"  did you mean {close[0]!r}? {dotted([close[0]], where)}:")
                lines.extend(_description(properties[close[0]]))
            elif not listed:
                valid = "no close match; valid keys: " + ", ".join(sorted(properties))
                lines.extend(
                    textwrap.wrap(valid, _WIDTH, initial_indent="  ", subsequent_indent="    ")
                )
                listed = True
            problems.append(lines)
        return problems
    if error.validator == "required":
        missing = re.match(r"'([^']+)'", error.message)
        key = missing.group(1) if missing else error.message
        sub = error.schema.get("properties", {}).get(key, {})
        return [
            [
                f"{dotted([key], where)}: missing (required {_in(where)}; "
                f"expected {_expected(sub)})",
                *_description(sub),
            ]
        ]
    return [
        [
            f"{where or '(top level)'}: invalid value {_short(error.instance)}",
            f"  expected {_expected(error.schema)}"
            + ("" if error.validator in _EXPLAINED else f" ({_short(error.message)})"),
            *_description(error.schema),
        ]
    ]


def config_errors(
    config: dict[str, Any], schema: Mapping[str, Any], *, set_default: bool = True
) -> list[ValidationError]:
    """Validation errors of ``config`` (defaults filled in place when ``set_default``)."""
    cls = Draft202012Validator
    if set_default:
        cls = _with_defaults(cls)
    errors = list(cls(schema).iter_errors(config))
    # oneOf/anyOf errors hold one sub-error per branch: report the branch that fits best
    chosen = [best_match([e]) for e in errors]
    return sorted(chosen, key=lambda e: [str(p) for p in e.absolute_path])


def format_errors(errors: list[ValidationError], *, source: str, prefix: str = "") -> str:
    """Short report of ``errors`` (at most ``MAX_ERRORS`` in full)."""
    problems = [problem for error in errors for problem in _problems(error, prefix)]
    lines = [f"invalid configuration ({source}):"]
    for problem in problems[:MAX_ERRORS]:
        lines.extend("  " + line for line in problem)
    if len(problems) > MAX_ERRORS:
        lines.append(f"  ... and {len(problems) - MAX_ERRORS} more problem(s)")
    return "\n".join(lines)


def validate_config(
    config: dict[str, Any],
    schema_path: str | Path,
    *,
    prefix: str = "",
    source: str = "",
    set_default: bool = True,
) -> dict[str, Any]:
    """Validate ``config`` against the schema file, filling in defaults (in place).

    ``source`` (where the config came from) heads the error message, with the schema file.

    Raises:
        ConfigError: Names each offending key by its dotted path (``prefix`` first), what the
            schema expects and, for an unknown key, the closest valid one and its description.
    """
    errors = config_errors(config, load_schema(schema_path), set_default=set_default)
    if errors:
        what = f"{source}; schema {schema_path}" if source else f"schema {schema_path}"
        raise ConfigError(format_errors(errors, source=what, prefix=prefix))
    return config
