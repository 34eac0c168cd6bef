"""Errors in Istio config, each naming the file, the object and the field.

```
ConfigError                      (sail.errors)
└── IstioConfigError             mesh.yaml: VirtualService default/reviews: spec.http[0]...: why
    └── FieldError               raised while one object is built; the parser adds the rest
```
"""

from __future__ import annotations

from sail.errors import ConfigError

__all__ = ["FieldError", "IstioConfigError"]


class IstioConfigError(ConfigError):
    """An Istio config document or object that cannot be used.

    The message joins the parts that are known, e.g.
    `mesh.yaml: VirtualService default/reviews: spec.http[0].route[1].destination.subsetx:
    unknown field (known: host, port, subset)`.

    **Parameters**

    * `reason` - what is wrong.
    * `source` - the file (or other source name) the object came from; `""` if unknown.
    * `object` - `Kind namespace/name`; `""` for problems with a whole file or document.
    * `field` - the path inside the object, from its top (`spec.hosts[0]`,
      `metadata.name`); `""` when the object as a whole is at fault.
    """

    def __init__(self, reason: str, *, source: str = "", object: str = "", field: str = "") -> None:
        self.reason = reason
        self.source = source
        self.object = object
        self.field = field
        super().__init__(": ".join([p for p in (source, object, field) if p] + [reason]))


class FieldError(IstioConfigError):
    """A value that breaks its class's rules, at `field` relative to the object being built.

    Model classes raise it from their validators (so objects built in code are checked
    too); the parser prefixes the path of the enclosing objects with `under` and finally
    adds the source and the object's name.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason, field=field)

    def under(self, prefix: str) -> FieldError:
        """The same error with `prefix` (`spec.http[0]`) in front of its field."""
        if not prefix:
            return self
        if not self.field:
            field = prefix
        elif self.field.startswith("["):
            field = prefix + self.field
        else:
            field = f"{prefix}.{self.field}"
        return FieldError(field, self.reason)
