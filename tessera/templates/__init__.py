"""Query templates: the model, the TOML reader, canonical encoding and parameter binding."""

from tessera.templates.model import Template, TemplateError
from tessera.templates.params import ParamError, bind
from tessera.templates.parse import digest, digest_of_bytes, encode, load_toml, parse_canonical

__all__ = [
    "ParamError",
    "Template",
    "TemplateError",
    "bind",
    "digest",
    "digest_of_bytes",
    "encode",
    "load_toml",
    "parse_canonical",
]
