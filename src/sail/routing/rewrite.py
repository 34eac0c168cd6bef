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
* `regex_rewrite` replaces every match of the pattern in the path (RE2 `GlobalReplace`). The
  substitution uses RE2's syntax: `\\1` is group 1, `\\0` the whole match, `\\\\` a backslash,
  and nothing else may follow a backslash. Python's template syntax differs (`\\0` is a NUL
  there, `\\n` a newline), so the substitution is translated, and checked, at build time.
"""

from __future__ import annotations

from collections.abc import Callable

from sail.errors import ConfigError
from sail.model import PathMatchKind, RegexRewrite, RouteAction, RouteMatch

__all__ = ["Rewrite", "compile_rewrite", "re2_substitution"]

_DIGITS = frozenset("0123456789")

Rewrite = Callable[[str, int], str]
"""`(target, end) -> rewritten target`; `end` is where the path part of `target` ends."""


def re2_substitution(substitution: str, groups: int) -> str:
    """Translate an RE2 rewrite string into a Python `re.sub` template.

    Raises `ConfigError` where RE2's `CheckRewriteString` would: a backslash followed by
    anything but a digit or a backslash, or a group the pattern (with `groups` groups) lacks.
    """
    out: list[str] = []
    i = 0
    while i < len(substitution):
        char = substitution[i]
        if char != "\\":
            out.append(char)
            i += 1
            continue
        escaped = substitution[i + 1 : i + 2]
        if escaped == "\\":
            out.append("\\\\")
        elif escaped in _DIGITS:
            group = int(escaped)
            if group > groups:
                raise ConfigError(
                    f"regex_rewrite substitution {substitution!r} uses group {group} "
                    f"but the pattern has {groups}"
                )
            out.append(f"\\g<{group}>")
        else:
            what = repr("\\" + escaped) if escaped else "a lone backslash"
            raise ConfigError(f"regex_rewrite substitution {substitution!r}: invalid escape {what}")
        i += 2
    return "".join(out)


def _regex_rewrite(rewrite: RegexRewrite) -> Rewrite:
    # A template without backslashes is a literal: `re` notices and skips template parsing.
    template = re2_substitution(rewrite.substitution, rewrite.pattern.groups)
    sub = rewrite.pattern.sub

    def substitute(target: str, end: int) -> str:
        return sub(template, target[:end]) + target[end:]

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
