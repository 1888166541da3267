"""Choosing by name: each list of choices is one dict (name -> what builds it), read by `lookup`."""

from typing import Mapping, Sequence, Type, TypeVar

T = TypeVar('T')


def lookup(
    registry: Mapping[str, T],
    name,
    field: str,
    error: Type[Exception] = ValueError,
    also: Sequence[str] = (),
) -> T:
  """`registry[name]`, or one line naming the config field and every choice (`also` too)."""
  if name not in registry:
    choices = ', '.join(sorted([*also, *map(str, registry)]))
    raise error(f'Unknown config.{field} {name!r}; choose one of: {choices}.')
  return registry[name]
