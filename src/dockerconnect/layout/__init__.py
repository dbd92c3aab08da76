"""OCI image layouts (image-spec ``image-layout.md``): read as a connector, written by an export.

- :class:`OciLayoutConnector` serves a layout directory (``skopeo copy …
  oci:DIR:TAG``, ``oras copy --to-oci-layout``) as a connector of a
  :class:`~dockerconnect.Resolver`.
- :func:`export_layout` writes images of any :class:`~dockerconnect.Registry`
  as a layout that ``skopeo`` and ``umoci`` read, hard-linking from a
  filesystem store where it can, resumable and safe to interrupt.
- :func:`export_main` is the ``dockerconnect export`` command line.
"""

from dockerconnect.layout._cli import export_main
from dockerconnect.layout._connector import OciLayoutConnector
from dockerconnect.layout._export import ExportEvent, ExportReport, export_layout
from dockerconnect.layout._format import REF_NAME, LayoutInvalid, split_ref_name

__all__ = [
    "REF_NAME",
    "ExportEvent",
    "ExportReport",
    "LayoutInvalid",
    "OciLayoutConnector",
    "export_layout",
    "export_main",
    "split_ref_name",
]
