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
  """`registry[name]`, or one line naming the config field (or a '--flag') and every choice
  (`also` too)."""
  if name not in registry:
    choices = ', '.join(sorted([*also, *map(str, registry)]))
    where = field if field.startswith('--') else f'config.{field}'
    raise error(f'Unknown {where} {name!r}; choose one of: {choices}.')
  return registry[name]
