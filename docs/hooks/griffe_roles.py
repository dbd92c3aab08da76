"""A griffe extension for the API reference: reST roles become cross-references.

The library's docstrings name other objects the Sphinx way
(``:class:`~dockerconnect.Connector```, ``:meth:`parse```). mkdocstrings
renders Markdown, where those roles would show up literally. Once griffe has
loaded the package, this extension rewrites each docstring:

- ``:class:`X``` (and ``:meth:``, ``:func:``, ``:attr:``, ``:exc:``,
  ``:data:``, ``:const:``, ``:obj:``, ``:mod:``) becomes an autorefs
  cross-reference to the object ``X`` names, resolved the way Python would
  from where the docstring is (the object's own members, its class, its
  module, then the package), and pointed at the public name when the object
  is re-exported (``dockerconnect._protocols.Connector`` is shown where
  ``dockerconnect.Connector`` is documented). ``~`` shows the last
  component only; ``text <target>`` shows ``text``. A target that is not
  documented on any page is shown as code, without a link, rather than
  failing the strict build.
- Attributes without a docstring that a method sets (``self.name = name``
  in an ``__init__``) are dropped from the reference: their value is an
  implementation detail, and the class docstring says what they mean.
  Annotated fields declared in the class body (attrs fields) stay.

Wired up in ``mkdocs.yml`` under the python handler's ``extensions``.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

_ROLE = re.compile(
    r":(?:py:)?(?P<role>class|meth|func|attr|exc|data|const|obj|mod):`(?P<body>[^`]+)`"
)
_EXPLICIT = re.compile(r"^(?P<text>.*?)\s*<(?P<target>[^<>]+)>$", re.DOTALL)
_CALLABLE_ROLES = {"meth", "func"}


class RolesToCrossrefs(griffe.Extension):
    """Rewrite reST roles in every docstring of the loaded package."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        for obj in _walk(pkg):
            if obj.docstring is not None and ":" in obj.docstring.value:
                obj.docstring.value = _ROLE.sub(
                    lambda match, at=obj: _crossref(pkg, at, match), obj.docstring.value
                )
        for obj in list(_walk(pkg)):
            if isinstance(obj, griffe.Class):
                for name in _assigned_in_methods(obj):
                    del obj.members[name]


def _assigned_in_methods(cls: griffe.Class) -> list[str]:
    """Undocumented attributes set by ``self.x = ...`` inside the class's methods.

    Annotated class-level fields (attrs fields, a protocol's ``name: str``)
    stay: they are the class's declared shape.
    """
    spans = [
        (m.lineno, m.endlineno)
        for m in cls.members.values()
        if not m.is_alias and m.is_function and m.lineno and m.endlineno
    ]
    doomed = []
    for name, member in cls.members.items():
        if member.is_alias or not member.is_attribute or member.docstring is not None:
            continue
        line = member.lineno or 0
        if any(start <= line <= end for start, end in spans):
            doomed.append(name)
    return doomed


def _walk(obj: griffe.Object) -> list[griffe.Object]:
    """Every object under ``obj`` (itself included), aliases left out."""
    found: list[griffe.Object] = []
    pending = [obj]
    while pending:
        current = pending.pop()
        found.append(current)
        for member in current.members.values():
            if not member.is_alias and isinstance(member, griffe.Object):
                pending.append(member)
    return found


def _crossref(pkg: griffe.Module, at: griffe.Object, match: re.Match[str]) -> str:
    role, body = match["role"], match["body"].strip()
    explicit = _EXPLICIT.match(body)
    if explicit:
        text, target = explicit["text"], explicit["target"].strip()
    else:
        target = body
        text = ""
    short = target.startswith("~")
    target = target.lstrip("~").lstrip(".")
    if not text:
        text = target.rsplit(".", 1)[-1] if short else target
        if role in _CALLABLE_ROLES:
            text += "()"
    path = _resolve(pkg, at, target)
    code = f"<code>{html.escape(text)}</code>"
    if path is None:
        return code
    return f'<autoref identifier="{html.escape(path)}" optional>{code}</autoref>'


def _resolve(pkg: griffe.Module, at: griffe.Object, target: str) -> str | None:
    """The documented path of ``target`` as seen from ``at``, if it exists."""
    scopes: list[griffe.Object] = [at]
    parent = at.parent
    while parent is not None:
        scopes.append(parent)
        parent = parent.parent
    candidates = [f"{scope.path}.{target}" for scope in scopes]
    candidates += [target, f"{pkg.path}.{target}"]
    for candidate in candidates:
        found = _lookup(pkg, candidate)
        if found is not None:
            return _public_path(pkg, found)
    return None


def _lookup(pkg: griffe.Module, path: str) -> griffe.Object | griffe.Alias | None:
    head, _, rest = path.partition(".")
    if head != pkg.name:
        return None
    obj: Any = pkg
    for part in rest.split(".") if rest else ():
        try:
            obj = obj.members[part]
        except (KeyError, AttributeError, griffe.AliasResolutionError):
            return None
    return obj  # type: ignore[no-any-return]


def _public_path(pkg: griffe.Module, obj: griffe.Object | griffe.Alias) -> str:
    """Where ``obj`` is documented: its re-export in a public module, if any."""
    try:
        canonical = obj.final_target.path if obj.is_alias else obj.path  # type: ignore[union-attr]
    except (griffe.AliasResolutionError, griffe.CyclicAliasError):
        return obj.path
    owner, _, member = canonical.rpartition(".")
    if not any(part.startswith("_") for part in owner.split(".")):
        return canonical  # defined in a public module (dockerconnect.errors): documented there
    public_modules = [pkg, *(m for n, m in pkg.modules.items() if not n.startswith("_"))]
    for module in public_modules:
        exported = module.members.get(canonical.rsplit(".", 1)[-1])
        if exported is None:
            continue
        try:
            same = (exported.final_target.path if exported.is_alias else exported.path) == canonical
        except (griffe.AliasResolutionError, griffe.CyclicAliasError):
            continue
        if same:
            return f"{module.path}.{exported.name}"
    # A member of a class that is itself exported: dockerconnect.Manifest.parse.
    if owner and member:
        owner_obj = _lookup(pkg, owner)
        if owner_obj is not None and owner_obj.kind is griffe.Kind.CLASS:
            return f"{_public_path(pkg, owner_obj)}.{member}"
    return canonical
