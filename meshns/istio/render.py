"""Applied documents back out, exactly as they were given, for `meshns get`.

Output is the raw documents (never re-synthesised from the typed spec), so what the user
applied comes back with their key order and their spelling (``LEAST_CONN`` stays ``LEAST_CONN``)
and can be applied again unchanged: parse_documents(to_yaml(docs)).docs == docs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

import yaml

from meshns.istio.parse import ConfigDoc


class _Dumper(yaml.SafeDumper):
    """PyYAML with allow_unicode writes NEL, LS and PS raw inside plain or single-quoted scalars,
    where the loader folds them as line breaks: the value would change. Double quotes escape them."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = '"' if any(c in value for c in "\x85\u2028\u2029") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def to_yaml(docs: Sequence[ConfigDoc]) -> str:
    return yaml.dump_all(
        [d.raw for d in docs], Dumper=_Dumper, sort_keys=False, default_flow_style=False,
        allow_unicode=True, explicit_start=True,
    )


# JSON is read back by the YAML loader, which refuses (or, for NEL and the Unicode separators,
# folds as line breaks) some characters JSON allows raw; \uXXXX means the same in both. Only
# BMP characters are listed: ensure_ascii=True would instead split astral characters into
# surrogate pairs, which YAML decodes as two lone surrogates.
_YAML_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\ud800-\udfff\ufffe\uffff]")


def to_json(docs: Sequence[ConfigDoc]) -> str:
    """A kubectl-style List, which parse_documents unpacks (as `kubectl apply -f` does)."""
    body = {"apiVersion": "v1", "kind": "List", "items": [d.raw for d in docs]}
    text = json.dumps(body, indent=2, ensure_ascii=False)
    return _YAML_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text) + "\n"
