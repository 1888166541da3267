"""Builds the optional oneDNN convolutions (csrc/onednn_conv.cc); the rest is pyproject.toml.

The extension needs a C++17 compiler, oneDNN's headers and library (the onednn-devel and
onednn wheels, build requirements on Linux x86-64) and XLA's FFI headers (shipped in
jaxlib). Where any is missing, or the compiler fails, the package installs without it and
runs the XLA CPU forms instead (catsdogs_jax/models/onednn.py says why when it loads).
"""

import importlib.metadata
import pathlib

from setuptools import Extension, setup


def _wheel_dir(distribution: str, suffix: str):
  """The folder holding `suffix` (a relative path) in an installed distribution, if any.

  A whole path, not a file name: onednn-devel ships include/dnnl.hpp beside
  include/oneapi/dnnl/dnnl.hpp.
  """
  try:
    files = importlib.metadata.distribution(distribution).files or ()
  except importlib.metadata.PackageNotFoundError:
    return None
  parts = pathlib.PurePosixPath(suffix).parts
  for file in files:
    if pathlib.PurePosixPath(file).parts[-len(parts) :] == parts:
      return str(pathlib.Path(file.locate()).parents[len(parts) - 1])
  return None


def _extensions():
  dnnl_include = _wheel_dir('onednn-devel', 'oneapi/dnnl/dnnl.hpp')
  dnnl_lib = _wheel_dir('onednn', 'libdnnl.so.3')
  ffi_include = _wheel_dir('jaxlib', 'xla/ffi/api/ffi.h')
  if not (dnnl_include and dnnl_lib and ffi_include):
    print(
        'catsdogs_jax: oneDNN or XLA FFI headers not found; building without the oneDNN convolutions'
    )
    return []
  return [
      Extension(
          'catsdogs_jax.models._onednn_conv',
          sources=['csrc/onednn_conv.cc'],
          include_dirs=[ffi_include, dnnl_include],
          library_dirs=[dnnl_lib],
          libraries=['dnnl'],
          language='c++',
          extra_compile_args=['-std=c++17', '-O2', '-fvisibility=hidden'],
          # libdnnl's own dependencies lie beside it; at run time onednn.py loads them first.
          extra_link_args=[f'-Wl,-rpath-link,{dnnl_lib}'],
          optional=True,  # a failed build leaves the package without it, not uninstallable
      )
  ]


setup(ext_modules=_extensions())
