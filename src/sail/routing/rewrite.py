"""Path rewrites: `prefix_rewrite` and `regex_rewrite`, compiled once per route.

A compiled rewrite is `(target, end) -> new target`, where `end` is where the path part of the
raw target ends (`request.path_end`). Both rewrites touch the path only; the query (and a
fragment, should a client send one) is carried over unchanged, as Envoy's
`currentUrlPathAfterRewriteWithMatchedPath` does.

* `prefix_rewrite` replaces the *matched* part: the prefix for `prefix` and
  `path_separated_prefix` routes, the whole path for `path` and `safe_regex` routes. The trap,
  straight from Envoy's docs: mind the trailing slashes. Prefix `/prefix` rewritten to `/`
  turns `/prefix/etc` into `//etc`; stripping a prefix cleanly takes two routes (`/prefix/` to
  `/` and `/prefix` to `/`).
* `regex_rewrite` replaces every match of the pattern in the path, as RE2's `GlobalReplace`
  does. Two traps for a Python port: the substitution uses RE2's syntax (`\\1` is group 1,
  `\\0` the whole match, `\\\\` a backslash, nothing else may follow a backslash), where
  Python's template reads `\\0` as a NUL and `\\n` as a newline; and `re.sub` also replaces an
  empty match right after a non-empty one, which RE2 skips (`x*` over `axxb` gives `-a-b-`
  in Envoy, `-a--b-` with `re.sub`). So the substitution is parsed at build time and the
  replacement loop is RE2's; the pattern itself is RE2 (`sail.model.regex`).
"""

from __future__ import annotations

from collections.abc import Callable

from sail.errors import ConfigError
from sail.model import PathMatchKind, RegexRewrite, RouteAction, RouteMatch
from sail.model.regex import Regex, RegexMatch

__all__ = ["Rewrite", "compile_rewrite", "compile_substitution", "global_replace"]

_DIGITS = frozenset("0123456789")

Rewrite = Callable[[str, int], str]
"""`(target, end) -> rewritten target`; `end` is where the path part of `target` ends."""

Substitution = tuple[str | int, ...]
"""A parsed RE2 rewrite string: literal text and group numbers, in order."""


def compile_substitution(substitution: str, groups: int) -> Substitution:
    """Parse an RE2 rewrite string into literals and group numbers.

    Raises `ConfigError` where RE2's `CheckRewriteString` would: a backslash followed by
    anything but a digit or a backslash, or a group the pattern (with `groups` groups) lacks.
    """
    parts: list[str | int] = []
    literal: list[str] = []
    i = 0
    while i < len(substitution):
        char = substitution[i]
        if char != "\\":
            literal.append(char)
            i += 1
            continue
        escaped = substitution[i + 1 : i + 2]
        if escaped == "\\":
            literal.append("\\")
        elif escaped in _DIGITS:
            group = int(escaped)
            if group > groups:
                raise ConfigError(
                    f"regex_rewrite substitution {substitution!r} uses group {group} "
                    f"but the pattern has {groups}"
                )
            if literal:
                parts.append("".join(literal))
                literal.clear()
            parts.append(group)
        else:
            what = repr("\\" + escaped) if escaped else "a lone backslash"
            raise ConfigError(f"regex_rewrite substitution {substitution!r}: invalid escape {what}")
        i += 2
    if literal:
        parts.append("".join(literal))
    return tuple(parts)


def _expand(match: RegexMatch, parts: Substitution) -> str:
    return "".join(part if isinstance(part, str) else match.group(part) or "" for part in parts)


def global_replace(pattern: Regex, parts: Substitution, text: str) -> str:
    """RE2's `GlobalReplace`: every non-overlapping match of `pattern` in `text` replaced by
    `parts`, scanning left to right; an empty match where the previous match ended is
    skipped (one character is copied instead)."""
    out: list[str] = []
    pos = 0
    last_end = -1
    size = len(text)
    search = pattern.search
    while pos <= size:
        found = search(text, pos)
        if found is None:
            break
        start, end = found.span()
        if pos < start:
            out.append(text[pos:start])
        if start == end == last_end:
            out.append(text[start : start + 1])
            pos = start + 1
            continue
        out.append(_expand(found, parts))
        pos = last_end = end
    if not out:
        return text
    out.append(text[pos:])
    return "".join(out)


def _regex_rewrite(rewrite: RegexRewrite) -> Rewrite:
    pattern = rewrite.pattern
    parts = compile_substitution(rewrite.substitution, pattern.groups)

    def substitute(target: str, end: int) -> str:
        return global_replace(pattern, parts, target[:end]) + target[end:]

    return substitute


def compile_rewrite(match: RouteMatch, action: RouteAction) -> Rewrite | None:
    """The rewrite of one route, or `None` when the path is forwarded unchanged.

    An empty `prefix_rewrite` is "not set", as in protobuf. Envoy refuses a route with both
    rewrites; so does this function (`ConfigError`).
    """
    prefix = action.prefix_rewrite or None
    if prefix is not None and action.regex_rewrite is not None:
        raise ConfigError("prefix_rewrite and regex_rewrite cannot both be set")
    if action.regex_rewrite is not None:
        return _regex_rewrite(action.regex_rewrite)
    if prefix is None:
        return None
    new = prefix
    if match.path.kind is PathMatchKind.REGEX:
        # The whole path matched: it is all replaced, the query kept.
        return lambda target, end: new + target[end:]
    n = len(match.path.value)
    return lambda target, end: new + target[n:]
